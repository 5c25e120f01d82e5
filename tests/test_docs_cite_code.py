"""Every ftlab name (`ftlab.x.y`) and repository file (`ftlab/...py`, `tests/...py`) the README, the
docs and the benchmark reports cite exists, so a rename cannot leave a reader pointing at nothing.
(docs/ARCHITECTURE.md gets the deeper check of tests/test_architecture_doc.py.)"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), *sorted((REPO / "benchmarks").glob("*.md"))]


def _resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return False
        return True
    return False


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_cited_names_and_files_exist(doc):
    text = doc.read_text()
    missing = sorted({m.group(0) for m in re.finditer(r"\bftlab(?:\.[A-Za-z_]\w*)+", text)
                      if not _resolves(m.group(0))})
    missing += sorted({m.group(0) for m in re.finditer(r"\b(?:ftlab|tests)/[\w/.-]+\.py\b", text)
                       if not (REPO / m.group(0)).exists() and "/X.py" not in m.group(0)})
    assert not missing, f"{doc.name} cites what does not exist: {missing}"


def test_the_check_catches_a_stale_name():
    assert _resolves("ftlab.jobs.backends.BACKENDS") and not _resolves("ftlab.orchestrate.backends.BACKENDS")
