"""Frozen configs, read once from the bundle manifest. The runtime never guesses: every fact it
needs about the model was written there by the exporter."""
from __future__ import annotations

from dataclasses import MISSING, dataclass, fields

from .errors import Gemma3nError

SLIDING, FULL = "sliding", "full"


def _from_dict(cls, d: dict, where: str):
    names = {f.name for f in fields(cls)}
    missing = {f.name for f in fields(cls) if f.default is MISSING} - d.keys()
    if missing:
        raise Gemma3nError(f"{where}: missing keys {sorted(missing)}")
    return cls(**{k: v for k, v in d.items() if k in names})


@dataclass(frozen=True)
class TextConfig:
    """The decoder as a whole (the full checkpoint, before any MatFormer slicing)."""
    architecture: str                 # "gemma3n"
    hidden_size: int
    num_layers: int
    vocab_size: int                   # rows of the token embedding (and logits)
    vocab_size_per_layer_input: int   # rows of the PLE table; ids at or above it use PLE row 0
    hidden_size_per_layer_input: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    sliding_window: int
    max_position_embeddings: int
    embed_scale: float                # sqrt(hidden_size), rounded to the checkpoint's dtype
    per_layer_embed_scale: float      # sqrt(hidden_size_per_layer_input)
    layer_types: tuple[str, ...]      # SLIDING or FULL per original layer index
    final_logit_softcapping: float
    rms_norm_eps: float

    @classmethod
    def from_dict(cls, d: dict) -> "TextConfig":
        cfg = _from_dict(cls, d, "manifest text_config")
        return cls(**{**cfg.__dict__, "layer_types": tuple(cfg.layer_types)})


@dataclass(frozen=True)
class CacheSpec:
    """One KV cache of a slice. Sliding caches keep only the last `sliding_window - 1` positions."""
    type: str            # SLIDING or FULL
    source_layer: int    # original index of the layer that writes it


@dataclass(frozen=True)
class SliceSpec:
    """One MatFormer model in the bundle's catalog and the decoder graph that runs it."""
    name: str
    graph: str                         # path of the decoder graph, relative to the bundle
    layers: tuple[int, ...]            # original indices of the kept layers, in order
    ffn_widths: tuple[int, ...]        # per kept layer
    caches: tuple[CacheSpec, ...]
    effective_params: int              # decoder parameters without the two embedding tables
    weight_bytes: int                  # decoder weights (LM head included) the graph loads
    published_mmlu: float | None = None   # Google's MMLU (pre-trained) for published slices

    @classmethod
    def from_dict(cls, d: dict) -> "SliceSpec":
        s = _from_dict(cls, d, f"manifest slice {d.get('name', '?')!r}")
        caches = tuple(_from_dict(CacheSpec, c, f"slice {s.name} cache") for c in s.caches)
        return cls(**{**s.__dict__, "layers": tuple(s.layers), "ffn_widths": tuple(s.ffn_widths),
                      "caches": caches})

