"""Frozen configs, read once from the bundle manifest. The runtime never guesses: every fact it
needs about the model was written there by the exporter."""
from __future__ import annotations

from dataclasses import MISSING, dataclass, fields

from .errors import Gemma3nError

SLIDING, FULL = "sliding", "full"
KV_CACHES = ("fp16", "fp32")     # the KV caches' dtypes (kvcache.DTYPES)


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
    gathered_bytes: int = 0            # of those, read only by row gathers: mapped, never prepacked

    @classmethod
    def from_dict(cls, d: dict) -> "SliceSpec":
        s = _from_dict(cls, d, f"manifest slice {d.get('name', '?')!r}")
        caches = tuple(_from_dict(CacheSpec, c, f"slice {s.name} cache") for c in s.caches)
        return cls(**{**s.__dict__, "layers": tuple(s.layers), "ffn_widths": tuple(s.ffn_widths),
                      "caches": caches})



@dataclass(frozen=True)
class Quantization:
    decoder: str                 # "int4", "int8" or "fp32"
    block_size: int | None       # int4/int8 block along the input dimension
    tables: str                  # row tables: "int8", "fp16" or "fp32"
    head_rescore: int = 0        # the graph also outputs "hidden"; recompute its top logits (head.py)
    kv_cache: str = "fp32"       # the KV caches' dtype, "fp32" or "fp16" (absent in older bundles: fp32)

    @classmethod
    def from_dict(cls, d: dict) -> "Quantization":
        q = _from_dict(cls, d, "manifest quantization")
        if q.kv_cache not in KV_CACHES:
            raise Gemma3nError(f"manifest quantization: kv_cache must be one of {', '.join(KV_CACHES)}, got {q.kv_cache!r}")
        return q


@dataclass(frozen=True)
class RowTables:
    embed: str                   # token embedding row table
    ple: str | None = None       # per-layer embeddings (Gemma 3n only)

    @classmethod
    def from_dict(cls, d: dict) -> "RowTables":
        return _from_dict(cls, d, "manifest row_tables")


@dataclass(frozen=True)
class VisionConfig:
    """The image encoder and the ids of the image prompt block (FORMAT.md, "vision")."""
    encoder: str                 # graph: pixels [N, 3, S, S] in [0, 1] -> soft embeddings [N, tokens_per_image, D]
    hard_embeddings: str         # row table [vocab_size, 1, D]: embed_vision's hard path for ids vocab_offset + i
    vocab_offset: int            # first vision id (262144)
    vocab_size: int              # vision ids (128)
    image_size: int              # S (768)
    tokens_per_image: int        # 256
    begin_id: int                # <start_of_image>, an ordinary text token
    end_id: int                  # <end_of_image>, a vision id
    soft_id: int                 # <image_soft_token>, replaced by the soft embeddings
    quant: str                   # encoder weights: "fp32" or "int8"
    weight_bytes: int            # encoder weights resident once loaded
    params: int

    @classmethod
    def from_dict(cls, d: dict) -> "VisionConfig":
        return _from_dict(cls, d, "manifest vision")


@dataclass(frozen=True)
class AudioFeatureConfig:
    """Gemma3nAudioFeatureExtractor's settings, as the checkpoint's preprocessor uses them."""
    sample_rate: int = 16_000
    num_mel_bins: int = 128
    frame_length: int = 512
    hop_length: int = 160
    fft_length: int = 1024
    min_frequency: float = 125.0
    max_frequency: float = 7600.0
    preemphasis: float = 0.97
    mel_floor: float = 1e-5
    pad_to_multiple_of: int = 128

    @classmethod
    def from_dict(cls, d: dict) -> "AudioFeatureConfig":
        return _from_dict(cls, d, "manifest audio feature")


@dataclass(frozen=True)
class AudioConfig:
    """The audio encoder and the ids of the audio prompt block (FORMAT.md, "audio")."""
    encoder: str                 # graph: features [N, T, mel] + mask [N, T] (True = valid) -> [N, tokens_per_clip, D]
    hard_embeddings: str         # row table [vocab_size, 1, D]: embed_audio's hard path for ids vocab_offset + i
    vocab_offset: int            # first audio id (262272)
    vocab_size: int              # audio ids (128)
    max_samples: int             # one clip: 30 s at 16 kHz (480000)
    tokens_per_clip: int         # 188
    begin_id: int                # <start_of_audio>
    end_id: int                  # <end_of_audio>
    soft_id: int                 # <audio_soft_token>
    quant: str
    weight_bytes: int
    params: int
    feature: AudioFeatureConfig = AudioFeatureConfig()

    @classmethod
    def from_dict(cls, d: dict) -> "AudioConfig":
        cfg = _from_dict(cls, d, "manifest audio")
        return cls(**{**cfg.__dict__, "feature": AudioFeatureConfig.from_dict(d.get("feature", {}))})
