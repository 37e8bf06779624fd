"""What every Gemma decoder graph shares: graph inputs, RMSNorm, RoPE, masks, grouped-query
attention over the KV caches, and the tied, softcapped LM head of the last position.

Subclasses (one builder per architecture) set `self.caches` (the KV caches, in graph order) and
`self.cache_of` (layer -> cache index) and write the layers. Shape comments use T = tokens in
the chunk, S = past + T.
"""
from __future__ import annotations

import numpy as np

from gemma3n_rt.config import FULL, SLIDING, CacheSpec
from .checkpoint import Lazy
from .onnx_graph import FLOAT, FLOAT16, INT64, MS_DOMAIN, Graph

NEG_INF = float(np.finfo(np.float32).min)


class DecoderGraph:
    caches: list[CacheSpec]
    cache_of: dict[int, int]
    prefill_int8 = False   # prompt chunks: attention and FFN linears as int8 x int8 matmuls (QuantRecipe.prefill_int8)
    kv_cache = "fp32"       # or "fp16": the caches' dtype (see attention())
    every_position = False  # calibration: the final block and norm over every position, the head on the last
    head_input = ""         # set by lm_head(): the normed states the head reads, every position's with every_position

    def __init__(self, src, weights: dict[str, Lazy], graph_name: str):
        self.src, self.w = src, weights
        self.g = Graph(graph_name)

    # -- small pieces -------------------------------------------------------------------------
    def weight(self, key: str) -> str:
        return self.g.weight(key, self.w[key])

    def linear(self, x: str, key: str) -> str:
        return self.g.linear(x, self.w[key], key)

    def one_token(self, x: str) -> str:
        """A boolean scalar: x [T, ...] holds one position (an If condition)."""
        g = self.g
        return g.op("Squeeze", g.op("Equal", g.op("Shape", x, start=0, end=1), g.const([1], np.int64)))

    def mean_last(self, x: str) -> str:
        return self.g.op("ReduceMean", x, self.g.const([-1], np.int64), keepdims=1)

    def rms_norm(self, x: str, key: str | None) -> str:
        """x / sqrt(mean(x^2) + eps), times the stored scale (the exporter has already turned a
        Gemma 3 style (1 + w) into a plain scale)."""
        g = self.g
        ms = self.mean_last(g.op("Pow", x, g.const(2.0)))
        y = g.op("Div", x, g.op("Sqrt", g.op("Add", ms, g.const(self.src.rms_norm_eps))))
        return g.op("Mul", y, self.weight(key)) if key else y

    def rms(self, x: str) -> str:
        return self.g.op("Sqrt", self.mean_last(self.g.op("Pow", x, self.g.const(2.0))))

    # -- inputs, positions, masks -------------------------------------------------------------
    def inputs(self) -> tuple[str, str, list[tuple[str, str]]]:
        g, src = self.g, self.src
        x = g.input("inputs_embeds", FLOAT, ["T", src.hidden_size])
        positions = g.input("positions", INT64, ["T"])
        past, dtype = [], self.kv_dtype()
        for c, cache in enumerate(self.caches):
            shape = [f"past_{cache.type}", src.num_kv_heads, src.head_dim]
            past.append((g.input(f"past_key.{c}", dtype, shape), g.input(f"past_value.{c}", dtype, shape)))
        return x, positions, past

    def kv_dtype(self) -> int:
        return {"fp32": FLOAT, "fp16": FLOAT16}[self.kv_cache]

    def rope(self, positions: str) -> dict[str, tuple[str, str]]:
        """cos and sin [T, 1, Dh] per layer type (non-interleaved, θ per type)."""
        g, Dh, out = self.g, self.src.head_dim, {}
        for kind in (SLIDING, FULL):
            theta = self.src.rope_theta[kind]
            inv_freq = 1.0 / (theta ** (np.arange(0, Dh, 2, dtype=np.int64).astype(np.float32) / Dh))
            freqs = g.op("Mul", g.op("Unsqueeze", g.op("Cast", positions, to=FLOAT), g.const([1], np.int64)),
                         g.const(inv_freq.astype(np.float32)))                           # [T, Dh/2]
            emb = g.op("Unsqueeze", g.op("Concat", freqs, freqs, axis=-1), g.const([1], np.int64))
            out[kind] = (g.op("Cos", emb), g.op("Sin", emb))
        return out

    def masks(self, positions: str, past) -> dict[str, str]:
        """Additive masks [T, S] per layer type. Cached keys hold contiguous positions that end
        just before positions[0], so key j of S has position positions[0] - past_len + j."""
        g, out = self.g, {}
        q = g.op("Unsqueeze", positions, g.const([1], np.int64))                           # [T, 1]
        first = g.op("Slice", positions, g.const([0], np.int64), g.const([1], np.int64))   # [1]
        t = g.op("Shape", positions)
        for kind in (SLIDING, FULL):
            c = next((i for i, cache in enumerate(self.caches) if cache.type == kind), None)
            if c is None:
                continue
            p = g.op("Shape", past[c][0], start=0, end=1)
            start = g.op("Sub", first, p)
            k = g.op("Add", g.op("Range", g.const(0, np.int64), g.op("Squeeze", g.op("Add", p, t)), g.const(1, np.int64)),
                     start)                                                                # [S]
            k = g.op("Unsqueeze", k, g.const([0], np.int64))                               # [1, S]
            ok = g.op("LessOrEqual", k, q)
            if kind == SLIDING:
                ok = g.op("And", ok, g.op("Greater", k, g.op("Sub", q, g.const(self.src.sliding_window, np.int64))))
            out[kind] = g.op("Where", ok, g.const(0.0), g.const(NEG_INF))
        return out

    def apply_rope(self, x: str, cos: str, sin: str) -> str:
        g, half = self.g, self.src.head_dim // 2
        x1, x2 = g.op("Split", x, g.const([half, half], np.int64), axis=-1, outputs=2)
        rotated = g.op("Concat", g.op("Neg", x2), x1, axis=-1)
        return g.op("Add", g.op("Mul", x, cos), g.op("Mul", rotated, sin))

    # -- attention ----------------------------------------------------------------------------
    def attention(self, x: str, layer: int, rope, masks, past, kv, scale: float = 1.0, v_norm: bool = True) -> str:
        """Self-attention of `layer` over its cache. A layer that owns its cache writes the chunk's
        K (after k_norm and RoPE) and V (after the weightless v_norm, if any) as outputs; a
        KV-shared layer reuses what its source layer built. fp16 caches: K and V are rounded to
        float16 before any position reads them, so a chunk's positions read what later steps will
        (the logits do not depend on how a prompt was cut into chunks); the concatenated cache is
        transposed as float16 and only then widened to float32 (half the bytes through Concat and
        Transpose). Keys stay [KV, S, Dh] like the values, a copy of whole Dh rows, and the scores
        read them transposed (FusedMatMul transB): transposing every element to [KV, Dh, S] took
        0.22 ms a layer at 513 cached positions (E2B, 2 threads), a tenth of a 2048-position step."""
        g, src = self.g, self.src
        H, KV, Dh = src.num_attention_heads, src.num_kv_heads, src.head_dim
        kind = src.layer_types[layer]
        cos, sin = rope[kind]
        p = f"layers.{layer}.self_attn."
        c = self.cache_of[layer]
        owns_cache = self.caches[c].source_layer == layer
        projected = self.projections(x, [p + "q_proj"] + ([p + "k_proj", p + "v_proj"] if owns_cache else []))
        q = g.op("Reshape", projected[0], g.const([0, H, Dh], np.int64))
        q = self.apply_rope(self.rms_norm(q, p + "q_norm"), cos, sin)                      # [T, H, Dh]
        if owns_cache:
            k = g.op("Reshape", projected[1], g.const([0, KV, Dh], np.int64))
            k = self.apply_rope(self.rms_norm(k, p + "k_norm"), cos, sin)                  # [T, KV, Dh]
            v = g.op("Reshape", projected[2], g.const([0, KV, Dh], np.int64))
            if v_norm:
                v = self.rms_norm(v, None)
            dtype = self.kv_dtype()
            if dtype != FLOAT:
                k, v = g.op("Cast", k, to=dtype), g.op("Cast", v, to=dtype)
            g.output(k, f"new_key.{c}", dtype, ["T", KV, Dh])
            g.output(v, f"new_value.{c}", dtype, ["T", KV, Dh])
            keys = g.op("Transpose", g.op("Concat", past[c][0], k, axis=0), perm=[1, 0, 2])
            values = g.op("Transpose", g.op("Concat", past[c][1], v, axis=0), perm=[1, 0, 2])
            if dtype != FLOAT:
                keys, values = g.op("Cast", keys, to=FLOAT), g.op("Cast", values, to=FLOAT)
            unsq = g.const([1], np.int64)
            keys, values = g.op("Unsqueeze", keys, unsq), g.op("Unsqueeze", values, unsq)
            kv[c] = (keys, values)                                                          # [KV, 1, S, Dh] each
        keys, values = kv[c]
        # Query heads grouped by the KV head they read: head h uses KV head h // (H / KV).
        group = H // KV
        qg = g.op("Transpose", g.op("Reshape", q, g.const([0, KV, group, Dh], np.int64)), perm=[1, 2, 0, 3])
        scores = g.op("FusedMatMul", qg, keys, domain=MS_DOMAIN, transB=1, alpha=scale)        # [KV, G, T, S]
        probs = g.op("Softmax", g.op("Add", scores, masks[kind]), axis=-1)
        out = g.op("MatMul", probs, values)                                                 # [KV, G, T, Dh]
        out = g.op("Reshape", g.op("Transpose", out, perm=[2, 0, 1, 3]), g.const([0, H * Dh], np.int64))
        return self.projections(out, [p + "o_proj"])[0]

    def projections(self, x: str, keys: list[str]) -> list[str]:
        """x @ W.T for the weights `keys` (one If for all of them with `prefill_int8`)."""
        return self.int8_prompts(x, lambda int8_matmul: [self.g.linear(x, self.w[k], k, int8_matmul=int8_matmul)
                                                         for k in keys])

    def int8_prompts(self, x: str, build):
        """build(int8_matmul=False); with `prefill_int8`, an If on x's length: one position takes
        that, a prompt chunk build(True), its linears as int8 x int8 matmuls."""
        if not self.prefill_int8:
            return build(False)
        return self.g.cond(self.one_token(x), lambda: build(False), lambda: build(True))

    # -- output -------------------------------------------------------------------------------
    def lm_head(self, h: str) -> None:
        """norm, the tied LM head and the softcap on the last position's hidden state [1, D]
        (h from last_position())."""
        g, src = self.g, self.src
        h = self.head_input = self.rms_norm(h, "norm")
        if self.every_position:
            h = self._slice_last(h)
        logits = g.linear(h, self.w["embed_tokens"], "lm_head")
        cap = src.final_logit_softcapping
        if cap:
            logits = g.op("Mul", g.op("Tanh", g.op("Div", logits, g.const(cap))), g.const(cap))
        g.output(g.op("Reshape", logits, g.const([src.vocab_size], np.int64)), "logits", FLOAT, [src.vocab_size])

    def last_position(self, x: str) -> str:
        """x's last position; with every_position all of x (lm_head() slices after the norm)."""
        return x if self.every_position else self._slice_last(x)

    def _slice_last(self, x: str) -> str:
        g = self.g
        return g.op("Slice", x, g.const([-1], np.int64), g.const([2**62], np.int64), g.const([0], np.int64))
