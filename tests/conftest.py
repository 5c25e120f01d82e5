"""Test setup: one torch thread (2-core machines slow 10-40x when oversubscribed), no hub access."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO.parent / "shared" / "datasets"


def pytest_configure(config):
    import torch

    torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """An empty workspace root; FTLAB_HOME points at it so CLIs write there."""
    from ftlab.paths import Workspace

    monkeypatch.setenv("FTLAB_HOME", str(tmp_path))
    return Workspace(tmp_path)


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    if not SHARED_DATASETS.is_dir():
        pytest.skip(f"{SHARED_DATASETS} not present (CI and dev machines have it beside the repo)")
    return SHARED_DATASETS


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A saved 2-layer Llama with a 400-token BPE (tests/tiny_models.py), built once per session."""
    from tiny_models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="module")
def tiny():
    """`scratch:tiny` loaded in fp32 with seed 0: (model, tokenizer), shared by one test module."""
    import torch

    from ftlab.models.sources import load_model

    torch.manual_seed(0)
    model, tok, _ = load_model("scratch:tiny", dtype="fp32")
    return model, tok
