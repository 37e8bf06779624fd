"""A GGUF file (llama.cpp's format) read as if it were a Hugging Face checkpoint.

Tensors are dequantized one at a time (Q4_K, Q5_0, Q6_K, Q8_0, F16, F32 and the other types the
`gguf` package knows), renamed back to the Hugging Face layout, and have the GGUF converter's
conventions undone (Gemma 3 norms are stored with +1 folded in; GGUF lists shapes innermost
first). The config and the SentencePiece tokenizer are rebuilt from the GGUF metadata.
"""
from __future__ import annotations

import math
import os
import tempfile

import numpy as np

from gemma3n_rt.errors import Gemma3nError
from .checkpoint import Lazy, TensorSource

SP_UNKNOWN, SP_USER_DEFINED = 2, 4
ARCHS = ("gemma3", "gemma3n")


def _hf_to_gguf_names(arch: str, config: dict) -> dict[str, str]:
    """Hugging Face tensor name -> GGUF name, from the gguf package's own name map (the one
    llama.cpp's converter uses), for every tensor the exporter expects."""
    import gguf
    from .hf_config import parse_gemma3, parse_gemma3n
    from .gemma3_decoder import gemma3_tensor_shapes
    from .text_decoder import text_tensor_shapes
    if arch == "gemma3":
        keys = gemma3_tensor_shapes(parse_gemma3(config))
    else:
        keys = text_tensor_shapes(parse_gemma3n(config))
    tmap = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, arch.upper()), config["num_hidden_layers"])
    out = {}
    for key in keys:
        if key.startswith(("altup_projections.", "altup_unembed_projections.")):
            continue   # stacked into one GGUF tensor, see GGUFCheckpoint
        suffix = "" if key.endswith("correct_output_scale") else ".weight"
        name = tmap.get_name("model." + key)
        if name is None:
            raise AssertionError(f"no GGUF name for {key}")
        out["model." + key + suffix] = name + ".weight"
    return out


