"""Normalisation of extracted answers and gold labels into comparable values, one rule set per kind."""

from __future__ import annotations

import collections
import math
import re
import string
from fractions import Fraction

# ---------------------------------------------------------------------------------------------
# Numbers

_LATEX_NOISE = (
    "\\left", "\\right", "\\!", "\\,", "\\;", "\\:", "\\ ", "\\displaystyle", "\\$", "$", "\\%", "%",
    "^\\circ", "^{\\circ}", "\\circ", "°", "\\cdot", "{,}",
)
_TEXT_CMD = re.compile(r"\\(?:text|textbf|mathrm|mbox|mathbf)\{([^{}]*)\}")
_FRAC = re.compile(r"\\[dt]?frac\s*(?:\{([^{}]+)\}|(\d))\s*(?:\{([^{}]+)\}|(\d))")
_THOUSANDS = re.compile(r"(?<![\d.])(\d{1,3}(?:,\d{3})+)(?![\d])")
_NUM_EXPR = re.compile(r"^[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?(?:/[-+]?(?:\d+(?:\.\d*)?|\.\d+))?")


def _unit_text(match: re.Match) -> str:
    # `5\text{ cm}` -> drop the unit; `\text{5}` -> keep the number inside.
    inner = match.group(1)
    return inner if re.fullmatch(r"\s*[-\d.,/]+\s*", inner) else " "


def _frac_text(match: re.Match) -> str:
    num = (match.group(1) or match.group(2)).strip()
    den = (match.group(3) or match.group(4)).strip()
    if den.startswith("-"):
        num, den = (num[1:] if num.startswith("-") else "-" + num), den[1:]
    return f"{num}/{den}"


def parse_number(text: str | None) -> float | None:
    """A number from a model's or dataset's answer: `1,000`, `\\frac{1}{2}`, `\\dfrac12`, `0.5`,
    `1/2`, `$5`, `5 cm`, `x = 3`, `50\\%`. None when there is no leading number."""
    if text is None:
        return None
    s = str(text).strip()
    if not s:
        return None
    s = _TEXT_CMD.sub(_unit_text, s)
    for noise in _LATEX_NOISE:
        s = s.replace(noise, "")
    s = s.replace("−", "-").replace("–", "-")
    if "=" in s:
        # `x = 3` and `\boxed{n=3}` give the right-hand side.
        s = s.rsplit("=", 1)[1]
    s = _FRAC.sub(_frac_text, s)
    s = _THOUSANDS.sub(lambda m: m.group(1).replace(",", ""), s)
    s = s.replace("{", "").replace("}", "")
    # Spaces only go where they cannot merge two numbers (`3 1/2` must not become 31/2).
    s = re.sub(r"\s*/\s*", "/", s.strip())
    s = re.sub(r"^([-+])\s+", r"\1", s)
    s = s.replace("--", "").lstrip("+")
    m = _NUM_EXPR.match(s)
    if not m:
        return None
    expr = m.group(0)
    try:
        if "/" in expr:
            num, den = expr.split("/")
            value = float(Fraction(num) / Fraction(den)) if float(den) != 0 else math.nan
        else:
            value = float(expr)
    except (ValueError, ZeroDivisionError):
        return None
    return None if math.isnan(value) else value


def numbers_match(pred: float | None, gold: float | None, rel_tol: float = 1e-4, abs_tol: float = 1e-6) -> bool:
    if pred is None or gold is None:
        return False
    return math.isclose(pred, gold, rel_tol=rel_tol, abs_tol=abs_tol)


# ---------------------------------------------------------------------------------------------
# Multiple choice

CHOICE_LETTERS = "ABCDEFGH"


def normalize_choice(text: str | None) -> str | None:
    """`B`, `(b)`, `B.`, `B) Paris`, `\\text{B}`, `2` (1-based index) -> `B`; None when no label."""
    if text is None:
        return None
    s = _TEXT_CMD.sub(lambda m: m.group(1), str(text)).strip().replace("$", "").replace("*", "")
    m = re.match(r"^\(?([A-Ha-h])\)?(?:$|[\s.:)\-,])", s)
    if m:
        return m.group(1).upper()
    m = re.match(r"^\(?([1-8])\)?(?:$|[\s.:)\-,])", s)
    if m:
        # ARC mixes letter and digit labels; digits 1-4 mean A-D.
        return CHOICE_LETTERS[int(m.group(1)) - 1]
    m = re.match(r"^(?:option|choice|answer)\s*:?\s*\(?([A-Ha-h])\)?\b", s, flags=re.IGNORECASE)
    return m.group(1).upper() if m else None


# ---------------------------------------------------------------------------------------------
# Yes / no

_BOOL_WORDS = {"yes": "yes", "true": "yes", "y": "yes", "correct": "yes",
               "no": "no", "false": "no", "n": "no", "incorrect": "no"}


def normalize_boolean(text: str | bool | None) -> str | None:
    if isinstance(text, bool):
        return "yes" if text else "no"
    if text is None:
        return None
    s = _TEXT_CMD.sub(lambda m: m.group(1), str(text)).strip().lower().strip(" .!*$\"'")
    if s in _BOOL_WORDS:
        return _BOOL_WORDS[s]
    first = re.match(r"^(yes|no|true|false)\b", s)
    return _BOOL_WORDS[first.group(1)] if first else None


# ---------------------------------------------------------------------------------------------
# SQuAD v2 (official evaluation script normalisation)

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)
ABSTAIN_PHRASES = {"", "unanswerable", "no answer", "none", "n/a", "cannot be answered",
                   "not answerable", "unknown", "no answer found"}


def squad_normalize(text: str) -> str:
    """Lower case, strip punctuation, articles and extra whitespace (official SQuAD v2 script)."""
    text = str(text).lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def is_abstention(text: str) -> bool:
    s = _TEXT_CMD.sub(lambda m: m.group(1), str(text)).strip().lower().strip(" .!")
    return s in ABSTAIN_PHRASES


def squad_exact(pred: str, gold: str) -> float:
    return float(squad_normalize(pred) == squad_normalize(gold))


def squad_f1(pred: str, gold: str) -> float:
    pred_toks = squad_normalize(pred).split()
    gold_toks = squad_normalize(gold).split()
    if not pred_toks or not gold_toks:
        # Official rule: if either is empty (no-answer), F1 is 1 only when both are.
        return float(pred_toks == gold_toks)
    common = collections.Counter(pred_toks) & collections.Counter(gold_toks)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(pred_toks)
    recall = same / len(gold_toks)
    return 2 * precision * recall / (precision + recall)


def gold_spans(gold) -> list[str]:
    """Gold answers as a list; [] (or only empty strings) means unanswerable."""
    if gold is None:
        return []
    if isinstance(gold, dict):
        gold = gold.get("text", [])
    if isinstance(gold, str):
        gold = [gold]
    spans = [str(g) for g in gold if str(g).strip() and not is_abstention(str(g))]
    return spans


# ---------------------------------------------------------------------------------------------
# Free-form exact answers (custom tasks)


def normalize_exact(text: str | None) -> str | None:
    if text is None:
        return None
    s = _TEXT_CMD.sub(lambda m: m.group(1), str(text))
    return " ".join(s.split()).strip().rstrip(".").strip().lower()
