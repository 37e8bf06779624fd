"""Graph builder for the Gemma 3n text decoder (one graph per MatFormer slice).

Inputs: the token embeddings (already scaled and merged), the token part of the per-layer inputs
(PLE rows x sqrt(256)), positions and the KV caches; outputs: the softcapped logits of the last
position and the new K/V of this chunk. Op order and names follow transformers' Gemma3n
(see gemma3n-spec.md §1); shape comments use T = tokens in the chunk, S = past + T.
"""
from __future__ import annotations

import math
import re
from statistics import NormalDist
from dataclasses import dataclass, field

import numpy as np

from gemma3n_rt.config import CacheSpec
from .checkpoint import Checkpoint, Lazy
from .decoder_common import DecoderGraph
from .hf_config import Gemma3nSource
from .onnx_graph import FLOAT, Graph


def std_multiplier(sparsity: float) -> float:
    """Φ⁻¹(sparsity) rounded to float32 (1.6448536 for 0.95), as transformers computes the cutoff."""
    return float(np.float32(NormalDist().inv_cdf(sparsity)))


@dataclass(frozen=True)
class SlicePlan:
    name: str
    layers: tuple[int, ...]        # original indices kept
    ffn_widths: tuple[int, ...]    # per kept layer
    meta: dict = field(default_factory=dict, compare=False)   # published figures, for the manifest


def down_chunks(src: Gemma3nSource, plans: list[SlicePlan]) -> dict[int, tuple[int, ...]]:
    """Per layer, the column boundaries that split down_proj so every slice's width is a sum of
    whole chunks (e.g. 0, 8192, 16384): each chunk is stored once and slices add partial products."""
    bounds = {l: {0, src.intermediate_sizes[l]} for l in range(src.num_layers)}
    for plan in plans:
        for l, w in zip(plan.layers, plan.ffn_widths):
            bounds[l].add(w)
    return {l: tuple(sorted(b)) for l, b in bounds.items()}


def text_tensor_shapes(src: Gemma3nSource) -> dict[str, tuple[int, ...]]:
    """Every text tensor the decoder uses (short names, without prefix and ".weight"), with its shape."""
    D, P, L, N = src.hidden_size, src.hidden_size_per_layer_input, src.num_layers, src.altup_num_inputs
    H, KV, Dh, R = src.num_attention_heads, src.num_kv_heads, src.head_dim, src.laurel_rank
    shapes = {
        "embed_tokens": (src.vocab_size, D),
        "embed_tokens_per_layer": (src.vocab_size_per_layer_input, L * P),
        "per_layer_model_projection": (L * P, D),
        "per_layer_projection_norm": (P,),
        "norm": (D,),
        **{f"altup_projections.{k}": (D, D) for k in range(N - 1)},
        **{f"altup_unembed_projections.{k}": (D, D) for k in range(N - 1)},
    }
    kv_source = src.kv_source()
    for i in range(L):
        I = src.intermediate_sizes[i]
        layer = {
            "self_attn.q_proj": (H * Dh, D), "self_attn.o_proj": (D, H * Dh), "self_attn.q_norm": (Dh,),
            "mlp.gate_proj": (I, D), "mlp.up_proj": (I, D), "mlp.down_proj": (D, I),
            "input_layernorm": (D,), "post_attention_layernorm": (D,),
            "pre_feedforward_layernorm": (D,), "post_feedforward_layernorm": (D,),
            "altup.correct_output_scale": (D,), "altup.correction_coefs": (N, N),
            "altup.prediction_coefs": (N * N, N), "altup.modality_router": (N, D), "altup.router_norm": (D,),
            "laurel.linear_left": (R, D), "laurel.linear_right": (D, R), "laurel.post_laurel_norm": (D,),
            "per_layer_input_gate": (P, D), "per_layer_projection": (D, P), "post_per_layer_input_norm": (D,),
        }
        if kv_source[i] == i:
            layer.update({"self_attn.k_proj": (KV * Dh, D), "self_attn.v_proj": (KV * Dh, D), "self_attn.k_norm": (Dh,)})
        shapes.update({f"layers.{i}.{k}": s for k, s in layer.items()})
    return shapes


