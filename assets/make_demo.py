"""Regenerate the embedded demo bundle (assets/demo) deterministically.

A tiny Gemma 3n with the real tensor layout and the E4B structure (35 layers, KV sharing from
layer 20, sparsity on layers 0-9, per-layer FFN widths 192 nested over 96 so the E2B slice
exists), random weights from a fixed seed, the demo tokenizer from make_tokenizer.py, exported
by the project's own exporter. Its weights are random: it shows the machinery, not language.

Usage: python assets/make_demo.py [OUT]   (default: assets/demo beside this file)
"""
from __future__ import annotations

import json
import os
import sys
import tempfile

import numpy as np
from safetensors.numpy import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from exporters.export import export  # noqa: E402
from exporters.hf_config import parse_gemma3n  # noqa: E402
from exporters.text_decoder import checkpoint_name, text_tensor_shapes  # noqa: E402

TOKENIZER_PIECES = 2048
TEXT_CONFIG = {
    "model_type": "gemma3n_text", "hidden_size": 64, "num_hidden_layers": 35, "intermediate_size": [192] * 35,
    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "hidden_size_per_layer_input": 16,
    "vocab_size": TOKENIZER_PIECES + 64, "vocab_size_per_layer_input": TOKENIZER_PIECES, "laurel_rank": 8,
    "num_kv_shared_layers": 15, "sliding_window": 512, "max_position_embeddings": 32768,
    "activation_sparsity_pattern": [0.95] * 10 + [0.0] * 25, "final_logit_softcapping": 30.0,
    "rms_norm_eps": 1e-6, "hidden_activation": "gelu_pytorch_tanh", "altup_num_inputs": 4,
    "rope_parameters": {"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                        "full_attention": {"rope_type": "default", "rope_theta": 1000000.0}},
    "pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2, "tie_word_embeddings": True,
}


def random_checkpoint(out_dir: str, seed: int = 0) -> None:
    """Write config.json and model.safetensors in the Gemma3nForConditionalGeneration layout."""
    config = {"model_type": "gemma3n", "architectures": ["Gemma3nForConditionalGeneration"],
              "text_config": TEXT_CONFIG}
    src = parse_gemma3n(config)
    rng = np.random.default_rng(seed)
    tensors = {}
    for key, shape in text_tensor_shapes(src).items():
        if len(shape) == 1:                      # norms and scales hover around 1
            t = 1.0 + 0.1 * rng.standard_normal(shape)
        else:
            t = rng.standard_normal(shape) / np.sqrt(shape[-1])
        tensors[checkpoint_name(src, key)] = t.astype(np.float32)
    save_file(tensors, os.path.join(out_dir, "model.safetensors"))
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=1)


def main(out: str) -> None:
    from make_tokenizer import train_demo_tokenizer
    with tempfile.TemporaryDirectory() as ckpt:
        random_checkpoint(ckpt)
        train_demo_tokenizer(os.path.join(ckpt, "tokenizer.model"))
        export(ckpt, out, quant="int4", tables="int8", force=True, show_progress=False)
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(out) for f in fs)
    print(f"wrote {out} ({size / 2**20:.2f} MiB)")


if __name__ == "__main__":
    sys.path.insert(0, HERE)
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "demo"))
