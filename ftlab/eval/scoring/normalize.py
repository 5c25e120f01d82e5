"""Normalisation of extracted answers and gold labels into comparable values, one rule set per kind.

Every rule here reads the *whole* answer: a prediction is a number, one option, yes/no or a span,
or it is invalid. Nothing is salvaged from a longer answer (`5\\sqrt{3}` is not 5, `A and C` is not
A), because a rule that salvages is more generous than the official references (Hendrycks MATH
`is_equiv`, the SQuAD v2 script) and inflates accuracy. tests/eval/test_scoring_rules.py records each
rule's verdicts next to the reference's and says where, and why, ftlab reads an answer differently.
"""

from __future__ import annotations

import collections
import math
import re
import string
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

# ---------------------------------------------------------------------------------------------
# Shared LaTeX clean-up


_WRAPPERS = re.compile(r"\\(?:text|textbf|textit|textrm|mathrm|mathbf|mbox)\s*\{([^{}]*)\}")
_SPACING = ("\\!", "\\,", "\\;", "\\:", "\\ ", "\\quad", "\\qquad", "\\displaystyle", "\\left", "\\right")


def unwrap(text: str) -> str:
    """`\\text{B}` -> `B`, `**yes**` -> `yes`, `$5$` -> `5`: markup around a whole answer."""
    s = str(text).strip()
    for _ in range(3):  # nested wrappers: `\textbf{\text{B}}`
        s = _WRAPPERS.sub(lambda m: m.group(1), s)
    s = re.sub(r"(?<!\\)\$", "", s.replace("**", ""))
    return s.strip()


# ---------------------------------------------------------------------------------------------
# Numbers


# One number, and nothing else: `-1,234.5`, `.5`, `3.`, `1e3`, `7/2`.
_DECIMAL = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?"
_NUMBER_RE = re.compile(rf"^(?P<sign>[-+]?)(?P<num>{_DECIMAL})(?:/(?P<den>{_DECIMAL}))?$")
_FRAC_RE = re.compile(rf"^(?P<sign>[-+]?)\\frac\{{(?P<num>[-+]?{_DECIMAL})\}}\{{(?P<den>[-+]?{_DECIMAL})\}}$")
# A short variable on the left of a single `=` (`x = 3`, `n=3`, `x_1 = 3`); `2+2=4` keeps its left side.
_LHS_RE = re.compile(r"^\s*[A-Za-z](?:_\{?\w+\}?)?\s*=(?P<rhs>[^=]+)$")
# A unit after the number: `\text{cm}` (any text wrapper) or plain words of two or more letters
# (`5 cm`, `12 apples`); never a single letter (a variable: `5 x`), a LaTeX command (`4\pi`) or a
# word that changes the value (`4 pi`, `5 squared`).
_UNIT_WRAPPED = re.compile(r"\\(?:text|textrm|mathrm|mbox)\s*\{\s*[A-Za-z][A-Za-z .]*\}\s*$")
_UNIT_TAIL = re.compile(r"^(?P<value>.*?[\d}.%])\s+(?P<words>[A-Za-z][A-Za-z .]*)$")
_NOT_UNITS = frozenset({"pi", "sqrt", "root", "roots", "squared", "cubed", "factorial", "percent"})
_DEGREES = ("^{\\circ}", "^\\circ", "\\circ", "°")


