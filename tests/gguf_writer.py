"""Write a tiny Gemma 3n checkpoint as llama.cpp's converter would (convert_hf_to_gguf.py,
Gemma3NModel): tensor names from the gguf package's name map, AltUp projections stacked, the PLE
table padded with zero rows to the full vocabulary, sparsity stored as Φ⁻¹(p), the sliding
pattern as booleans. Test-only."""
from __future__ import annotations

import math

import gguf
import numpy as np
import sentencepiece as spm

from exporters.text_decoder import std_multiplier


def write_gemma3n_gguf(model, path: str, tokenizer_model: str, qtype=gguf.GGMLQuantizationType.F32) -> None:
    cfg = model.config
    L = cfg.num_hidden_layers
    w = gguf.GGUFWriter(path, "gemma3n")
    w.add_block_count(L)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(list(cfg.intermediate_size))
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_key_length(cfg.head_dim)
    w.add_value_length(cfg.head_dim)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(cfg.rope_parameters["full_attention"]["rope_theta"])
    w.add_sliding_window(cfg.sliding_window)
    w.add_embedding_length_per_layer_input(cfg.hidden_size_per_layer_input)
    w.add_shared_kv_layers(cfg.num_kv_shared_layers)
    w.add_altup_num_inputs(cfg.altup_num_inputs)
    w.add_altup_active_idx(cfg.altup_active_idx)
    w.add_activation_sparsity_scale([std_multiplier(p) if p > 0 else -math.inf for p in cfg.activation_sparsity_pattern])
    w.add_sliding_window_pattern([t == "sliding_attention" for t in cfg.layer_types])
    if cfg.final_logit_softcapping:
        w.add_final_logit_softcapping(cfg.final_logit_softcapping)
    sp = spm.SentencePieceProcessor(model_file=tokenizer_model)
    w.add_tokenizer_model("llama")
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    types = [6 if sp.is_byte(i) else 3 if sp.is_control(i) else 2 if sp.is_unknown(i) else 1 for i in range(len(pieces))]
    w.add_token_list(pieces)
    w.add_token_scores([sp.get_score(i) for i in range(len(pieces))])
    w.add_token_types(types)
    w.add_bos_token_id(sp.bos_id())
    w.add_eos_token_id(sp.eos_id())
    w.add_unk_token_id(sp.unk_id())
    w.add_pad_token_id(sp.pad_id())
    w.add_add_space_prefix(False)

    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GEMMA3N, L)
    state = {k: v.detach().float().numpy() for k, v in model.model.state_dict().items()}
    stacked = {"altup_projections": [], "altup_unembed_projections": []}
    for name, array in state.items():
        key = name.removesuffix(".weight")
        if key.split(".")[0] in stacked:
            stacked[key.split(".")[0]].append(array)
            continue
        if key == "embed_tokens_per_layer":
            array = np.concatenate([array, np.zeros((cfg.vocab_size - array.shape[0], array.shape[1]), np.float32)])
        _add(w, tmap.get_name("model." + key) + ".weight", array, qtype)
    for key, arrays in stacked.items():
        _add(w, tmap.get_name("model." + key) + ".weight", np.stack(arrays), gguf.GGMLQuantizationType.F32)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _add(w, name: str, array: np.ndarray, qtype) -> None:
    if array.ndim == 2 and qtype != gguf.GGMLQuantizationType.F32 and array.shape[1] % 32 == 0:
        w.add_tensor(name, gguf.quants.quantize(array, qtype), raw_dtype=qtype)
    else:
        w.add_tensor(name, np.ascontiguousarray(array, np.float32))