def effective_params(src: Gemma3nSource, plan: SlicePlan) -> int:
    """Decoder parameters of a slice without the two embedding tables (Google's "effective"
    count, less the unused K/V weights of KV-shared layers)."""
    total = 0
    for key, shape in text_tensor_shapes(src).items():
        if key in ("embed_tokens", "embed_tokens_per_layer"):
            continue
        n = int(np.prod(shape))
        if key.startswith("layers."):
            layer = int(key.split(".")[1])
            if layer not in plan.layers:
                continue
            if ".mlp." in key:
                n = n * plan.ffn_widths[plan.layers.index(layer)] // src.intermediate_sizes[layer]
        elif key == "per_layer_model_projection":
            n = n * len(plan.layers) // src.num_layers
        total += n
    return total


def checkpoint_name(src: Gemma3nSource, key: str) -> str:
    return src.prefix + key + ("" if key.endswith("correct_output_scale") else ".weight")


def take_text_weights(ckpt: Checkpoint, src: Gemma3nSource) -> dict[str, Lazy]:
    """Claim every text tensor with its expected shape; ignore towers and unused shared-layer K/V."""
    weights = {key: ckpt.take(checkpoint_name(src, key), shape) for key, shape in text_tensor_shapes(src).items()}
    # The checkpoint still holds K/V weights for KV-shared layers; they are never used.
    for i, source in enumerate(src.kv_source()):
        if source != i:
            ckpt.ignore(re.escape(src.prefix) + rf"layers\.{i}\.self_attn\.(k_proj|v_proj|k_norm)\.weight")
    ckpt.ignore(r"lm_head\.weight")  # tied to embed_tokens
    return weights


def cache_table(src: Gemma3nSource, plan: SlicePlan) -> tuple[list[CacheSpec], dict[int, int]]:
    """The KV caches a slice needs, and for each kept layer the cache it attends over.

    KV sharing follows the slice: a kept layer past the shared boundary reads the cache of the
    last kept unshared layer of its type (types come from original indices).
    """
    kv_source = src.kv_source()
    caches: list[CacheSpec] = []
    index: dict[int, int] = {}
    for layer in plan.layers:
        source = kv_source[layer]
        if source not in plan.layers:
            raise ValueError(f"slice {plan.name}: layer {layer} shares K/V with skipped layer {source}")
        if source == layer:
            index[layer] = len(caches)
            caches.append(CacheSpec(src.layer_types[layer], layer))
        else:
            index[layer] = index[source]
    return caches, index


