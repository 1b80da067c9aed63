import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny test models are faster on one thread, and steady when the machine is busy.
os.environ.setdefault("OMP_NUM_THREADS", "1")
_SHARED = ROOT.parent / "shared" / "data"
# The real samples live in ../shared/data; the repo ships copies of them in data/ (same bytes), so the
# tests run on a clone without shared/ too.
SHARED = _SHARED if (_SHARED / "legi").is_dir() else ROOT / "data"


@pytest.fixture(scope="session", autouse=True)
def forgetting_cache(tmp_path_factory) -> Path:
    """The study's cache of base-side forgetting material, in a temporary folder: tests never
    write into the user's twinlora cache."""
    root = tmp_path_factory.mktemp("forgetting-cache")
    os.environ["TWINLORA_FORGETTING_CACHE"] = str(root)
    return root


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from tiny_model import build_tiny_model
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "llama")


@pytest.fixture(scope="session")
def other_tiny_model(tmp_path_factory) -> Path:
    """Same architecture, other random weights: an adapter trained on `tiny_model` must be refused."""
    from tiny_model import build_tiny_model
    return build_tiny_model(tmp_path_factory.mktemp("tiny2") / "llama", seed=1)


@pytest.fixture(scope="session")
def gemma_seed(tmp_path_factory) -> Path:
    """The Gemma-3-4B seed shape at test size (sliding window 8, GELU): tests/seed_models.py."""
    from seed_models import build_seed
    return build_seed("gemma-3-4b", tmp_path_factory.mktemp("gemma") / "gemma-3-4b")


@pytest.fixture
def chat_jsonl(tmp_path) -> Path:
    from helpers import chat_rows, write_jsonl
    return write_jsonl(tmp_path / "train.jsonl", chat_rows(12))
