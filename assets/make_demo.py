"""Regenerate the embedded demo bundle (assets/demo) deterministically.

A tiny Gemma 3n with the real tensor layout and the E4B structure (35 layers, KV sharing from
layer 20, sparsity on layers 0-9, per-layer FFN widths 192 nested over 96 so the E2B slice
exists) and tiny vision and audio towers (assets/demo_towers.py), random weights from a fixed seed, the demo tokenizer from make_tokenizer.py, exported
by the project's own exporter. Its weights are random: it shows the machinery, not language.

Usage: python assets/make_demo.py [OUT]   (default: assets/demo beside this file)
"""
from __future__ import annotations

import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from assets.demo_towers import add_audio_tower, add_vision_tower  # noqa: E402
from assets.make_tokenizer import train_demo_tokenizer  # noqa: E402
from bench.synthetic import write_random_checkpoint  # noqa: E402
from exporters.export import export  # noqa: E402

TOKENIZER_PIECES = 2048
# The full model, the official E2B and one mix-n-match config (each slice adds a ~0.7 MB graph file).
DEMO_SLICES = "E4B,E2B,E2.54B-layer"
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


def main(out: str) -> None:
    with tempfile.TemporaryDirectory() as ckpt:
        write_random_checkpoint(ckpt, TEXT_CONFIG, seed=0)
        add_vision_tower(ckpt)
        add_audio_tower(ckpt)
        train_demo_tokenizer(os.path.join(ckpt, "tokenizer.model"))
        # the tiny towers in int8 keep the demo small (the vision tower is 3.7 M parameters); no
        # calibration: on random weights it buys nothing, and its float sums could differ in the
        # last bits between CPUs, and with them a tie between two grids
        export(ckpt, out, quant="int4", tables="int8", force=True, show_progress=False, slices=DEMO_SLICES,
               vision_quant="int8", audio_quant="int8", calibration=None)
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(out) for f in fs)
    print(f"wrote {out} ({size / 2**20:.2f} MiB)")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "demo"))
