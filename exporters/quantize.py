"""Quantization, as a pass over a built graph: each recorded linear becomes a MatMulNBits.

MatMulNBits (onnxruntime contrib op) stores W [N, K] row by row in blocks of `block_size` along K,
`bits` per value with one float scale per block and either the implicit zero point 2^(bits-1)
(symmetric) or a stored zero point per block (asymmetric: the block's [min, max] mapped onto all
2^bits levels). Because rows are stored whole and in order, a prefix of the output rows is a
prefix of the bytes.
"""
from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

from dataclasses import dataclass

from .checkpoint import Lazy
from .gptq import gptq_factor, gptq_round
from .onnx_graph import MS_DOMAIN, Graph, Linear

MODES = {"int4": 4, "int8": 8}
MIN_DIM = 16   # tiny linears (the AltUp 4x4 coefficient maps, the router) stay in fp32
HEAD = "lm_head"


@dataclass(frozen=True)
class QuantRecipe:
    """How the decoder's linears are quantized. `head` overrides the mode for the (tied) LM head."""
    mode: str = "int4"
    block_size: int = 32
    asymmetric: bool = False
    head: str | None = None            # None: as `mode`; "int8", "int4" or "fp32"
    int8_linears: tuple[str, ...] = ()  # with int4: linears named so (e.g. "down_proj", any layer) stay int8
    accuracy_level: int = 4            # MatMulNBits: 4 = int8 activations (about 2x the speed of 0)
    head_rescore: int = 0              # with an int4 head: its top logits recomputed (gemma3n_rt/head.py)
    head_block_size: int | None = None  # the head's block (None: block_size)
    int8_block_size: int | None = None  # with int4: the block of the int8_linears (None: block_size)
    prefill_int8: bool = False         # prompt chunks: attention and FFN as int8 x int8 matmuls on int8 copies
    gptq: bool = True                  # calibrated int4: each column's rounding error carried into the next (GPTQ)

    def block_of(self, key: str, k: int) -> int:
        """The block of the linear `key` with k inputs: a wide block at most the largest power of two
        dividing k (a block that doesn't divide k pads every row)."""
        if key == HEAD and self.head_block_size:
            wide = self.head_block_size
        elif self.int8_block_size and self.mode == "int4" and self.mode_of(key) == "int8" and key != HEAD:
            wide = self.int8_block_size
        else:
            return self.block_size
        return max(self.block_size, min(wide, k & -k))

    def mode_of(self, key: str) -> str:
        if key == HEAD and self.head:
            return self.head
        if self.mode == "int4" and set(key.split(".")) & set(self.int8_linears):
            return "int8"
        return self.mode


# The int4 default, chosen by the quality table of bench/quality.py on the real Gemma 3 270M. The
# head's blocks are 128 wide: 17 % fewer head bytes per token than 32, E2B decode about 4 % faster,
# for a mean KL of 0.0936 against 0.0874 (top-1 the same). Recomputing its top 256 instead of 64
# scored better (0.0862) but reads 256 random rows of the embedding table per token: from a cold
# page cache (flash) that made E2B's decode step 1.5x slower. The int8 linears are in blocks of
# 128 too: MatMulNBits ran 8-bit weights 1.24x faster per parameter than in blocks of 32.
DEFAULT_RECIPE = QuantRecipe(asymmetric=True, head="int4", int8_linears=("v_proj", "down_proj"), head_rescore=64,
                             head_block_size=128, int8_block_size=128)


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


# With calibration, the int4 grids tried per block: [min, max], and that range narrowed (clipping
# the extremes) with the zero point rounded three ways; the lowest importance-weighted error wins.
SHRINKS = (0.95, 0.9, 0.85, 0.8)
REFITS = 2     # then the winner is refit by weighted least squares (270M: KL 0.090 -> 0.080)