def _fix_frac_shorthand(s: str) -> str:
    r"""`\frac12` -> `\frac{1}{2}`, `\frac1{72}` -> `\frac{1}{72}`, `\frac{3}4` -> `\frac{3}{4}`;
    `\dfrac`/`\tfrac` -> `\frac`."""
    s = re.sub(r"\\[dt]frac", r"\\frac", s)
    s = re.sub(r"\\frac\s*([0-9A-Za-z])\s*([0-9A-Za-z])", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac\s*([0-9A-Za-z])\s*\{", r"\\frac{\1}{", s)
    s = re.sub(r"\\frac\s*(\{[^{}]*\})\s*([0-9A-Za-z])", r"\\frac\1{\2}", s)
    return s


def _fix_sqrt_shorthand(s: str) -> str:
    r"""`\sqrt3` -> `\sqrt{3}` (the single character after the command is its argument)."""
    return re.sub(r"\\sqrt\s*([0-9A-Za-z])", r"\\sqrt{\1}", s)


def _drop_unit_words(s: str) -> str:
    m = _UNIT_TAIL.match(s)
    if not m:
        return s
    words = [w.rstrip(".").lower() for w in m.group("words").split()]
    if all(len(w) >= 2 and w.isalpha() and w not in _NOT_UNITS for w in words):
        return m.group("value")
    return s


def _strip_number_decorations(s: str) -> str:
    """Dollars, percent, degrees, spacing commands, a trailing unit and `x =` around one value;
    "" when the answer holds two values (`1, 4`, `3 1/2`)."""
    s = s.replace("−", "-").replace("–", "-").replace("\\$", "")
    s = _UNIT_WRAPPED.sub("", s.strip())
    s = unwrap(s)
    for noise in _SPACING:
        s = s.replace(noise, "")
    s = s.replace("{,}", ",").replace("\\%", "").rstrip("%")
    for deg in _DEGREES:
        s = s.replace(deg, "")
    lhs = _LHS_RE.match(s)
    if lhs:
        s = lhs.group("rhs")
    s = _drop_unit_words(s.strip()).strip()
    if s.endswith(".") and not s.endswith(".."):
        s = s[:-1]  # sentence punctuation inside the box: `\boxed{12.}`
    if re.search(r"\d\s+[\d.]|,\s", s):
        return ""  # two values side by side or a list: never merged into one number
    s = _fix_frac_shorthand(s)
    s = re.sub(r"\s+", "", s)  # `- 5`, `\frac {1} {2}`
    while s.startswith("{") and s.endswith("}") and s.count("{") == 1:
        s = s[1:-1]
    return s


def _to_fraction(text: str) -> Fraction:
    return Fraction(text.replace(",", ""))


def parse_number(text: str | None) -> Fraction | None:
    """The exact value when the *whole* answer is one number, else None.

    Read as numbers: `1,000`, `-0.5`, `.5`, `12.`, `1e3`, `7/2`, `\\frac{1}{2}`, `\\dfrac12`,
    `-\\frac{1}{2}`, `\\$5`, `50\\%` (50), `90^\\circ`, `5\\text{ cm}`, `5 cm`, `x = 3`, `\\text{42}`.
    Not numbers: `5\\sqrt{3}`, `4\\pi`, `y-1`, `1, 4`, `3 1/2`, `2+2=4`, `\\sqrt{4}`, `10^6`.
    """
    if text is None:
        return None
    s = _strip_number_decorations(str(text))
    if not s:
        return None
    m = _NUMBER_RE.match(s) or _FRAC_RE.match(s)
    if not m:
        return None
    try:
        value = _to_fraction(m.group("num"))
        if m.group("den") is not None:
            den = _to_fraction(m.group("den"))
            if den == 0:
                return None
            value = value / den
    except (ValueError, ZeroDivisionError):
        return None
    return -value if m.group("sign") == "-" else value


def decimal_places(text: str | None) -> int:
    """Digits after the decimal point of a plain decimal gold (`16.67` -> 2), else 0."""
    m = re.fullmatch(r"\s*[-+]?\d*\.(\d+)\s*", str(text or ""))
    return len(m.group(1)) if m else 0


@dataclass(frozen=True)
class NumericTolerance:
    """How a numeric task matches a non-integer gold; integer golds always match exactly (a relative
    tolerance would let a six-digit integer that is off in its last digits pass)."""

    rel: float = 1e-4  # |pred - gold| <= rel * |gold|
    abs: float = 0.0
    rounded_golds: bool = False  # a gold with 2+ decimals also matches a prediction that rounds to it
    why: str = "non-integer golds within 1e-4 relative (ftlab's default for numeric files)"


DEFAULT_TOLERANCE = NumericTolerance()


def format_number(value: Any) -> str:
    """`667.0` -> `667`, `0.5` -> `0.5`; answers in the shared subset are floats."""
    if isinstance(value, str):
        value = value.strip()
        try:
            value = float(value.replace(",", ""))
        except ValueError:
            return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        f = float(value)
        if math.isfinite(f) and f.is_integer():
            return str(int(f))
        return repr(f)
    return str(value)


def numbers_match(pred: Fraction | None, gold: Fraction | None, *, rel_tol: float = 0.0, abs_tol: float = 0.0,
                  gold_decimals: int = 0, rounded_golds: bool = False) -> bool:
    """Integer golds match exactly. A non-integer gold matches within `rel_tol` (relative to the
    gold) or `abs_tol`; with `rounded_golds`, a gold written with two or more decimals also matches
    a prediction that rounds to it (the dataset rounded `50/3` to `16.67`)."""
    if pred is None or gold is None:
        return False
    if pred == gold:
        return True
    if gold.denominator == 1:
        return False
    diff = abs(pred - gold)
    if rounded_golds and gold_decimals >= 2 and diff <= Fraction(1, 2 * 10 ** gold_decimals):
        return True
    return diff <= Fraction(rel_tol) * abs(gold) or diff <= Fraction(abs_tol)


def normalize_math_text(text: str | None) -> str | None:
    """A LaTeX answer that is not a number, in one canonical spelling: no spaces, `\\left`/`\\right`,
    `\\!`, dollars or degrees; `\\dfrac` -> `\\frac`; `\\frac12` -> `\\frac{1}{2}`; `\\sqrt3` ->
    `\\sqrt{3}`; a whole-answer `\\text{...}` unwrapped; a short `x =` dropped. Case is kept
    (`X` and `x` are different answers)."""
    if text is None:
        return None
    s = unwrap(str(text).replace("\\$", "")).replace("\n", "").replace("\\\\", "\\")
    for noise in _SPACING:
        s = s.replace(noise, "")
    for deg in _DEGREES:
        s = s.replace(deg, "")
    lhs = _LHS_RE.match(s)
    if lhs:
        s = lhs.group("rhs")
    s = _fix_sqrt_shorthand(_fix_frac_shorthand(s))
    s = re.sub(r"\s+", "", s)
    return s.rstrip(".") or None


# ---------------------------------------------------------------------------------------------
# Multiple choice

CHOICE_LETTERS = "ABCDEFGH"

# The whole answer names one option: `B`, `(b)`, `B.`, `B)`, `B:`, optionally followed by that
# option's text (`B. wet palms`, `(B) wet palms`). A digit N names the N-th option (ARC writes some
# questions' options as 1-4).
_CHOICE_RE = re.compile(r"^(?:\((?P<p>[A-Ha-h1-8])\)[.:]?|(?P<l>[A-Ha-h1-8])(?P<sep>[.):])?)(?:\s+(?P<text>.+))?$",
                        re.DOTALL)
# Another option label inside the trailing text (`A) or B)`, `A. and (C)`): two options, not one.
_OTHER_LABEL = re.compile(r"(?<![A-Za-z])(?:\([A-Ha-h]\)|[A-H][.):](?=\s|$))")


def _label(token: str) -> str:
    return CHOICE_LETTERS[int(token) - 1] if token.isdigit() else token.upper()


def normalize_choice(text: str | None, labels: tuple[str, ...] | None = None) -> str | None:
    """The one option a whole answer names, or None (invalid).

    `labels` is the task's option set: a letter outside it is invalid. `A and C`, `A, B`, `a dog`
    and `Option C` are invalid: they do not name exactly one option in the task's format.
    """
    if text is None:
        return None
    s = unwrap(text).strip()
    m = _CHOICE_RE.match(s)
    if not m:
        return None
    token = m.group("p") or m.group("l")
    trailing = m.group("text")
    if trailing is not None:
        # Text may only follow a separator: `B wet palms` and `a dog` name no option.
        if not (m.group("p") or m.group("sep")) or _OTHER_LABEL.search(trailing):
            return None
    label = _label(token)
    if labels is not None and label not in labels:
        return None
    return label


def option_labels(question: str) -> list[str]:
    """Option letters a question lists inline or on their own lines (`A. ... B. ...`, `(A) ...`),
    consecutive from A; [] when it lists none."""
    found = re.findall(r"(?:^|\s)\(?([A-H])[.)]\s", str(question))
    labels: list[str] = []
    for letter in found:
        if letter == CHOICE_LETTERS[len(labels)]:
            labels.append(letter)
            if len(labels) == len(CHOICE_LETTERS):
                break
    return labels if len(labels) >= 2 else []


# ---------------------------------------------------------------------------------------------
# Yes / no

_BOOL_PRED = {"yes": "yes", "true": "yes", "no": "no", "false": "no"}
# Gold labels come in the datasets' own encodings (booleans, 1/0, True/False strings).
_BOOL_GOLD = {**_BOOL_PRED, "1": "yes", "0": "no"}


def normalize_boolean(text: str | None) -> str | None:
    """A prediction that is exactly yes/no/true/false (any case, trailing `.`/`!`), else None:
    `yes or no`, `yes/no`, `Yes, because ...`, `y` and `correct` are invalid."""
    if text is None:
        return None
    s = unwrap(text).lower().rstrip(".!").strip()
    return _BOOL_PRED.get(s)


def boolean_gold(value) -> str | None:
    """A dataset's yes/no label (`True`, `"false"`, `1`, `"Yes"`) as yes/no."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None:
        return None
    return _BOOL_GOLD.get(str(value).strip().lower().rstrip("."))


# ---------------------------------------------------------------------------------------------
# SQuAD v2 (the official evaluation script's rules)

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)
# What a generative model writes to abstain, compared after SQuAD normalisation. The prompt asks for
# `\boxed{unanswerable}`. Words that can be real answers ("unknown", "none", "N/A" ~ "Na") are not here.
ABSTENTIONS = frozenset({"unanswerable", "no answer", "not answerable", "cannot be answered", "no answer found",
                         "question is unanswerable", "answer is not in context"})


def squad_normalize(text: str) -> str:
    """Lower case, strip punctuation, articles and extra whitespace (official SQuAD v2 script)."""
    text = str(text).lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def squad_prediction(text: str) -> str:
    """The official script's prediction string: `""` (no answer) for an empty box or an
    abstention phrase, else the text as written."""
    unwrapped = unwrap(text)
    return "" if squad_normalize(unwrapped) in ABSTENTIONS or not unwrapped.strip() else unwrapped


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
    """Gold answers as written; [] means unanswerable (ftlab stores that as `""`). A gold that
    reads "unknown" or "none" is an ordinary answer."""
    if gold is None:
        return []
    if isinstance(gold, dict):
        gold = gold.get("text", [])
    if isinstance(gold, str):
        gold = [gold]
    return [str(g) for g in gold if str(g).strip()]


def scoring_spans(golds: list[str]) -> list[str]:
    """The answers the official script scores against: those that normalise to something, else
    `[""]` (the question is unanswerable for scoring)."""
    return [g for g in golds if squad_normalize(g)] or [""]


# ---------------------------------------------------------------------------------------------
# Free-form exact answers (custom tasks)


def normalize_exact(text: str | None) -> str | None:
    if text is None:
        return None
    s = _WRAPPERS.sub(lambda m: m.group(1), str(text))
    return " ".join(s.split()).strip().rstrip(".").strip().lower()
