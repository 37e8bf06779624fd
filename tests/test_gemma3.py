"""Gemma 3 text models (Gemma3ForCausalLM) through the same exporter and runtime: parity with
transformers on a tiny random checkpoint, sliding window much shorter than the prompt."""
import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file
from transformers import Gemma3ForCausalLM, Gemma3TextConfig

import gemma3n_rt
from exporters.export import export
from hf_reference import reference_greedy, reference_logits


def tiny_gemma3(seed: int) -> Gemma3ForCausalLM:
    cfg = Gemma3TextConfig(vocab_size=2112, hidden_size=64, intermediate_size=128, num_hidden_layers=7,
                           num_attention_heads=4, num_key_value_heads=1, head_dim=16, query_pre_attn_scalar=16,
                           sliding_window=8, max_position_embeddings=1024, final_logit_softcapping=None,
                           layer_types=["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(7)],
                           rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
                                            "full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0}})
    torch.manual_seed(seed)
    model = Gemma3ForCausalLM(cfg).eval().float()
    with torch.no_grad():
        for name, p in model.named_parameters():
            std = 0.3 if p.ndim == 1 else (1.0 if "embed" in name else p.shape[-1] ** -0.5)
            p.copy_(torch.randn_like(p) * std)   # norms: (1 + w) around 1
    return model


@pytest.fixture(scope="module", params=[0, 1])
def gemma3_bundle(request, tmp_path_factory, demo_tokenizer_path):
    model = tiny_gemma3(request.param)
    ckpt = tmp_path_factory.mktemp("gemma3_ckpt")
    save_file({k: v.numpy().copy() for k, v in model.state_dict().items() if k != "lm_head.weight"},
              str(ckpt / "model.safetensors"))
    (ckpt / "config.json").write_text(json.dumps(model.config.to_dict()))
    shutil.copyfile(demo_tokenizer_path, ckpt / "tokenizer.model")
    out = tmp_path_factory.mktemp("gemma3") / "bundle"
    export(str(ckpt), str(out), quant="fp32", tables="fp32", show_progress=False)
    return model, out


def test_gemma3_matches_reference(gemma3_bundle):
    ref, bundle = gemma3_bundle
    model = gemma3n_rt.load(str(bundle), context=128, chunk=16)
    assert model.slices == ["full"] and model.bundle.text.architecture == "gemma3"
    assert "ple" not in model.bundle.manifest["row_tables"]
    ids = [2] + np.random.default_rng(0).integers(3, 2112, 39).tolist()
    for n in (1, 9, 40):
        ours, theirs = model.next_token_logits(ids[:n]), reference_logits(ref, ids[:n])
        assert np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs)) < 1e-4
    assert model.generate_ids(ids[:20], 24, stop_ids=(), temperature=0) == reference_greedy(ref, ids[:20], 24)


def test_gemma3_prefill_int8(tmp_path, demo_tokenizer_path):
    """--prefill-int8 on Gemma 3: prompt chunks take int8 matmuls in every attention and FFN linear
    (one If each for q/k/v, o and the FFN), and stay close to transformers, as close as without."""
    import onnx
    ref = tiny_gemma3(0)
    save_file({k: v.numpy().copy() for k, v in ref.state_dict().items() if k != "lm_head.weight"},
              str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(ref.config.to_dict()))
    shutil.copyfile(demo_tokenizer_path, tmp_path / "tokenizer.model")
    errors = {}
    for prefill_int8 in (False, True):
        out = tmp_path / f"out{int(prefill_int8)}"
        export(str(tmp_path), str(out), quant="int8", show_progress=False, prefill_int8=prefill_int8)
        model = gemma3n_rt.load(str(out), context=128, chunk=32)
        rng = np.random.default_rng(1)
        errors[prefill_int8] = []
        for n in (9, 17, 32, 32, 32):
            ids = [2] + rng.integers(3, 2112, n - 1).tolist()
            model.decoder.reset()
            ours, theirs = model.next_token_logits(ids), reference_logits(ref, ids)
            errors[prefill_int8].append(np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs)))
    graph = onnx.load(str(out / "text/decoder.full.onnx"), load_external_data=False).graph
    assert sum(n.op_type == "If" for n in graph.node) == 3 * 7
    print(f"relative error to transformers: {np.mean(errors[True]):.4f} with --prefill-int8, {np.mean(errors[False]):.4f} without")
    assert np.mean(errors[True]) < 2 * np.mean(errors[False]) and np.max(errors[True]) < 0.05


def test_gemma3_has_no_matformer_slices(gemma3_bundle, tmp_path):
    _, bundle = gemma3_bundle
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert [s["name"] for s in manifest["slices"]] == ["full"] and len(manifest["slices"][0]["caches"]) == 7