def _grids(padded: np.ndarray, top: int, weight: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each block's levels, scale and zero point for padded [n, blocks, block]: [min, max], or with
    `weight` [blocks, block] the grid of least weighted error (quantize_blockwise_asymmetric())."""
    lo, hi = np.minimum(padded.min(axis=2), 0), np.maximum(padded.max(axis=2), 0)
    span = np.where(hi > lo, hi - lo, top)      # an all-zero block: scale 1
    scales = span / top
    zp = np.clip(np.rint(-lo / scales), 0, top)
    q = np.clip(np.rint(padded / scales[..., None]) + zp[..., None], 0, top)
    if weight is None:
        return q, scales, zp

    def cost(q, scales, zp):
        return (np.square((q - zp[..., None]) * scales[..., None] - padded) * weight).sum(axis=2)

    best = {"q": q, "scales": scales, "zp": zp, "err": cost(q, scales, zp)}

    def consider(s, z):
        """Quantize with scale s and zero point z; keep the blocks where that costs less."""
        cq = np.clip(np.rint(padded / s[..., None]) + z[..., None], 0, top)
        cerr = cost(cq, s, z)
        better = cerr < best["err"]
        best.update(q=np.where(better[..., None], cq, best["q"]), scales=np.where(better, s, best["scales"]),
                    zp=np.where(better, z, best["zp"]), err=np.where(better, cerr, best["err"]))

    for shrink in SHRINKS:
        s = span * shrink / top
        centre = np.rint((lo + hi) / 2 / -s + top / 2)
        for z in (centre - 1, centre, centre + 1):
            consider(s, np.clip(z, 0, top))
    for _ in range(REFITS):
        # the best levels so far, refit: weighted least squares for scale and offset, the zero
        # point rounded, the scale fit again for it (llama.cpp's make_qkx2_quants, integer zero)
        q = best["q"]
        total = weight.sum(axis=1)
        mean_q = (q * weight).sum(axis=2) / total
        mean_w = (padded * weight).sum(axis=2) / total
        dq = q - mean_q[..., None]
        var = (np.square(dq) * weight).sum(axis=2)
        s = (dq * (padded - mean_w[..., None]) * weight).sum(axis=2) / np.where(var > 0, var, 1)
        z = np.clip(np.rint(mean_q - mean_w / np.where(s > 0, s, 1)), 0, top)
        lv = q - z[..., None]
        s = (lv * padded * weight).sum(axis=2) / np.maximum((np.square(lv) * weight).sum(axis=2), 1e-30)
        consider(np.where(s > 0, s, best["scales"]), z)
    return best["q"], best["scales"], best["zp"]


def quantize_blockwise_asymmetric(w: np.ndarray, bits: int, block: int, importance: np.ndarray | None = None,
                                  carry: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Asymmetric blockwise quantization of w [N, K] -> (packed, scales [N*blocks], zero points
    uint8 [N, ceil(blocks*bits/8)] packed as MatMulNBits reads them). Each block's [min, max]
    (widened to include 0, so that 0 stays exact) spans all 2^bits levels.

    `importance` [K] (the mean square of each input feature over calibration text, calibrate.py):
    at 4 bits, narrower grids are tried as well, and refit, and each block keeps the one with the
    least sum of importance * error^2, the error the layer's output sees (llama.cpp's imatrix idea).
    Plain squared error is the wrong target: measured on the real Gemma 3 270M, it lowers weight
    error 10-25 % but raises the KL to fp32.

    `carry` (with importance at 4 bits; gptq.gptq_factor()): the grids chosen so, the values are
    then rounded column by column, each column's error carried into the columns after it (GPTQ)."""
    n, k = w.shape
    blocks = -(-k // block)
    padded = np.zeros((n, blocks * block), np.float32)
    padded[:, :k] = w
    padded = padded.reshape(n, blocks, block)
    top = 2 ** bits - 1
    weight = None
    if importance is not None and bits == 4:
        weight = np.zeros(blocks * block, np.float32)
        weight[:k] = importance
        weight = weight.reshape(blocks, block)
    q, scales, zp = _grids(padded, top, weight)
    if carry is not None and weight is not None:
        q = gptq_round(padded, scales, zp, top, carry)
    q, zp = q.astype(np.uint8), zp.astype(np.uint8)
    if bits == 4:
        q = q[..., 0::2] | (q[..., 1::2] << 4)
        if blocks % 2:
            zp = np.concatenate([zp, np.full((n, 1), 8, np.uint8)], axis=1)
        zp = zp[:, 0::2] | (zp[:, 1::2] << 4)
    return np.ascontiguousarray(q), scales.astype(np.float32).reshape(-1), np.ascontiguousarray(zp)


def dequantize_blockwise(packed: np.ndarray, scales: np.ndarray, bits: int, k: int,
                         zero_points: np.ndarray | None = None) -> np.ndarray:
    n, blocks, _ = packed.shape
    if bits == 4:
        q = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(n, blocks, -1)
    else:
        q = packed
    if zero_points is None:
        zp = np.full((n, blocks, 1), 2 ** (bits - 1), np.float32)
    else:
        zp = zero_points.reshape(n, -1)
        if bits == 4:
            zp = np.stack([zp & 0x0F, zp >> 4], axis=-1).reshape(n, -1)
        zp = zp[:, :blocks, None].astype(np.float32)
    w = (q.astype(np.float32) - zp) * scales.reshape(n, blocks, 1)
    return w.reshape(n, -1)[:, :k]


def quantize_rows(src: Lazy, bits: int, block: int, asymmetric: bool = False, rows: int = 4096,
                  importance: np.ndarray | None = None, moments: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Blockwise quantization over `rows` rows at a time, so a 262400-row LM head needs little
    memory. Returns {"q": packed, "scales": ..., and "zero_points" when asymmetric}. `moments`
    (with importance, 4 bits): the input's x x^T, for GPTQ rounding."""
    n, k = src.shape
    blocks = -(-k // block)
    carry = gptq_factor(moments, blocks * block) if moments is not None and importance is not None and bits == 4 else None
    out = {"q": np.empty((n, blocks, block * bits // 8), np.uint8), "scales": np.empty((n, blocks), np.float32)}
    if asymmetric:
        out["zero_points"] = np.empty((n, -(-blocks * bits // 8)), np.uint8)
    whole = None if src.load_rows else src.load()
    for a in range(0, n, rows):
        b = min(n, a + rows)
        w = src.rows(a, b) if whole is None else whole[a:b]
        if asymmetric:
            out["q"][a:b], s, out["zero_points"][a:b] = quantize_blockwise_asymmetric(w, bits, block, importance, carry)
        else:
            out["q"][a:b], s = quantize_blockwise(w, bits, block)
        out["scales"][a:b] = s.reshape(b - a, blocks)
    out["scales"] = out["scales"].reshape(-1)
    if asymmetric:
        out["zero_points"] = out["zero_points"].reshape(-1)
    return out


def quantized_linears(graph: Graph, recipe: QuantRecipe, *modes: str) -> list[Linear]:
    """The linears of `graph` that `recipe` quantizes to one of `modes`, in graph order."""
    return [lin for lin in graph.linears.values()
            if recipe.mode_of(lin.key) in modes and min(lin.source.shape) >= MIN_DIM]


def quantize_graph(graph: Graph, recipe: QuantRecipe | str, moments: dict[str, np.ndarray] | None = None) -> None:
    """Rewrite every large enough linear of `graph` as MatMulNBits, and every gather of a weight's
    rows as GatherBlockQuantized on an int8 copy of those rows, in place. `moments`: per stored
    tensor key, the mean x x^T [K, K] of its input over the calibration text, or its diagonal [K]
    (calibrate.py), used by int4 with zero points (the LM head too): the diagonal weighs the grids,
    the whole matrix (with recipe.gptq) rounds by GPTQ. The calibration covers every int4 linear of the largest
    slice, so of all slices."""
    recipe = QuantRecipe(recipe) if isinstance(recipe, str) else recipe
    int4 = {id(lin) for lin in quantized_linears(graph, recipe, "int4")}
    for lin in quantized_linears(graph, recipe, "int4", "int8"):
        if lin.int8_matmul:
            _int8_matmul(graph, lin)
            continue
        imp = m = None
        if moments is not None and id(lin) in int4 and recipe.asymmetric:
            k = lin.source.shape[1]
            m = moments.get(lin.key)
            assert m is not None and m.shape in ((k, k), (k,)), f"calibration missed {lin.key}"
            imp, m = (np.diag(m).copy(), m) if m.ndim == 2 else (m, None)
        qw = quantized_weight(lin.source, lin.key, MODES[recipe.mode_of(lin.key)], recipe.block_of(lin.key, lin.source.shape[1]),
                              recipe.asymmetric, imp, m if recipe.gptq else None)
        graph.weights.pop(lin.weight, None)
        parts = qw.inputs(graph, lin.rows)
        for node in lin.nodes:
            node.CopyFrom(helper.make_node(
                "MatMulNBits", [node.input[0], *parts], list(node.output), name=node.name + "NBits",
                domain=MS_DOMAIN, K=qw.k, N=qw.rows(lin.rows), bits=qw.bits, block_size=qw.block,
                accuracy_level=recipe.accuracy_level))
    for gather in graph.row_gathers:
        mode = recipe.mode_of(gather.key)
        if mode not in MODES or min(gather.source.shape) < MIN_DIM:
            continue
        # Gathered rows get an int8 copy of their own with one block per row (or the widest power of
        # two that divides it): GatherBlockQuantized dequantizes 410 such rows of [8192, 2048] in
        # 93 us, against 241 us in int8 blocks of 32 and 426 us in int4 blocks of 32.
        k = gather.source.shape[1]
        qw = quantized_weight(gather.source, gather.key + ".rows", 8, k & -k, recipe.asymmetric, None)
        assert qw.block >= 16, f"{gather.key}: rows of {k} values have no block GatherBlockQuantized takes"
        graph.weights.pop(gather.node.input[0], None)
        parts = qw.inputs(graph, gather.rows, as_rows=True)
        node = gather.node
        node.CopyFrom(helper.make_node(
            "GatherBlockQuantized", [parts[0], node.input[1], *parts[1:]], list(node.output), name=node.name + "BlockQuantized",
            domain=MS_DOMAIN, gather_axis=0, quantize_axis=1, block_size=qw.block, bits=qw.bits))


def _int8_matmul(graph: Graph, lin: Linear) -> None:
    """x @ W[a:b].T as an int8 matmul (MatMulIntegerToFloat): W's rows quantized to int8 with a
    scale each and stored transposed [K, b - a]; each row (position) of x quantized at run time
    with its own scale, as uint8 around 128. onnxruntime runs it as an int8 GEMM (AMX or VNNI
    where the CPU has them), many times faster than MatMulNBits on a prompt. Per row, not per
    chunk (DynamicQuantizeMatMul): one outlier position would flatten the others. On the real
    Gemma 3 270M at int8, the mean KL to fp32 of the 256 positions after a 256-token prompt was
    0.0066 per row against 0.038 per chunk (0.0027 with MatMulNBits alone)."""
    n, k = lin.source.shape
    a, b = lin.rows or (0, n)
    name = f"{lin.key}.int8T" + ("" if lin.rows is None else f".{a}:{b}")
    cache: dict[str, np.ndarray] = {}

    def part(which: str) -> np.ndarray:
        if which not in cache:
            cache.clear()
            w = lin.source.rows(a, b)
            scales = np.abs(w).max(axis=1) / 127
            scales[scales == 0] = 1.0
            q = np.clip(np.rint(w / scales[:, None]), -127, 127).astype(np.int8)
            cache.update(q=np.ascontiguousarray(q.T), scales=scales.astype(np.float32))
        return cache.pop(which)

    graph.weights.pop(lin.weight, None)
    q = graph.weight(name, Lazy(name, (k, b - a), lambda: part("q")))
    scales = graph.weight(name + ".scales", Lazy(name + ".scales", (b - a,), lambda: part("scales")))
    one, zero_point = graph.const(1.0), graph.const(128, np.uint8)
    for node in list(lin.nodes):
        x, y, at = node.input[0], node.output[0], node.name + "Int8"
        nodes = [helper.make_node("Abs", [x], [at + "/abs"], name=at + "/Abs"),
                 helper.make_node("ReduceMax", [at + "/abs", graph.const([-1], np.int64)], [at + "/max"], keepdims=1,
                                  name=at + "/ReduceMax"),
                 helper.make_node("Max", [at + "/max", graph.const(1e-30)], [at + "/range"], name=at + "/Max"),
                 helper.make_node("Div", [at + "/range", graph.const(127.0)], [at + "/scale"], name=at + "/Scale"),
                 helper.make_node("Div", [x, at + "/scale"], [at + "/scaled"], name=at + "/Div"),
                 helper.make_node("Round", [at + "/scaled"], [at + "/round"], name=at + "/Round"),
                 helper.make_node("Add", [at + "/round", graph.const(128.0)], [at + "/shift"], name=at + "/Add"),
                 helper.make_node("Cast", [at + "/shift"], [at + "/q"], to=TensorProto.UINT8, name=at + "/Cast"),
                 helper.make_node("MatMulIntegerToFloat", [at + "/q", q, one, scales, zero_point], [at + "/matmul"],
                                  name=at + "/MatMul", domain=MS_DOMAIN),
                 helper.make_node("Mul", [at + "/matmul", at + "/scale"], [y], name=at + "/Rescale")]
        graph.replace(node, nodes)


@dataclass(frozen=True)
class QuantizedWeight:
    """W [n, k] quantized in MatMulNBits' layout: packed values [n, blocks, blob], scales
    [n * blocks] and (asymmetric) packed zero points [n * zp_bytes], produced together on demand."""
    key: str
    n: int
    k: int
    bits: int
    block: int
    q: Lazy
    scales: Lazy
    zero_points: Lazy | None

    @property
    def blocks(self) -> int:
        return -(-self.k // self.block)

    @property
    def zp_bytes(self) -> int:
        return -(-self.blocks * self.bits // 8)

    def rows(self, rows: tuple[int, int] | None) -> int:
        return self.n if rows is None else rows[1] - rows[0]

    def inputs(self, graph: Graph, rows: tuple[int, int] | None, as_rows: bool = False) -> list[str]:
        """The initializers for a range of W's rows: MatMulNBits' shapes, or with `as_rows` one
        row of bytes per row of W (GatherBlockQuantized's shapes, the same bytes)."""
        n, blocks = self.n, self.blocks
        per_row = {"q": self.blocks * self.block * self.bits // 8, "scales": blocks, "zero_points": self.zp_bytes}
        names = []
        for part, lazy in (("q", self.q), ("scales", self.scales), ("zero_points", self.zero_points)):
            if lazy is None:
                continue
            if as_rows:
                names.append(graph.weight(lazy.name, lazy, rows, (n, per_row[part])))
            elif part == "q":
                names.append(graph.weight(lazy.name, lazy, rows))
            else:   # flat: a range of rows is a range of the flat vector
                flat = None if rows is None else (rows[0] * per_row[part], rows[1] * per_row[part])
                names.append(graph.weight(lazy.name, lazy, flat))
        return names


def quantized_weight(source: Lazy, key: str, bits: int, block: int, asym: bool,
                     importance: np.ndarray | None, moments: np.ndarray | None = None) -> QuantizedWeight:
    n, k = source.shape
    blocks = -(-k // block)
    zp_bytes = -(-blocks * bits // 8)
    cache: dict[str, np.ndarray] = {}

    def part(name: str) -> np.ndarray:
        # the parts are written one after another: the source is read and quantized once
        if name not in cache:
            cache.clear()
            cache.update(quantize_rows(source, bits, block, asym, importance=importance, moments=moments))
        return cache.pop(name)

    return QuantizedWeight(
        key, n, k, bits, block,
        Lazy(f"{key}.q{bits}", (n, blocks, block * bits // 8), lambda: part("q")),
        Lazy(f"{key}.scales", (n * blocks,), lambda: part("scales")),
        Lazy(f"{key}.zero_points", (n * zp_bytes,), lambda: part("zero_points")) if asym else None)
