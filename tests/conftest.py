import importlib.util
from pathlib import Path

import pytest

from gemma3n_rt.tokenizer import Tokenizer

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def make_tokenizer():
    """The assets/make_tokenizer.py module (assets/ is not a package, so load it by path)."""
    script = REPO / "assets" / "make_tokenizer.py"
    spec = importlib.util.spec_from_file_location("make_tokenizer", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def demo_tokenizer_path(make_tokenizer, tmp_path_factory) -> Path:
    """The demo SentencePiece model, trained once per test session."""
    return make_tokenizer.train_demo_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="session")
def tokenizer(demo_tokenizer_path) -> Tokenizer:
    return Tokenizer(demo_tokenizer_path)
