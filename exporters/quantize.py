"""Quantization, as a pass over a built graph: each recorded linear becomes a MatMulNBits.

MatMulNBits (onnxruntime contrib op) stores W [N, K] row by row in blocks of `block_size` along K,
`bits` per value with one float scale per block and the implicit zero point 2^(bits-1). Because
rows are stored whole and in order, a prefix of the output rows is a prefix of the bytes.
"""
from __future__ import annotations

import numpy as np
from onnx import helper

from .checkpoint import Lazy
from .onnx_graph import MS_DOMAIN, Graph

MODES = {"int4": 4, "int8": 8}
MIN_DIM = 16   # tiny linears (the AltUp 4x4 coefficient maps, the router) stay in fp32


def quantize_blockwise(w: np.ndarray, bits: int, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric blockwise quantization of w [N, K] -> (packed uint8 [N, blocks, block*bits/8], scales [N*blocks]).

    As llama.cpp's Q4_0: the scale maps the block's largest-magnitude value to -2^(bits-1), so
    all 2^bits levels are used (about 11 % lower error than absmax / (2^(bits-1) - 1))."""
    n, k = w.shape
    blocks = -(-k // block)
    padded = np.zeros((n, blocks * block), np.float32)
    padded[:, :k] = w
    padded = padded.reshape(n, blocks, block)
    half = 2 ** (bits - 1)
    extreme = np.take_along_axis(padded, np.abs(padded).argmax(axis=2)[..., None], axis=2)[..., 0]
    scales = extreme / -half
    scales[scales == 0] = 1.0
    q = np.clip(np.rint(padded / scales[..., None]), -half, half - 1) + half
    q = q.astype(np.uint8)
    if bits == 4:
        q = q[..., 0::2] | (q[..., 1::2] << 4)   # low nibble first
    return np.ascontiguousarray(q), scales.astype(np.float32).reshape(-1)


def dequantize_blockwise(packed: np.ndarray, scales: np.ndarray, bits: int, k: int) -> np.ndarray:
    n, blocks, _ = packed.shape
    if bits == 4:
        q = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(n, blocks, -1)
    else:
        q = packed
    w = (q.astype(np.float32) - 2 ** (bits - 1)) * scales.reshape(n, blocks, 1)
    return w.reshape(n, -1)[:, :k]


def quantize_rows(src: Lazy, bits: int, block: int, rows: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """quantize_blockwise over `rows` rows at a time, so a 262400-row LM head needs little memory."""
    n, k = src.shape
    blocks = -(-k // block)
    packed = np.empty((n, blocks, block * bits // 8), np.uint8)
    scales = np.empty((n, blocks), np.float32)
    whole = None if src.load_rows else src.load()
    for a in range(0, n, rows):
        b = min(n, a + rows)
        packed[a:b], s = quantize_blockwise(src.rows(a, b) if whole is None else whole[a:b], bits, block)
        scales[a:b] = s.reshape(b - a, blocks)
    return packed, scales.reshape(-1)


def quantize_graph(graph: Graph, mode: str, block_size: int = 32, accuracy_level: int = 4) -> None:
    """Rewrite every large enough linear of `graph` as MatMulNBits, in place."""
    if mode == "fp32":
        return
    bits = MODES[mode]
    for lin in graph.linears.values():
        n, k = lin.source.shape
        if min(n, k) < MIN_DIM:
            continue
        blocks = -(-k // block_size)
        cache: dict[str, np.ndarray] = {}

        def packed(src: Lazy = lin.source, cache=cache) -> np.ndarray:
            q, s = quantize_rows(src, bits, block_size)
            cache["scales"] = s
            return q

        def scales(src: Lazy = lin.source, cache=cache) -> np.ndarray:
            # written right after `packed`, so the source is read and quantized once
            return cache.pop("scales") if "scales" in cache else quantize_rows(src, bits, block_size)[1]

        a, b = lin.rows or (0, n)
        del graph.weights[lin.weight]
        qname = graph.weight(f"{lin.key}.q{bits}", Lazy(f"{lin.key}.q{bits}", (n, blocks, block_size * bits // 8), packed),
                             lin.rows)
        sname = graph.weight(f"{lin.key}.scales", Lazy(f"{lin.key}.scales", (n * blocks,), scales),
                             None if lin.rows is None else (a * blocks, b * blocks))
        for node in lin.nodes:
            node.CopyFrom(helper.make_node(
                "MatMulNBits", [node.input[0], qname, sname], list(node.output), name=node.name + "NBits",
                domain=MS_DOMAIN, K=k, N=b - a, bits=bits, block_size=block_size, accuracy_level=accuracy_level))
