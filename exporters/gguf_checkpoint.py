"""A GGUF file (llama.cpp's format) read as if it were a Hugging Face checkpoint.

Tensors are dequantized one at a time (Q4_K, Q5_0, Q6_K, Q8_0, F16, F32 and the other types the
`gguf` package knows), renamed back to the Hugging Face layout, and have the GGUF converter's
conventions undone (Gemma 3 norms are stored with +1 folded in; GGUF lists shapes innermost
first). The config and the SentencePiece tokenizer are rebuilt from the GGUF metadata.
"""
from __future__ import annotations

import os
import tempfile

import numpy as np

from gemma3n_rt.errors import Gemma3nError
from .checkpoint import Lazy, TensorSource

# llama.cpp's Gemma 3 tensor names -> transformers' Gemma3ForCausalLM names
GEMMA3_GLOBAL = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
GEMMA3_BLOCK = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
    "attn_norm": "input_layernorm", "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm", "post_ffw_norm": "post_feedforward_layernorm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
SP_UNKNOWN, SP_USER_DEFINED = 2, 4


def _hf_name(gguf_name: str) -> str | None:
    base, _, suffix = gguf_name.rpartition(".")
    parts = base.split(".")
    if parts[0] == "blk" and len(parts) == 3 and parts[2] in GEMMA3_BLOCK:
        return f"model.layers.{parts[1]}.{GEMMA3_BLOCK[parts[2]]}.{suffix}"
    if len(parts) == 1 and base in GEMMA3_GLOBAL:
        return f"{GEMMA3_GLOBAL[base]}.{suffix}"
    return None


class GGUFCheckpoint(TensorSource):
    def __init__(self, path: str):
        super().__init__()
        import gguf
        self.dir = os.fspath(path)
        try:
            self.reader = gguf.GGUFReader(self.dir)
        except (ValueError, OSError, KeyError) as e:
            raise Gemma3nError(f"{self.dir}: not a readable GGUF file ({e})") from None
        self._dequantize = gguf.quants.dequantize
        arch = self.field("general.architecture")
        if arch != "gemma3":
            raise Gemma3nError(f"{self.dir}: GGUF architecture {arch!r} is not supported (this exporter reads 'gemma3')")
        self.tensors = {}
        for t in self.reader.tensors:
            name = _hf_name(t.name)
            if name is None:
                raise Gemma3nError(f"{self.dir}: unexpected GGUF tensor {t.name}")
            self.tensors[name] = t
        self.config = self._gemma3_config()
        self.tokenizer_path = self._write_tokenizer()

    # -- metadata -----------------------------------------------------------------------------
    def field(self, key: str, default=None):
        f = self.reader.fields.get(key)
        if f is None:
            if default is None:
                raise Gemma3nError(f"{self.dir}: GGUF metadata lacks {key}")
            return default
        return f.contents()

    def _gemma3_config(self) -> dict:
        a = "gemma3."
        if self.field(a + "rope.scaling.type", "none") not in ("none", None):
            raise Gemma3nError(f"{self.dir}: RoPE scaling {self.field(a + 'rope.scaling.type')!r} is not supported")
        layers, hidden = int(self.field(a + "block_count")), int(self.field(a + "embedding_length"))
        heads, head_dim = int(self.field(a + "attention.head_count")), int(self.field(a + "attention.key_length"))
        return {
            "model_type": "gemma3_text",
            "vocab_size": int(self.tensors["model.embed_tokens.weight"].shape[1]),
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
        return tuple(int(d) for d in reversed(self.tensors[name].shape))   # GGUF lists dims innermost first

    def dtype(self, name: str) -> str:
        return "F32"   # dequantized

    def _lazy(self, name: str, shape: tuple[int, ...]) -> Lazy:
        t = self.tensors[name]
        # Gemma 3's converter stores RMSNorm weights as (1 + w); the Hugging Face layout has w
        shift = np.float32(1.0) if name.endswith("norm.weight") else np.float32(0.0)

        def rows(a: int, b: int) -> np.ndarray:
            data = t.data if len(shape) == 1 else t.data[a:b]
            return self._dequantize(data, t.tensor_type).reshape((-1,) + shape[1:]).astype(np.float32) - shift

        return Lazy(name, shape, lambda: rows(0, shape[0]), rows)
