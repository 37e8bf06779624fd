"""GGUF import of Gemma 3n: a tiny checkpoint written as llama.cpp's converter writes it, exported
from the .gguf file, against the reference model; and clear errors for files that aren't GGUF."""
import gguf
import numpy as np
import pytest

import gemma3n_rt
from exporters.export import export
from gguf_writer import write_gemma3n_gguf
from hf_reference import reference_greedy, reference_logits, reference_model, tiny_text_config


@pytest.fixture(scope="module")
def ref():
    return reference_model(tiny_text_config(), seed=3, embed_std=1.0)


@pytest.mark.parametrize("qtype,tol", [(gguf.GGMLQuantizationType.F32, 1e-4), (gguf.GGMLQuantizationType.Q8_0, 3e-2)])
def test_gemma3n_gguf_matches_reference(ref, tmp_path, demo_tokenizer_path, qtype, tol):
    path = str(tmp_path / "tiny.gguf")
    write_gemma3n_gguf(ref, path, str(demo_tokenizer_path), qtype)
    out = tmp_path / "bundle"
    export(path, str(out), quant="fp32", tables="fp32", show_progress=False)
    model = gemma3n_rt.load(str(out), context=128)
    assert model.bundle.text.vocab_size_per_layer_input == ref.config.vocab_size_per_layer_input
    ids = [2] + list(np.random.default_rng(1).integers(3, 2048, 24)) + [2100]
    ours, theirs = model.next_token_logits(ids), reference_logits(ref, ids)
    err = np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs))
    assert err < tol, err
    if qtype == gguf.GGMLQuantizationType.F32:
        assert model.generate_ids(ids, 12, stop_ids=(), temperature=0) == reference_greedy(ref, ids, 12)


def test_not_a_gguf_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"not a gguf file at all")
    with pytest.raises(gemma3n_rt.Gemma3nError, match="not a readable GGUF file"):
        export(str(bad), str(tmp_path / "out"), show_progress=False)
