"""Answer extraction from model responses.

Strict extraction (the last `\\boxed{...}` / `\\fbox{...}` with balanced braces) drives every
metric, because it is what the prompt asks for and what training teaches. A flexible fallback
(last number, last yes/no, a lone letter, ...) is reported beside it so that a model that knows
the answer but ignores the format is visible rather than silently scored as wrong.
"""

from __future__ import annotations

import re
from typing import Callable

BOX_COMMANDS = ("\\boxed", "\\fbox")

# `\boxed {x}` (space) and `\boxed 5` (MATH's brace-less form) both occur in model output.
_BOX_START = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")


def _box_spans(text: str) -> list[tuple[str | None, bool]]:
    """(content, braced) for every box command in `text`; content is None when a box never closes."""
    spans: list[tuple[str | None, bool]] = []
    for match in _BOX_START.finditer(text):
        pos = match.end()
        while pos < len(text) and text[pos] in " \t":
            pos += 1
        if pos >= len(text):
            spans.append((None, False))
        elif text[pos] == "{":
            depth, content = 0, None
            for end in range(pos, len(text)):
                ch = text[end]
                # An escaped brace (`\{`) is literal content, not nesting.
                if ch not in "{}" or text[end - 1] == "\\":
                    continue
                depth += 1 if ch == "{" else -1
                if depth == 0:
                    content = text[pos + 1:end]
                    break
            spans.append((content, True))
        else:
            # Brace-less form takes the next token only (`\boxed 5.` -> `5`).
            token = re.match(r"-?\d+(?:\.\d+)?|[^\s$.,;}]+", text[pos:])
            spans.append((token.group(0) if token else None, False))
    return spans


def extract_boxed(text: str | None) -> str | None:
    """Content of the last box, stripped; None when the response has no box or its last box never
    closes.

    An unclosed last box is a cut-off answer (the model was still writing or revising it): an
    earlier closed box is not credited in its place, as in the Hendrycks MATH reference
    (`last_boxed_only_string`). `box_cut_off` tells the two cases apart.
    """
    if not text or "\\" not in text:
        return None
    spans = _box_spans(text)
    if not spans or spans[-1][0] is None:
        return None
    return spans[-1][0].strip()


def box_cut_off(text: str | None) -> bool:
    """True when the response's last box command never closes (generation stopped inside it)."""
    if not text or "\\" not in text:
        return False
    spans = _box_spans(text)
    return bool(spans) and spans[-1][0] is None


def has_closed_box(text: str | None) -> bool:
    r"""True once the response holds a complete braced box; generation stops there.

    The brace-less form never counts: while streaming, `\boxed 5` may still become `\boxed 50`.
    """
    if not text or "\\" not in text:
        return False
    return any(content is not None and braced for content, braced in _box_spans(text))


# ---------------------------------------------------------------------------------------------
# Flexible fallbacks; each answer kind's definition (ftlab.eval.scoring.answer_kinds) names its own.

_NUMBER = re.compile(
    r"-?\\[dt]?frac\{[^{}]+\}\{[^{}]+\}|-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?(?:/\d+(?:\.\d+)?)?|-?\.\d+"
)
_YES_NO = re.compile(r"\b(yes|no|true|false)\b", re.IGNORECASE)
# A choice letter standing alone: "(B)", "B.", "B)", "answer is B", "**C**", but not "A" in "A cat".
_LETTER = re.compile(r"(?<![A-Za-z])\(?([A-E])\)?(?=$|[\s.,:;)*!?])")


def _strip_markup(text: str) -> str:
    return text.replace("**", "").replace("$", "")


def last_number(text: str) -> str | None:
    hits = _NUMBER.findall(_strip_markup(text))
    return hits[-1] if hits else None


def last_yes_no(text: str) -> str | None:
    hits = _YES_NO.findall(text)
    return hits[-1].lower() if hits else None


def lone_letter(text: str) -> str | None:
    text = _strip_markup(text)
    # "The answer is C" is the strongest signal; otherwise take the last standalone letter.
    cue = re.findall(r"answer(?: is|:)?\s*\(?([A-E])\b", text, flags=re.IGNORECASE)
    if cue:
        return cue[-1].upper()
    hits = [m.group(1) for m in _LETTER.finditer(text)]
    # A sentence-initial "A" is usually the article; only count it when it is the only candidate.
    hits_no_article = [h for h in hits if h != "A"] or hits
    return hits_no_article[-1] if hits_no_article else None


def last_line(text: str) -> str | None:
    cue = re.findall(r"(?:final answer|answer)\s*(?:is|:)\s*(.+)", text, flags=re.IGNORECASE)
    if cue:
        return cue[-1].strip().rstrip(".").strip() or None
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else None


def extract_with(text: str | None, fallback: Callable[[str], str | None]) -> tuple[str | None, str | None]:
    """(strict, flexible): flexible is the strict answer when there is one, else `fallback(text)`."""
    strict = extract_boxed(text)
    if strict is not None:
        return strict, strict
    if not text:
        return None, None
    return None, fallback(text)
