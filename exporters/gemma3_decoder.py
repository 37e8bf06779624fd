"""Graph builder for the Gemma 3 text decoder (Gemma3ForCausalLM), sharing the decoder pieces
of decoder_common: one KV cache per layer, pre/post norms around attention and the MLP."""
from __future__ import annotations

import numpy as np

from gemma3n_rt.config import CacheSpec
from .checkpoint import Lazy, TensorSource
from .decoder_common import DecoderGraph
from .hf_config import Gemma3Source
from .onnx_graph import Graph
from .text_decoder import SlicePlan

NORMS = ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm")


def gemma3_tensor_shapes(src: Gemma3Source) -> dict[str, tuple[int, ...]]:
    D, I, H, KV, Dh = src.hidden_size, src.intermediate_size, src.num_attention_heads, src.num_kv_heads, src.head_dim
    shapes = {"embed_tokens": (src.vocab_size, D), "norm": (D,)}
    for i in range(src.num_layers):
        layer = {"self_attn.q_proj": (H * Dh, D), "self_attn.k_proj": (KV * Dh, D), "self_attn.v_proj": (KV * Dh, D),
                 "self_attn.o_proj": (D, H * Dh), "self_attn.q_norm": (Dh,), "self_attn.k_norm": (Dh,),
                 "mlp.gate_proj": (I, D), "mlp.up_proj": (I, D), "mlp.down_proj": (D, I),
                 **{n: (D,) for n in NORMS}}
        shapes.update({f"layers.{i}.{k}": s for k, s in layer.items()})
    return shapes


def take_gemma3_weights(ckpt: TensorSource, src: Gemma3Source) -> dict[str, Lazy]:
    """Every tensor with its shape; RMSNorm weights become the plain scales (1 + w) they act as."""
    weights = {}
    for key, shape in gemma3_tensor_shapes(src).items():
        lazy = ckpt.take(src.prefix + key + ".weight", shape)
        weights[key] = lazy.map(lambda w: w + np.float32(1.0), shape) if len(shape) == 1 else lazy
    ckpt.ignore(r"lm_head\.weight")  # tied to embed_tokens
    return weights


class Gemma3Builder(DecoderGraph):
    def __init__(self, src: Gemma3Source, weights: dict[str, Lazy], plan: SlicePlan):
        super().__init__(src, weights, f"gemma3_decoder_{plan.name}")
        self.plan = plan
        self.caches = [CacheSpec(src.layer_types[l], l) for l in range(src.num_layers)]
        self.cache_of = {l: l for l in range(src.num_layers)}

    def build(self) -> Graph:
        g, src = self.g, self.src
        x, positions, past = self.inputs()
        with g.scope("rope"):
            rope = self.rope(positions)
        with g.scope("mask"):
            masks = self.masks(positions, past)
        kv: dict[int, tuple[str, str]] = {}
        scale = src.query_pre_attn_scalar ** -0.5
        for layer in range(src.num_layers):
            p = f"layers.{layer}."
            with g.scope(f"layers.{layer}"):
                with g.scope("attn"):
                    h = self.rms_norm(x, p + "input_layernorm")
                    h = self.attention(h, layer, rope, masks, past, kv, scale=scale, v_norm=False)
                    x = g.op("Add", x, self.rms_norm(h, p + "post_attention_layernorm"))
                with g.scope("mlp"):
                    h = self.rms_norm(x, p + "pre_feedforward_layernorm")
                    h = self.int8_prompts(h, lambda int8_matmul: self.mlp(h, p + "mlp.", int8_matmul))
                    x = g.op("Add", x, self.rms_norm(h, p + "post_feedforward_layernorm"))
        with g.scope("final"):
            self.lm_head(self.last_position(x))
        return g

    def mlp(self, h: str, p: str, int8_matmul: bool) -> str:
        """down(gelu(gate(h)) * up(h))."""
        def linear(x: str, name: str) -> str:
            return self.g.linear(x, self.w[p + name], p + name, int8_matmul=int8_matmul)
        act = self.g.op("Gelu", linear(h, "gate_proj"), approximate="tanh")
        return linear(self.g.op("Mul", act, linear(h, "up_proj")), "down_proj")