class GGUFCheckpoint(TensorSource):
    def __init__(self, path: str):
        super().__init__()
        import gguf
        self.dir = os.fspath(path)
        try:
            self.reader = gguf.GGUFReader(self.dir)
        except (ValueError, OSError, KeyError, IndexError) as e:   # IndexError: a record cut short
            raise Gemma3nError(f"{self.dir}: not a readable GGUF file ({e})") from None
        self._dequantize = gguf.quants.dequantize
        arch = self.field("general.architecture")
        if arch not in ARCHS:
            raise Gemma3nError(f"{self.dir}: GGUF architecture {arch!r} is not supported (this exporter reads "
                               f"{', '.join(ARCHS)})")
        self.arch = arch
        by_gguf = {t.name: t for t in self.reader.tensors}
        try:
            self.config = self._gemma3_config(by_gguf) if arch == "gemma3" else self._gemma3n_config(by_gguf)
        except KeyError as e:
            raise Gemma3nError(f"{self.dir}: GGUF file lacks tensor {e}") from None
        except (TypeError, ValueError) as e:
            raise Gemma3nError(f"{self.dir}: GGUF metadata has a value of the wrong kind ({e})") from None
        self.tensors = {}       # Hugging Face name -> (GGUF tensor, index into a stacked tensor or None)
        for hf, name in _hf_to_gguf_names(arch, self.config).items():
            if name in by_gguf:
                self.tensors[hf] = (by_gguf.pop(name), None)
        if arch == "gemma3n":   # the converter stacks the 3 AltUp (un)embedding projections
            for stacked, key in (("altup_proj.weight", "altup_projections"), ("altup_unembd_proj.weight", "altup_unembed_projections")):
                if stacked in by_gguf:
                    t = by_gguf.pop(stacked)
                    for k in range(int(t.shape[2])):
                        self.tensors[f"model.{key}.{k}.weight"] = (t, k)
        if "output.weight" in by_gguf:     # an untied head; the models here tie it to the embedding
            self.tensors["lm_head.weight"] = (by_gguf.pop("output.weight"), None)
        for name in sorted(by_gguf):
            self.tensors[f"gguf:{name}"] = (by_gguf[name], None)   # unknown: finish() names it
        self.tokenizer_path = self._write_tokenizer()

    # -- metadata -----------------------------------------------------------------------------
    def field(self, key: str, default=None):
        f = self.reader.fields.get(key)
        if f is None:
            if default is None:
                raise Gemma3nError(f"{self.dir}: GGUF metadata lacks {key}")
            return default
        return f.contents()

    def _gemma3_config(self, by_gguf) -> dict:
        a = "gemma3."
        if self.field(a + "rope.scaling.type", "none") not in ("none", None):
            raise Gemma3nError(f"{self.dir}: RoPE scaling {self.field(a + 'rope.scaling.type')!r} is not supported")
        layers, hidden = int(self.field(a + "block_count")), int(self.field(a + "embedding_length"))
        heads, head_dim = int(self.field(a + "attention.head_count")), int(self.field(a + "attention.key_length"))
        return {
            "model_type": "gemma3_text",
            "vocab_size": int(by_gguf["token_embd.weight"].shape[1]),
            "hidden_size": hidden, "intermediate_size": int(self.field(a + "feed_forward_length")),
            "num_hidden_layers": layers, "num_attention_heads": heads,
            "num_key_value_heads": int(self.field(a + "attention.head_count_kv")), "head_dim": head_dim,
            # llama.cpp's rule: the 27B model (62 layers) scales by hidden/heads, the others by head_dim
            "query_pre_attn_scalar": hidden // heads if layers == 62 else head_dim,
            "sliding_window": int(self.field(a + "attention.sliding_window")), "sliding_window_pattern": 6,
            "rms_norm_eps": float(self.field(a + "attention.layer_norm_rms_epsilon")),
            "rope_theta": float(self.field(a + "rope.freq_base")), "rope_local_base_freq": 10_000.0,
            "max_position_embeddings": int(self.field(a + "context_length")),
            "final_logit_softcapping": self.field(a + "final_logit_softcapping", 0.0) or None,
        }

    def _gemma3n_config(self, by_gguf) -> dict:
        a = "gemma3n."
        layers = int(self.field(a + "block_count"))
        ffn = self.field(a + "feed_forward_length")
        ffn = [int(x) for x in ffn] if isinstance(ffn, list) else [int(ffn)] * layers
        # the converter stores Φ⁻¹(sparsity) per layer (-inf for dense layers); undo it
        scales = self.field(a + "activation_sparsity_scale")
        sparsity = [0.0 if not math.isfinite(x) else round(0.5 * (1 + math.erf(x / math.sqrt(2))), 6) for x in scales]
        swa = self.field(a + "attention.sliding_window_pattern")
        ple_rows = by_gguf["per_layer_token_embd.weight"]
        return {
            "model_type": "gemma3n_text",
            "vocab_size": int(by_gguf["token_embd.weight"].shape[1]),
            "vocab_size_per_layer_input": self._ple_vocab(ple_rows),
            "hidden_size": int(self.field(a + "embedding_length")), "intermediate_size": ffn,
            "num_hidden_layers": layers, "num_attention_heads": int(self.field(a + "attention.head_count")),
            "num_key_value_heads": int(self.field(a + "attention.head_count_kv")),
            "head_dim": int(self.field(a + "attention.key_length")),
            "hidden_size_per_layer_input": int(self.field(a + "embedding_length_per_layer_input")),
            "num_kv_shared_layers": int(self.field(a + "attention.shared_kv_layers")),
            "altup_num_inputs": int(self.field(a + "altup.num_inputs")),
            "altup_active_idx": int(self.field(a + "altup.active_idx", 0)),
            "laurel_rank": int(by_gguf["blk.0.laurel_l.weight"].shape[1]),
            "activation_sparsity_pattern": sparsity,
            "layer_types": ["sliding_attention" if s else "full_attention" for s in swa],
            "sliding_window": int(self.field(a + "attention.sliding_window")),
            "rms_norm_eps": float(self.field(a + "attention.layer_norm_rms_epsilon")),
            "rope_theta": float(self.field(a + "rope.freq_base")), "rope_local_base_freq": 10_000.0,
            "max_position_embeddings": int(self.field(a + "context_length")),
            "final_logit_softcapping": self.field(a + "final_logit_softcapping", 0.0) or None,
        }

    def _ple_vocab(self, t) -> int:
        """The converter pads the PLE table with zero rows up to the full vocabulary; the real
        table ends where the trailing zero rows begin."""
        rows = int(t.shape[1])
        tail = self._dequantize(t.data[max(0, rows - 512):], t.tensor_type).reshape(-1, int(t.shape[0]))
        nonzero = np.flatnonzero(np.any(tail != 0, axis=1))
        return rows - len(tail) + (int(nonzero[-1]) + 1 if len(nonzero) else 0)

    def _write_tokenizer(self) -> str:
        self._tmp = tempfile.TemporaryDirectory(prefix="gguf-tokenizer-")
        path = os.path.join(self._tmp.name, "tokenizer.model")
        with open(path, "wb") as f:
            f.write(self.sentencepiece_model())
        return path

    def sentencepiece_model(self) -> bytes:
        """Rebuild the SentencePiece model (BPE, byte fallback, no dummy prefix, identity
        normalizer) from the token list, scores and types."""
        from sentencepiece import sentencepiece_model_pb2 as sp
        tokens = self.field("tokenizer.ggml.tokens")
        scores = self.field("tokenizer.ggml.scores")
        types = self.field("tokenizer.ggml.token_type")
        unk = int(self.field("tokenizer.ggml.unknown_token_id"))
        model = sp.ModelProto()
        for i, (piece, score, kind) in enumerate(zip(tokens, scores, types)):
            if kind == SP_USER_DEFINED:   # the converter wrote these with plain spaces: escape them back
                piece = piece.replace(" ", "\u2581")
            p = model.pieces.add()
            p.piece, p.score, p.type = piece, float(score), SP_UNKNOWN if i == unk else int(kind)
        t = model.trainer_spec
        t.model_type = sp.TrainerSpec.BPE
        t.vocab_size = len(tokens)
        t.byte_fallback = 6 in set(types)
        t.unk_id, t.bos_id, t.eos_id = unk, int(self.field("tokenizer.ggml.bos_token_id")), int(self.field("tokenizer.ggml.eos_token_id"))
        t.pad_id = int(self.field("tokenizer.ggml.padding_token_id", -1))
        t.unk_piece, t.bos_piece, t.eos_piece = tokens[t.unk_id], tokens[t.bos_id], tokens[t.eos_id]
        if t.pad_id >= 0:
            t.pad_piece = tokens[t.pad_id]
        n = model.normalizer_spec
        n.name, n.add_dummy_prefix = "identity", bool(self.field("tokenizer.ggml.add_space_prefix", False))
        n.remove_extra_whitespaces, n.escape_whitespaces = False, True
        return model.SerializeToString()

    # -- tensors ------------------------------------------------------------------------------
    def names(self):
        return self.tensors.keys()

    def has(self, name: str) -> bool:
        return name in self.tensors

    def shape(self, name: str) -> tuple[int, ...]:
        t, index = self.tensors[name]
        dims = tuple(int(d) for d in reversed(t.shape))   # GGUF lists dims innermost first
        if index is not None:
            dims = dims[1:]
        if name.endswith("embed_tokens_per_layer.weight"):
            dims = (self.config["vocab_size_per_layer_input"],) + dims[1:]
        return dims

    def dtype(self, name: str) -> str:
        return "F32"   # dequantized

    def _lazy(self, name: str, shape: tuple[int, ...]) -> Lazy:
        t, index = self.tensors[name]
        # Gemma 3's converter stores RMSNorm weights as (1 + w); the Hugging Face layout has w
        shift = np.float32(1.0 if self.arch == "gemma3" and name.endswith("norm.weight") else 0.0)

        def rows(a: int, b: int) -> np.ndarray:
            data = t.data if len(shape) == 1 or index is not None else t.data[a:b]
            out = self._dequantize(data, t.tensor_type).astype(np.float32)
            if index is not None:
                out = out.reshape((-1,) + shape)[index][a:b]
            return out.reshape((-1,) + shape[1:]) - shift

        return Lazy(name, shape, lambda: rows(0, shape[0]), rows)
