"""Tiny random Gemma 3n checkpoints in the real Hugging Face layout, and the reference model that
runs them (transformers' Gemma3n). Test-only: the runtime never imports torch or transformers."""
from __future__ import annotations

import json
import os

import numpy as np
import torch
from safetensors.numpy import save_file
from transformers import Gemma3nForCausalLM, Gemma3nTextConfig

PREFIX = "model.language_model."


def tiny_text_config(num_layers=10, num_kv_shared_layers=4, sliding_window=8, widths=None, sparse_layers=2,
                     vocab=2112, ple_vocab=2048, **overrides) -> Gemma3nTextConfig:
    widths = widths or [96] * num_layers
    kw = dict(
        vocab_size=vocab, vocab_size_per_layer_input=ple_vocab, hidden_size=64, hidden_size_per_layer_input=16,
        num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        intermediate_size=list(widths), num_kv_shared_layers=num_kv_shared_layers, sliding_window=sliding_window,
        laurel_rank=8, max_position_embeddings=4096,
        activation_sparsity_pattern=[0.95] * sparse_layers + [0.0] * (num_layers - sparse_layers),
        rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
                         "full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0}},
    )
    kw.update(overrides)
    return Gemma3nTextConfig(**kw)


def reference_model(cfg: Gemma3nTextConfig, seed: int, embed_std: float | None = None,
                    gain: float = 1.0, altup_std: float = 0.3) -> Gemma3nForCausalLM:
    """A random model whose weights are varied enough to exercise every op (not the init defaults).

    With the default embedding scale the next-token distribution is nearly flat; embed_std=1
    makes it peaked, as a trained model's is, so that top-1 agreement means something. Matrices
    are N(0, gain^2 / fan_in): at gain 1 a deep random stack is chaotic and amplifies float32
    rounding layer by layer; gain < 1 keeps it tame, as trained networks are. AltUp multiplies
    the streams by (1 + coefficients) in every layer: over 35 layers, altup_std 0.3 grows them
    (and any rounding error) exponentially, so deep models use a smaller one."""
    torch.manual_seed(seed)
    model = Gemma3nForCausalLM(cfg).eval().float()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:   # norms and scales: around 1, so nothing vanishes
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif "altup" in name and ("coefs" in name):
                p.copy_(altup_std * torch.randn_like(p))
            else:
                std = embed_std if (embed_std and name.endswith("embed_tokens.weight")) else gain * p.shape[-1] ** -0.5
                p.copy_(torch.randn_like(p) * std)
    return model


def save_checkpoint(model: Gemma3nForCausalLM, out_dir: str, tokenizer_model: str | None = None,
                    extra_tensors: bool = True) -> None:
    """Save as Gemma3nForConditionalGeneration would: model.language_model.* tensors, a nested config,
    the unused K/V weights of KV-shared layers and a few tower tensors the exporter must skip."""
    os.makedirs(out_dir, exist_ok=True)
    cfg = model.config
    tensors = {}
    for name, t in model.model.state_dict().items():
        tensors[PREFIX + name] = t.detach().float().numpy().copy()
    if extra_tensors:
        rng = np.random.default_rng(0)
        first_shared = cfg.num_hidden_layers - cfg.num_kv_shared_layers
        kv = cfg.num_key_value_heads * cfg.head_dim
        for i in range(first_shared, cfg.num_hidden_layers):
            p = f"{PREFIX}layers.{i}.self_attn."
            tensors[p + "k_proj.weight"] = rng.standard_normal((kv, cfg.hidden_size), np.float32)
            tensors[p + "v_proj.weight"] = rng.standard_normal((kv, cfg.hidden_size), np.float32)
            tensors[p + "k_norm.weight"] = np.ones(cfg.head_dim, np.float32)
        tensors["model.vision_tower.timm_model.conv_stem.conv.weight"] = np.zeros((8, 3, 3, 3), np.float32)
        tensors["model.embed_audio.embedding.weight"] = np.zeros((4, 8), np.float32)
    half = sorted(tensors)[: len(tensors) // 2]
    shards = {"model-00001-of-00002.safetensors": {k: tensors[k] for k in half},
              "model-00002-of-00002.safetensors": {k: v for k, v in tensors.items() if k not in half}}
    weight_map = {}
    for fname, part in shards.items():
        save_file(part, os.path.join(out_dir, fname))
        weight_map.update({k: fname for k in part})
    with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)
    full = {"model_type": "gemma3n", "architectures": ["Gemma3nForConditionalGeneration"],
            "text_config": cfg.to_dict(), "vision_config": {}, "audio_config": {}}
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(full, f, indent=1)
    if tokenizer_model:
        import shutil
        shutil.copyfile(tokenizer_model, os.path.join(out_dir, "tokenizer.model"))


@torch.no_grad()
def reference_logits(model: Gemma3nForCausalLM, ids: list[int]) -> np.ndarray:
    """Last-position logits of the reference for the whole prompt at once, float32 [vocab]."""
    out = model(input_ids=torch.tensor([ids]), use_cache=False)
    return out.logits[0, -1].float().numpy()


@torch.no_grad()
def reference_greedy(model: Gemma3nForCausalLM, ids: list[int], n: int) -> list[int]:
    out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, min_new_tokens=n,
                         eos_token_id=None, pad_token_id=0)
    return out[0, len(ids):].tolist()