class DecoderBuilder(DecoderGraph):
    sparse_decode = True   # one-token steps of sparse FFN layers read only the active rows

    def __init__(self, src: Gemma3nSource, weights: dict[str, Lazy], plan: SlicePlan,
                 chunks: dict[int, tuple[int, ...]] | None = None):
        super().__init__(src, weights, f"gemma3n_decoder_{plan.name}")
        self.plan = plan
        self.chunks = chunks or down_chunks(src, [plan])
        self.caches, self.cache_of = cache_table(src, plan)

    def rms_rescale(self, x: str, target_rms: str) -> str:
        """x scaled to the given RMS; the mean square is clamped at 1e-5 as in the reference."""
        g = self.g
        ms = g.op("Max", self.mean_last(g.op("Pow", x, g.const(2.0))), g.const(1e-5))
        return g.op("Div", g.op("Mul", x, target_rms), g.op("Sqrt", ms))

    def stream(self, H: str, k: int) -> str:
        return self.g.op("Gather", H, self.g.const(k, np.int64), axis=1)  # [T, N, D] -> [T, D]

    # -- the graph ----------------------------------------------------------------------------
    def build(self) -> Graph:
        g, src = self.g, self.src
        Ls, P, N = len(self.plan.layers), src.hidden_size_per_layer_input, src.altup_num_inputs
        x, positions, past = self.inputs()
        ple_tokens = g.input("per_layer_tokens", FLOAT, ["T", Ls, P])

        with g.scope("per_layer_inputs"):
            per_layer = self.per_layer_inputs(x, ple_tokens)
        with g.scope("rope"):
            rope = self.rope(positions)
        with g.scope("mask"):
            masks = self.masks(positions, past)
        with g.scope("altup_init"):
            target = self.rms(x)
            streams = [x] + [self.rms_rescale(self.linear(x, f"altup_projections.{k}"), target) for k in range(N - 1)]
            H = g.op("Concat", *[g.op("Unsqueeze", s, g.const([1], np.int64)) for s in streams], axis=1)  # [T, N, D]

        kv: dict[int, tuple[str, str]] = {}   # cache index -> (K [KV, 1, Dh, S], V [KV, 1, S, Dh])
        for j, layer in enumerate(self.plan.layers):
            with g.scope(f"layers.{layer}"):
                pli = g.op("Gather", per_layer, g.const(j, np.int64), axis=1)  # [T, P]
                H = self.layer(H, layer, j, pli, rope, masks, past, kv)

        with g.scope("final"):
            last = self.last_position(H)
            h0 = self.stream(last, 0)
            target = self.rms(h0)
            outs = [h0] + [self.rms_rescale(self.linear(self.stream(last, k), f"altup_unembed_projections.{k - 1}"), target)
                           for k in range(1, N)]
            self.lm_head(g.op("Div", g.op("Sum", *outs), g.const(float(N))))
        return g

    def per_layer_inputs(self, x: str, ple_tokens: str) -> str:
        """(RMSNorm(x @ W_plp.T * D^-0.5) + PLE token rows) * 2^-0.5, for the kept layers: [T, Ls, P].
        Each run of consecutive kept layers is a range of W_plp's rows: a view, not a copy."""
        g, src, P = self.g, self.src, self.src.hidden_size_per_layer_input
        runs, layers = [], list(self.plan.layers)
        for l in layers:
            if runs and runs[-1][1] == l:
                runs[-1][1] = l + 1
            else:
                runs.append([l, l + 1])
        w = self.w["per_layer_model_projection"]
        parts = [g.linear(x, w, "per_layer_model_projection", None if (a, b) == (0, src.num_layers) else (a * P, b * P))
                 for a, b in runs]
        proj = parts[0] if len(parts) == 1 else g.op("Concat", *parts, axis=1)
        proj = g.op("Mul", proj, g.const(src.hidden_size ** -0.5))
        proj = g.op("Reshape", proj, g.const([0, len(layers), P], np.int64))
        proj = self.rms_norm(proj, "per_layer_projection_norm")
        return g.op("Mul", g.op("Add", proj, ple_tokens), g.const(1 / math.sqrt(2.0)))

    def mlp(self, x: str, layer: int, width: int) -> str:
        """down(gelu(sparsify(gate(x))) * up(x)) at FFN width `width`: gate/up use their first
        `width` rows; down_proj is the sum of the stored column chunks below `width`. Where a
        one-token step or a prompt chunk computes it differently, an If on T == 1 holds both."""
        rows_only = self.src.activation_sparsity[layer] > 0 and self.sparse_decode
        if not (rows_only or self.prefill_int8):
            return self.ffn(x, layer, width)
        if not self.prefill_int8:
            # both branches take the same gate: computed before the If, so that onnxruntime prepacks
            # its weights once, not once per branch
            act = self.activation(x, layer, width)
            return self.g.cond(self.one_token(x), lambda: self.sparse_mlp(x, act, layer, width),
                               lambda: self.up_down(x, act, layer, width))
        return self.g.cond(self.one_token(x), lambda: self.ffn(x, layer, width, active_rows=rows_only),
                           lambda: self.ffn(x, layer, width, int8_matmul=True))

    def ffn(self, x: str, layer: int, width: int, active_rows: bool = False, int8_matmul: bool = False) -> str:
        """The FFN; `active_rows`: of one token, reading only the rows its sparse activation uses;
        `int8_matmul`: with int8 x int8 matmuls (quantize.py), for prompt chunks."""
        act = self.activation(x, layer, width, int8_matmul)
        if active_rows:
            return self.sparse_mlp(x, act, layer, width)
        return self.up_down(x, act, layer, width, int8_matmul)

    def up_down(self, x: str, act: str, layer: int, width: int, int8_matmul: bool = False) -> str:
        return self.down(self.g.op("Mul", act, self.in_proj(x, layer, "up_proj", width, int8_matmul)), layer, width, int8_matmul)

    def activation(self, x: str, layer: int, width: int, int8_matmul: bool = False) -> str:
        """gelu(sparsify(gate(x))) [T, width]."""
        g = self.g
        gate = self.in_proj(x, layer, "gate_proj", width, int8_matmul)
        sparsity = self.src.activation_sparsity[layer]
        if sparsity > 0:   # gaussian top-k over the sliced width
            mean = self.mean_last(gate)
            std = g.op("Sqrt", self.mean_last(g.op("Pow", g.op("Sub", gate, mean), g.const(2.0))))
            cutoff = g.op("Add", mean, g.op("Mul", std, g.const(std_multiplier(sparsity))))
            gate = g.op("Relu", g.op("Sub", gate, cutoff))
        return g.op("Gelu", gate, approximate="tanh")    # with sparsity mostly 0

    def in_proj(self, x: str, layer: int, name: str, width: int, int8_matmul: bool) -> str:
        """gate_proj or up_proj at width `width`. Their int8 matmul copies are stored transposed, where
        a width prefix is not a byte range: one copy per chunk of down_proj's boundaries, shared by
        every slice, and the chunks' outputs concatenated."""
        g, key = self.g, f"layers.{layer}.mlp.{name}"
        full = self.src.intermediate_sizes[layer]
        if not int8_matmul:
            return g.linear(x, self.w[key], key, None if width == full else (0, width))
        bounds = self.bounds(layer, width)
        parts = [g.linear(x, self.w[key], key, None if (a, b) == (0, full) else (a, b), int8_matmul=True)
                 for a, b in zip(bounds, bounds[1:])]
        return parts[0] if len(parts) == 1 else g.op("Concat", *parts, axis=-1)

    def bounds(self, layer: int, width: int) -> list[int]:
        bounds = [b for b in self.chunks[layer] if b <= width]
        if width not in bounds:
            raise AssertionError(f"layer {layer}: width {width} is not a chunk boundary {self.chunks[layer]}")
        return bounds

    def down(self, h: str, layer: int, width: int, int8_matmul: bool = False) -> str:
        g, p = self.g, f"layers.{layer}.mlp."
        full = self.src.intermediate_sizes[layer]
        bounds = self.bounds(layer, width)
        if bounds == [0, full]:
            return self.g.linear(h, self.w[p + "down_proj"], p + "down_proj", int8_matmul=int8_matmul)
        down = self.w[p + "down_proj"]
        parts = []
        for a, b in zip(bounds, bounds[1:]):
            key = f"{p}down_proj.{a}:{b}"
            chunk = self.w.setdefault(key, down.map(lambda m, a=a, b=b: np.ascontiguousarray(m[:, a:b]), (down.shape[0], b - a), key))
            part = h if len(bounds) == 2 else g.op("Slice", h, g.const([a], np.int64), g.const([b], np.int64), g.const([1], np.int64))
            parts.append(self.g.linear(part, chunk, key, int8_matmul=int8_matmul))
        return parts[0] if len(parts) == 1 else g.op("Sum", *parts)

    def sparse_mlp(self, x: str, act: str, layer: int, width: int) -> str:
        """The FFN of one token from the rows of up_proj and the columns of down_proj (stored as
        the rows of its transpose) where the sparsified activation is not 0: about 5 % of them,
        and only they are read. Exact: the other terms are 0."""
        g, p = self.g, f"layers.{layer}.mlp."
        rows = None if width == self.src.intermediate_sizes[layer] else (0, width)
        density = 1.0 - self.src.activation_sparsity[layer]
        idx = g.op("Reshape", g.op("NonZero", g.op("Reshape", act, g.const([-1], np.int64))), g.const([-1], np.int64))
        up = g.op("Gemm", x, g.gather_rows(self.w[p + "up_proj"], p + "up_proj", idx, rows, density), transB=1)  # [1, n]
        h = g.op("Mul", g.op("Gather", act, idx, axis=1), up)
        down = self.w[p + "down_proj"]
        key = p + "down_proj.T"
        down_t = self.w.setdefault(key, down.map(lambda m: np.ascontiguousarray(m.T), down.shape[::-1], key))
        return g.op("MatMul", h, g.gather_rows(down_t, key, idx, rows, density))                     # [1, D]

    def router(self, x: str, p: str) -> str:
        g = self.g
        r = g.op("Mul", self.rms_norm(x, p + "router_norm"), g.const(1.0 / self.src.hidden_size))
        return g.op("Tanh", self.linear(r, p + "modality_router"))                         # [T, N]

    def layer(self, H: str, layer: int, j: int, pli: str, rope, masks, past, kv) -> str:
        g, N = self.g, self.src.altup_num_inputs
        p = f"layers.{layer}."
        with g.scope("altup_predict"):
            coefs = self.linear(self.router(self.stream(H, 0), p + "altup."), p + "altup.prediction_coefs")
            coefs = g.op("Reshape", coefs, g.const([0, N, N], np.int64))                  # [T, N, N], C[i][j]
            pred = g.op("Add", g.op("MatMul", coefs, H), H)                                 # [T, N, D]
        active = self.stream(pred, 0)
        x = self.rms_norm(active, p + "input_layernorm")
        with g.scope("laurel"):
            lr = self.linear(self.linear(x, p + "laurel.linear_left"), p + "laurel.linear_right")
            lr = g.op("Add", x, self.rms_norm(lr, p + "laurel.post_laurel_norm"))
        with g.scope("attn"):
            att = self.rms_norm(self.attention(x, layer, rope, masks, past, kv), p + "post_attention_layernorm")
        y = g.op("Div", g.op("Add", g.op("Add", active, att), lr), g.const(math.sqrt(2.0)))
        with g.scope("mlp"):
            f = self.mlp(self.rms_norm(y, p + "pre_feedforward_layernorm"), layer, self.plan.ffn_widths[j])
            out = g.op("Add", y, self.rms_norm(f, p + "post_feedforward_layernorm"))
        with g.scope("altup_correct"):
            c = g.op("Add", self.linear(self.router(out, p + "altup."), p + "altup.correction_coefs"), g.const(1.0))
            innovation = g.op("Sub", out, active)
            corr = g.op("Add", pred, g.op("Mul", g.op("Unsqueeze", c, g.const([2], np.int64)),
                                           g.op("Unsqueeze", innovation, g.const([1], np.int64))))
        with g.scope("per_layer_input"):
            gate = g.op("Mul", self.stream(corr, 0), self.weight(p + "altup.correct_output_scale"))
            gate = g.op("Mul", g.op("Gelu", self.linear(gate, p + "per_layer_input_gate"), approximate="tanh"), pli)
            inj = self.rms_norm(self.linear(gate, p + "per_layer_projection"), p + "post_per_layer_input_norm")
            only_rest = g.const(np.array([0.0] + [1.0] * (N - 1), np.float32).reshape(1, N, 1))  # streams 1.. only
            return g.op("Add", corr, g.op("Mul", g.op("Unsqueeze", inj, g.const([1], np.int64)), only_rest))
