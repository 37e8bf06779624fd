"""The same weights for llama.cpp: a synthetic Gemma 3n checkpoint (bench/synthetic.py) written as
a Q4_0 GGUF the way llama.cpp's converter names and lays it out (tests/gguf_writer.py does it for
tiny models from a transformers module; this streams a real-shape checkpoint tensor by tensor).

Every matrix whose rows are a multiple of 32 is Q4_0 (llama-quantize --pure), norms and the tiny
AltUp maps F32. llama.cpp refuses a Gemma 3n file without k_proj, v_proj and k_norm in the
KV-shared layers, though it never computes with them: random ones are added there.
"""
from __future__ import annotations

import math
import os

import gguf
import numpy as np
import sentencepiece as spm

from exporters.checkpoint import Checkpoint
from exporters.hf_config import parse_gemma3n
from exporters.text_decoder import std_multiplier
from gemma3n_rt.config import SLIDING

Q4_0 = gguf.GGMLQuantizationType.Q4_0
PREFIX = "model.language_model."


def _plan(ckpt: Checkpoint, layers: int, vocab: int) -> list[tuple[str, tuple, object]]:
    """(gguf name, shape, rows(a, b) -> float32) for every tensor, the stacked and the added ones.
    llama.cpp wants the token embedding (and the padded PLE table) at the tokenizer's `vocab` rows:
    the rows past it (image and audio ids) are left out, as no text token reads them."""
    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GEMMA3N, layers)
    names = [n for n in ckpt.names() if n.startswith(PREFIX)]
    lazy = lambda n: ckpt._lazy(n, tuple(ckpt.shape(n)))   # noqa: E731
    plan, stacked = [], {}
    for n in sorted(names):
        key = "model." + n[len(PREFIX):].removesuffix(".weight")
        head = key.split(".")[1]
        if head in ("altup_projections", "altup_unembed_projections"):
            stacked.setdefault(head, []).append(n)
            continue
        shape, src = tuple(ckpt.shape(n)), lazy(n)
        if key == "model.embed_tokens_per_layer":     # zero rows padded to the full vocabulary
            have = shape[0]
            shape = (vocab, shape[1])

            def rows(a, b, src=src, have=have, width=shape[1]):
                out = np.zeros((b - a, width), np.float32)
                if a < have:
                    out[:min(b, have) - a] = src.rows(a, min(b, have))
                return out
            plan.append((tmap.get_name(key) + ".weight", shape, rows))
            continue
        if key == "model.embed_tokens":
            shape = (vocab, shape[1])
        plan.append((tmap.get_name(key) + ".weight", shape, (lambda a, b, src=src: src.rows(a, b)) if len(shape) == 2
                     else (lambda a, b, src=src: src.load())))
    for head, parts in stacked.items():
        shape = (len(parts),) + tuple(ckpt.shape(parts[0]))
        plan.append((tmap.get_name("model." + head) + ".weight", shape,
                     lambda a, b, parts=parts: np.stack([lazy(p).load() for p in sorted(parts)])))
    rng = np.random.default_rng(1)
    for i in range(layers):       # the KV-shared layers' unused K/V (see the module docstring)
        for part in ("k_proj", "v_proj", "k_norm"):
            if f"{PREFIX}layers.{i}.self_attn.{part}.weight" not in ckpt.names():
                shape = tuple(ckpt.shape(f"{PREFIX}layers.0.self_attn.{part}.weight"))
                plan.append((tmap.get_name(f"model.layers.{i}.self_attn.{part}") + ".weight", shape,
                             lambda a, b, shape=shape: (np.ones(shape, np.float32) if len(shape) == 1 else
                                                        rng.standard_normal((b - a, shape[1]), np.float32) * shape[1] ** -0.5)))
    return plan


def _write_rows(w: gguf.GGUFWriter, shape: tuple, rows, quantize: bool, chunk: int = 4096) -> None:
    """One tensor's data in chunks of rows (GGUFWriter.write_tensor_data wants it whole)."""
    fout = w.fout[0]
    ti = w.tensors[0].pop(next(iter(w.tensors[0])))
    w.write_padding(fout, fout.tell())
    written = 0
    starts = range(0, shape[0], chunk) if quantize else [0]
    for a in starts:
        b = min(shape[0], a + chunk) if quantize else shape[0]
        x = np.ascontiguousarray(rows(a, b), np.float32)
        data = gguf.quants.quantize(x, Q4_0) if quantize else x
        data.tofile(fout)
        written += data.nbytes
    assert written == ti.nbytes, (written, ti.nbytes)
    w.write_padding(fout, written)
    w.state = gguf.gguf_writer.WriterState.WEIGHTS


def _quantized(shape: tuple) -> bool:
    return len(shape) == 2 and shape[1] % 32 == 0 and min(shape) >= 32


def write_q4_0_gguf(checkpoint_dir: str, path: str) -> None:
    ckpt = Checkpoint(checkpoint_dir)
    src = parse_gemma3n(ckpt.config)
    text = ckpt.config["text_config"]
    L = src.num_layers
    tmp = path + ".partial"
    w = gguf.GGUFWriter(tmp, "gemma3n")
    w.add_block_count(L)
    w.add_context_length(text["max_position_embeddings"])
    w.add_embedding_length(src.hidden_size)
    w.add_feed_forward_length(list(text["intermediate_size"]))
    w.add_head_count(src.num_attention_heads)
    w.add_head_count_kv(src.num_kv_heads)
    w.add_key_length(src.head_dim)
    w.add_value_length(src.head_dim)
    w.add_layer_norm_rms_eps(text["rms_norm_eps"])
    w.add_rope_freq_base(text["rope_parameters"]["full_attention"]["rope_theta"])
    w.add_sliding_window(text["sliding_window"])
    w.add_embedding_length_per_layer_input(text["hidden_size_per_layer_input"])
    w.add_shared_kv_layers(text["num_kv_shared_layers"])
    w.add_altup_num_inputs(text["altup_num_inputs"])
    w.add_altup_active_idx(text.get("altup_active_idx", 0))
    w.add_activation_sparsity_scale([std_multiplier(p) if p > 0 else -math.inf for p in text["activation_sparsity_pattern"]])
    w.add_sliding_window_pattern([t == SLIDING for t in src.layer_types])
    w.add_final_logit_softcapping(text["final_logit_softcapping"])
    sp = spm.SentencePieceProcessor(model_file=ckpt.tokenizer_path)
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    w.add_tokenizer_model("llama")
    w.add_token_list(pieces)
    w.add_token_scores([sp.get_score(i) for i in range(len(pieces))])
    w.add_token_types([6 if sp.is_byte(i) else 3 if sp.is_control(i) else 2 if sp.is_unknown(i) else 1
                       for i in range(len(pieces))])
    w.add_bos_token_id(sp.bos_id())
    w.add_eos_token_id(sp.eos_id())
    w.add_unk_token_id(sp.unk_id())
    w.add_pad_token_id(sp.pad_id())
    w.add_add_space_prefix(False)
    plan = _plan(ckpt, L, len(pieces))
    for name, shape, _ in plan:
        if _quantized(shape):
            nbytes = shape[0] * shape[1] // 32 * 18
            w.add_tensor_info(name, (shape[0], shape[1] // 32 * 18), np.dtype(np.uint8), nbytes, raw_dtype=Q4_0)
        else:
            w.add_tensor_info(name, shape, np.dtype(np.float32), 4 * int(np.prod(shape)))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for name, shape, rows in plan:
        _write_rows(w, shape, rows, _quantized(shape))
    w.close()
    os.replace(tmp, path)
