"""Answer extraction, table-tested against awkward model outputs."""

import pytest

from ftlab.eval.scoring.answer_kinds import ANSWER_KINDS, extract
from ftlab.eval.scoring.extraction import box_cut_off, extract_boxed, has_closed_box

BOXED = [
    ("The answer is \\boxed{42}.", "42"),
    ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("\\boxed{\\dfrac{3}{4}} is it", "\\dfrac{3}{4}"),
    ("first \\boxed{1}, then corrected: \\boxed{2}", "2"),
    ("\\fbox{B}", "B"),
    ("\\boxed {7}", "7"),
    ("so \\boxed 5.", "5"),
    ("$\\boxed{ 12 }$", "12"),
    ("\\boxed{a{b}c}", "a{b}c"),
    ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),
    ("\\boxed{\\text{yes}}", "\\text{yes}"),
    ("\\boxed{}", ""),
    ("\\boxed{1} and then \\boxed{2", None),  # a cut-off last box is no answer, not the earlier box
    ("\\boxed{3", None),
    ("no box here, answer 3", None),
    ("\\boxedx{3}", None),  # another command, not a box
    ("", None),
    (None, None),
    ("\\boxed{-1,000}", "-1,000"),
    ("Final: \\boxed{x = \\sqrt{2}}", "x = \\sqrt{2}"),
]


@pytest.mark.parametrize("text,expected", BOXED)
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


@pytest.mark.parametrize("text,cut", [
    ("\\boxed{1} and then \\boxed{2", True),
    ("\\boxed{3", True),
    ("\\boxed{1} and then \\boxed{2}", False),
    ("\\boxed{\\frac{1}{2}", True),
    ("no box", False),
    (None, False),
    ("ends with \\boxed", True),
])
def test_box_cut_off(text, cut):
    assert box_cut_off(text) is cut


@pytest.mark.parametrize("text,closed", [
    ("\\boxed{4", False),
    ("\\boxed{4}", True),
    ("\\boxed{\\frac{1}{2}", False),
    ("\\boxed{\\frac{1}{2}}", True),
    ("\\boxed 5", False),  # brace-less form may still grow while streaming
    ("nothing", False),
    ("\\fbox{A} trailing", True),
])
def test_has_closed_box(text, closed):
    assert has_closed_box(text) is closed


FLEXIBLE = [
    ("numeric", "so the result is 1,234.", "1,234"),
    ("numeric", "I get -5 apples", "-5"),
    ("numeric", "It equals $\\frac{3}{4}$", "\\frac{3}{4}"),
    ("numeric", "half: 1/2", "1/2"),
    ("numeric", "no digits", None),
    ("boolean", "Yes, because the passage says so", "yes"),
    ("boolean", "It is true. Actually, no.", "no"),
    ("boolean", "maybe", None),
    ("choice", "The answer is C.", "C"),
    ("choice", "(B) Paris", "B"),
    ("choice", "I pick **D**", "D"),
    ("choice", "A cat is an animal, so B.", "B"),
    ("choice", "nothing useful", None),
    ("span", "Answer: Paris.", "Paris"),
    ("span", "Some reasoning\nParis", "Paris"),
    ("exact", "line one\nfinal line", "final line"),
]


@pytest.mark.parametrize("kind,text,expected", FLEXIBLE)
def test_flexible_fallback(kind, text, expected):
    assert ANSWER_KINDS.get(kind).flexible(text) == expected


def test_extract_prefers_strict_and_reports_fallback():
    assert extract("The answer is \\boxed{7}, not 8", "numeric") == ("7", "7")
    assert extract("The answer is 8", "numeric") == (None, "8")
    assert extract(None, "numeric") == (None, None)


def test_unknown_kind_names_valid_ones():
    from ftlab.errors import FtlabError

    with pytest.raises(FtlabError, match="valid: numeric"):
        extract("no box", "colour")
