"""Gemma 3n's Hugging Face config.json, read once and checked. Checkpoint quirks (old and new
RoPE keys, nested or flat text config, tensor prefixes) are resolved here and nowhere else."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from gemma3n_rt.config import FULL, SLIDING, TextConfig
from gemma3n_rt.errors import Gemma3nError

LAYER_TYPES = {"sliding_attention": SLIDING, "full_attention": FULL}
# Embedding scales are rounded to the weight dtype, as the reference does (bf16: 45.25, not 45.2548).
def _round_bf16(x: float) -> float:
    bits = int(np.array(x, np.float32).view(np.uint32))
    bits = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
    return float(np.array(bits, np.uint32).view(np.float32))


def round_to_dtype(x: float, dtype: str) -> float:
    if dtype == "BF16":
        return _round_bf16(x)
    if dtype == "F16":
        return float(np.float16(x))
    return float(np.float32(x))


@dataclass(frozen=True)
class Gemma3nSource:
    """Everything the graph builder needs to know about a Gemma 3n text decoder."""
    prefix: str                        # tensor-name prefix of the text model, e.g. "model.language_model."
    hidden_size: int
    num_layers: int
    vocab_size: int
    vocab_size_per_layer_input: int
    hidden_size_per_layer_input: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_sizes: tuple[int, ...]
    activation_sparsity: tuple[float, ...]
    num_kv_shared_layers: int
    layer_types: tuple[str, ...]
    sliding_window: int
    rope_theta: dict                   # {SLIDING: θ, FULL: θ}
    rms_norm_eps: float
    final_logit_softcapping: float
    laurel_rank: int
    altup_num_inputs: int
    max_position_embeddings: int
    embed_dtype: str                   # dtype of embed_tokens in the checkpoint

    def kv_source(self) -> list[int]:
        """For each layer, the layer whose K/V it attends over (itself unless KV-shared)."""
        first_shared = self.num_layers - self.num_kv_shared_layers
        src = []
        for i, t in enumerate(self.layer_types):
            if i < first_shared:
                src.append(i)
            else:
                own = [j for j in range(first_shared) if self.layer_types[j] == t]
                if not own:
                    raise Gemma3nError(f"config: no unshared {t} layer to share K/V with layer {i}")
                src.append(own[-1])
        return src

    def text_config(self) -> TextConfig:
        return TextConfig(
            architecture="gemma3n", hidden_size=self.hidden_size, num_layers=self.num_layers,
            vocab_size=self.vocab_size, vocab_size_per_layer_input=self.vocab_size_per_layer_input,
            hidden_size_per_layer_input=self.hidden_size_per_layer_input,
            num_attention_heads=self.num_attention_heads, num_kv_heads=self.num_kv_heads, head_dim=self.head_dim,
            sliding_window=self.sliding_window, max_position_embeddings=self.max_position_embeddings,
            embed_scale=round_to_dtype(math.sqrt(self.hidden_size), self.embed_dtype),
            per_layer_embed_scale=round_to_dtype(math.sqrt(self.hidden_size_per_layer_input), self.embed_dtype),
            layer_types=self.layer_types, final_logit_softcapping=self.final_logit_softcapping,
            rms_norm_eps=self.rms_norm_eps)


# Ceilings far above any Gemma (E4B: 35 layers, width 2048, vocabulary 262,400), so that an absurd
# config.json is refused before any list, graph or tensor is sized by it.
LIMITS = {"num_hidden_layers": 1024, "hidden_size": 1 << 16, "intermediate_size": 1 << 20, "vocab_size": 1 << 24,
          "vocab_size_per_layer_input": 1 << 24, "hidden_size_per_layer_input": 1 << 16, "num_attention_heads": 1024,
          "num_key_value_heads": 1024, "head_dim": 1 << 16, "laurel_rank": 1 << 16, "altup_num_inputs": 64,
          "num_kv_shared_layers": 1024, "sliding_window": 1 << 24, "sliding_window_pattern": 1024,
          "max_position_embeddings": 1 << 24}


def _whole(value, key: str, low: int = 1) -> int:
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        value = int(value)
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or not low <= value <= LIMITS[key]:
        raise Gemma3nError(f"config.json: {key} must be a whole number from {low} to {LIMITS[key]}, got {value!r}")
    return int(value)


def _real(value, key: str, low: float, high: float) -> float:
    if not isinstance(value, (int, float, np.integer, np.floating)) or isinstance(value, bool) \
            or not low <= value <= high:     # nan fails the comparison
        raise Gemma3nError(f"config.json: {key} must be a number from {low} to {high}, got {value!r}")
    return float(value)


def _per_layer(value, n: int, key: str) -> tuple:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise Gemma3nError(f"config.json: {key} has {len(value)} entries for {n} layers")
        return tuple(value)
    return (value,) * n


def parse_gemma3n(config: dict, ckpt=None) -> Gemma3nSource:
    """Read a Gemma 3n config.json (multimodal with text_config, or text-only). Without a
    checkpoint, the tensors are assumed to be float32 under model.language_model."""
    model_type = config.get("model_type")
    if model_type == "gemma3n":
        text = config.get("text_config")
        if not isinstance(text, dict):
            raise Gemma3nError("config.json: model_type gemma3n but no text_config")
    elif model_type == "gemma3n_text":
        text = config
    else:
        raise Gemma3nError(f"config.json: model_type is {model_type!r}, not a Gemma 3n checkpoint (expected 'gemma3n')")
    prefix = "model.language_model." if ckpt is None else next(
        (p for p in ("model.language_model.", "model.", "language_model.model.", "") if ckpt.has(p + "embed_tokens.weight")),
        None)
    if prefix is None:
        raise Gemma3nError(f"checkpoint {ckpt.dir}: missing tensor model.language_model.embed_tokens.weight")

    def get(key, default=None):
        if key in text:
            return text[key]
        if default is None:
            raise Gemma3nError(f"config.json: text config lacks {key!r}")
        return default

    n = _whole(get("num_hidden_layers", 35), "num_hidden_layers")
    types = get("layer_types", ["full_attention" if (i + 1) % 5 == 0 else "sliding_attention" for i in range(n)])
    if not isinstance(types, list) or len(types) != n or any(t not in LAYER_TYPES for t in types):
        raise Gemma3nError(f"config.json: layer_types must list {n} of {sorted(LAYER_TYPES)}")
    rope = text.get("rope_parameters") or {}
    theta = {SLIDING: rope.get("sliding_attention", {}).get("rope_theta", text.get("rope_local_base_freq", 10_000.0)),
             FULL: rope.get("full_attention", {}).get("rope_theta", text.get("rope_theta", 1_000_000.0))}
    for p in rope.values():
        if isinstance(p, dict) and p.get("rope_type", "default") != "default":
            raise Gemma3nError(f"config.json: rope_type {p['rope_type']!r} is not supported (only 'default')")
    if text.get("rope_scaling"):
        raise Gemma3nError("config.json: rope_scaling is not supported")
    if get("hidden_activation", "gelu_pytorch_tanh") != "gelu_pytorch_tanh":
        raise Gemma3nError(f"config.json: hidden_activation {text['hidden_activation']!r} is not supported")
    if get("altup_active_idx", 0) != 0 or not get("altup_correct_scale", True):
        raise Gemma3nError("config.json: only altup_active_idx 0 with altup_correct_scale true is supported")
    sparsity = text.get("activation_sparsity_pattern")
    if sparsity is None:
        sparsity = [0.95] * min(10, n) + [0.0] * max(0, n - 10) if n > 10 else [0.0] * n
    softcap = text.get("final_logit_softcapping")
    hidden = _whole(get("hidden_size", 2048), "hidden_size")
    heads = _whole(get("num_attention_heads", 8), "num_attention_heads")
    return Gemma3nSource(
        prefix=prefix, hidden_size=hidden, num_layers=n,
        vocab_size=_whole(get("vocab_size", 262_400), "vocab_size"),
        vocab_size_per_layer_input=_whole(get("vocab_size_per_layer_input", 262_144), "vocab_size_per_layer_input"),
        hidden_size_per_layer_input=_whole(get("hidden_size_per_layer_input", 256), "hidden_size_per_layer_input"),
        num_attention_heads=heads, num_kv_heads=_whole(get("num_key_value_heads", 2), "num_key_value_heads"),
        head_dim=_whole(text.get("head_dim") or hidden // heads, "head_dim"),
        intermediate_sizes=tuple(_whole(x, "intermediate_size")
                                 for x in _per_layer(get("intermediate_size", 16_384), n, "intermediate_size")),
        activation_sparsity=tuple(_real(x, "activation_sparsity_pattern", 0.0, 1.0) for x in
                                  _per_layer(sparsity, n, "activation_sparsity_pattern")),
        num_kv_shared_layers=_whole(get("num_kv_shared_layers", 15), "num_kv_shared_layers", low=0),
        layer_types=tuple(LAYER_TYPES[t] for t in types),
        sliding_window=_whole(get("sliding_window", 512), "sliding_window"), rope_theta=theta,
        rms_norm_eps=_real(get("rms_norm_eps", 1e-6), "rms_norm_eps", 0.0, 1.0),
        final_logit_softcapping=_real(softcap, "final_logit_softcapping", 0.0, 1e6) if softcap else 0.0,
        laurel_rank=_whole(get("laurel_rank", 64), "laurel_rank"),
        altup_num_inputs=_whole(get("altup_num_inputs", 4), "altup_num_inputs"),
        max_position_embeddings=_whole(get("max_position_embeddings", 32_768), "max_position_embeddings"),
        embed_dtype="F32" if ckpt is None else ckpt.dtype(prefix + "embed_tokens.weight"))


@dataclass(frozen=True)
class Gemma3Source:
    """A Gemma 3 text decoder (Gemma3ForCausalLM): no AltUp, LAuReL or PLE; RMSNorm scales are
    (1 + w); attention scaled by query_pre_attn_scalar^-0.5; one KV cache per layer."""
    prefix: str
    hidden_size: int
    num_layers: int
    vocab_size: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    layer_types: tuple[str, ...]
    sliding_window: int
    rope_theta: dict
    rms_norm_eps: float
    final_logit_softcapping: float
    query_pre_attn_scalar: float
    max_position_embeddings: int
    embed_dtype: str

    def text_config(self) -> TextConfig:
        return TextConfig(
            architecture="gemma3", hidden_size=self.hidden_size, num_layers=self.num_layers,
            vocab_size=self.vocab_size, vocab_size_per_layer_input=0, hidden_size_per_layer_input=0,
            num_attention_heads=self.num_attention_heads, num_kv_heads=self.num_kv_heads, head_dim=self.head_dim,
            sliding_window=self.sliding_window, max_position_embeddings=self.max_position_embeddings,
            embed_scale=round_to_dtype(math.sqrt(self.hidden_size), self.embed_dtype), per_layer_embed_scale=0.0,
            layer_types=self.layer_types, final_logit_softcapping=self.final_logit_softcapping,
            rms_norm_eps=self.rms_norm_eps)


def parse_gemma3(config: dict, ckpt=None) -> Gemma3Source:
    """Read a Gemma 3 config.json: text-only (gemma3_text) or multimodal (gemma3, text_config)."""
    text = config.get("text_config") if config.get("model_type") == "gemma3" else config
    if not isinstance(text, dict):
        raise Gemma3nError("config.json: model_type gemma3 but no text_config")
    prefix = "model." if ckpt is None else next(
        (p for p in ("model.", "model.language_model.", "language_model.model.") if ckpt.has(p + "embed_tokens.weight")),
        None)
    if prefix is None:
        raise Gemma3nError(f"checkpoint {ckpt.dir}: missing tensor model.embed_tokens.weight")

    def get(key, default=None):
        if text.get(key) is not None:
            return text[key]
        if default is None:
            raise Gemma3nError(f"config.json: text config lacks {key!r}")
        return default

    n = _whole(get("num_hidden_layers"), "num_hidden_layers")
    pattern = _whole(get("sliding_window_pattern", 6), "sliding_window_pattern")
    types = get("layer_types", ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(n)])
    if not isinstance(types, list) or len(types) != n or any(t not in LAYER_TYPES for t in types):
        raise Gemma3nError(f"config.json: layer_types must list {n} of {sorted(LAYER_TYPES)}")
    rope = text.get("rope_parameters") or {}
    for p in rope.values():
        if isinstance(p, dict) and p.get("rope_type", "default") != "default":
            raise Gemma3nError(f"config.json: rope_type {p['rope_type']!r} is not supported (only 'default')")
    if text.get("rope_scaling"):
        raise Gemma3nError("config.json: rope_scaling is not supported")
    if text.get("attn_logit_softcapping"):
        raise Gemma3nError("config.json: attn_logit_softcapping is not supported")
    theta = {SLIDING: rope.get("sliding_attention", {}).get("rope_theta", text.get("rope_local_base_freq", 10_000.0)),
             FULL: rope.get("full_attention", {}).get("rope_theta", text.get("rope_theta", 1_000_000.0))}
    hidden, heads = _whole(get("hidden_size"), "hidden_size"), _whole(get("num_attention_heads"), "num_attention_heads")
    head_dim = _whole(text.get("head_dim") or hidden // heads, "head_dim")
    return Gemma3Source(
        prefix=prefix, hidden_size=hidden, num_layers=n, vocab_size=_whole(get("vocab_size"), "vocab_size"),
        num_attention_heads=heads, num_kv_heads=_whole(get("num_key_value_heads"), "num_key_value_heads"),
        head_dim=head_dim, intermediate_size=_whole(get("intermediate_size"), "intermediate_size"),
        layer_types=tuple(LAYER_TYPES[t] for t in types), sliding_window=_whole(get("sliding_window", 4096), "sliding_window"),
        rope_theta=theta, rms_norm_eps=_real(get("rms_norm_eps", 1e-6), "rms_norm_eps", 0.0, 1.0),
        final_logit_softcapping=_real(text.get("final_logit_softcapping") or 0.0, "final_logit_softcapping", 0.0, 1e6),
        query_pre_attn_scalar=_real(text.get("query_pre_attn_scalar") or head_dim, "query_pre_attn_scalar", 1e-6, 1e9),
        max_position_embeddings=_whole(get("max_position_embeddings", 32_768), "max_position_embeddings"),
        embed_dtype="F32" if ckpt is None else ckpt.dtype(prefix + "embed_tokens.weight"))


def architecture(config: dict) -> str:
    """'gemma3n' or 'gemma3' from config.json's model_type; anything else is an error."""
    model_type = config.get("model_type")
    if model_type in ("gemma3n", "gemma3n_text"):
        return "gemma3n"
    if model_type in ("gemma3", "gemma3_text"):
        return "gemma3"
    raise Gemma3nError(f"config.json: model_type is {model_type!r}, not a Gemma 3n checkpoint (expected 'gemma3n', "
                       f"or 'gemma3' / 'gemma3_text')")
