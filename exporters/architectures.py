"""The architectures the exporter knows, dispatched from config.json's model_type: for each, how
to read its config, claim its tensors, list its slices, build a graph and count parameters."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from gemma3n_rt.errors import Gemma3nError
from .gemma3_decoder import Gemma3Builder, gemma3_tensor_shapes, take_gemma3_weights
from .hf_config import parse_gemma3, parse_gemma3n
from .matformer import select
from .text_decoder import DecoderBuilder, SlicePlan, down_chunks, effective_params, take_text_weights


@dataclass(frozen=True)
class Architecture:
    parse: Callable             # (config, checkpoint) -> source config
    take_weights: Callable      # (checkpoint, source) -> {short name: Lazy}
    plans: Callable             # (source, --slices, --custom-slice) -> [SlicePlan]
    builder: Callable           # (source, weights, plan, all plans) -> a DecoderGraph with build()
    effective_params: Callable  # (source, plan) -> parameters without the embedding tables


def _gemma3_plans(src, slices, custom) -> list[SlicePlan]:
    if custom or (slices and slices.lower() not in ("all", "full")):
        raise Gemma3nError("--slices/--custom-slice: MatFormer slices need a Gemma 3n checkpoint; "
                           "this Gemma 3 checkpoint has one slice, 'full'")
    return [SlicePlan("full", tuple(range(src.num_layers)), (src.intermediate_size,) * src.num_layers)]


def _gemma3_params(src, plan) -> int:
    return sum(int(np.prod(s)) for k, s in gemma3_tensor_shapes(src).items() if k != "embed_tokens")


ARCHITECTURES = {
    "gemma3n": Architecture(parse_gemma3n, take_text_weights, select,
                            lambda src, w, plan, plans: DecoderBuilder(src, w, plan, down_chunks(src, plans)),
                            effective_params),
    "gemma3": Architecture(parse_gemma3, take_gemma3_weights, _gemma3_plans,
                           lambda src, w, plan, plans: Gemma3Builder(src, w, plan), _gemma3_params),
}
