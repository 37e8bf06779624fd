"""The int4/int8 quantization pass: packing as onnxruntime's MatMulNBits reads it."""
import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from exporters.checkpoint import Lazy
from exporters.gptq import gptq_factor
from exporters.quantize import dequantize_blockwise, quantize_blockwise, quantize_blockwise_asymmetric, quantize_rows


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("k", [64, 80])      # 80: the last block is padded
def test_matmulnbits_computes_with_the_dequantized_weight(bits, k):
    rng = np.random.default_rng(bits + k)
    n, block = 48, 32
    w = rng.standard_normal((n, k)).astype(np.float32)
    x = rng.standard_normal((5, k)).astype(np.float32)
    packed, scales = quantize_blockwise(w, bits, block)
    node = helper.make_node("MatMulNBits", ["x", "q", "s"], ["y"], domain="com.microsoft",
                            K=k, N=n, bits=bits, block_size=block, accuracy_level=0)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [5, n])],
                              [numpy_helper.from_array(packed, "q"), numpy_helper.from_array(scales, "s")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 10
    y = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    wd = dequantize_blockwise(packed, scales, bits, k)
    assert np.allclose(y, x @ wd.T, atol=1e-4)
    # the error is what the code allows: the block's extreme maps to -2^(bits-1) exactly, values
    # round to half a step, and the opposite end (clipped at 2^(bits-1) - 1) to within one step
    step = np.repeat(np.abs(scales.reshape(n, -1)), block, axis=1)[:, :k]
    err = np.abs(wd - w)
    assert np.all(err <= step + 1e-6) and np.mean(err <= 0.5 * step + 1e-6) > 0.95


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("k", [64, 96])      # 96 at block 32: an odd number of blocks (zero points padded)
@pytest.mark.parametrize("level", [0, 4])    # 4: int8 activations, the export default
def test_matmulnbits_with_zero_points_computes_with_the_dequantized_weight(bits, k, level):
    rng = np.random.default_rng(10 * bits + k + level)
    n, block = 48, 32
    w = rng.standard_normal((n, k)).astype(np.float32) + 0.5      # off-centre: zero points matter
    x = rng.standard_normal((5, k)).astype(np.float32)
    packed, scales, zp = quantize_blockwise_asymmetric(w, bits, block)
    node = helper.make_node("MatMulNBits", ["x", "q", "s", "z"], ["y"], domain="com.microsoft",
                            K=k, N=n, bits=bits, block_size=block, accuracy_level=level)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [5, n])],
                              [numpy_helper.from_array(packed, "q"), numpy_helper.from_array(scales, "s"),
                               numpy_helper.from_array(zp.reshape(-1), "z")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 10
    y = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    wd = dequantize_blockwise(packed, scales, bits, k, zp)
    ref = x @ wd.T
    # level 4 quantizes the activations to int8 per block: about 1 % of |x| |w| per product
    tol = 1e-4 if level == 0 else 0.02 * np.abs(x) @ np.abs(wd).T + 1e-3
    assert np.all(np.abs(y - ref) <= tol)
    # the asymmetric grid's step is (max - min) / (2^bits - 1): every value within half a step
    step = np.repeat(scales.reshape(n, -1), block, axis=1)[:, :k]
    assert np.all(np.abs(wd - w) <= 0.5 * step + 1e-5)
    # and tighter than the symmetric grid on off-centre weights
    sym = dequantize_blockwise(*quantize_blockwise(w, bits, block), bits, k)
    assert np.mean(np.abs(wd - w)) < np.mean(np.abs(sym - w))


def test_importance_weighted_int4_grid_never_loses_to_min_max():
    """With calibration importance, each block keeps the grid of least importance-weighted error;
    [min, max] is one of the candidates, so no block may be worse than it by that measure."""
    rng = np.random.default_rng(4)
    n, k, block = 64, 256, 32
    w = rng.standard_normal((n, k)).astype(np.float32)
    importance = rng.gamma(0.5, size=k).astype(np.float32)     # a few features dominate, as in LLMs
    plain = quantize_blockwise_asymmetric(w, 4, block)
    weighted = quantize_blockwise_asymmetric(w, 4, block, importance)
    err = {name: (np.square(dequantize_blockwise(q, s, 4, k, z) - w) * importance).reshape(n, -1, block).sum(axis=2)
           for name, (q, s, z) in (("plain", plain), ("weighted", weighted))}
    assert np.all(err["weighted"] <= err["plain"] + 1e-6)
    assert err["weighted"].sum() < 0.9 * err["plain"].sum()
    # int8 and no importance: the plain [min, max] grid, unchanged
    for bits in (4, 8):
        q8 = quantize_blockwise_asymmetric(w, bits, block, importance if bits == 8 else None)
        ref = quantize_blockwise_asymmetric(w, bits, block)
        assert all(np.array_equal(a, b) for a, b in zip(q8, ref))


def _output_error(w, packed, moments):
    """The mean squared error of the layer's output over inputs with second moments `moments`."""
    q, s, z = packed
    e = (dequantize_blockwise(q, s, 4, w.shape[1], z) - w).astype(np.float64)
    return np.einsum("ij,jk,ik->", e, moments, e) / w.shape[0]


def test_gptq_rounding_lowers_the_output_error():
    """GPTQ carries each column's rounding error into the columns not yet rounded, weighted by the
    inputs' correlations: on correlated inputs the output error falls well below nearest rounding
    on the same kind of grids (measured here: 0.005342 against 0.008548); on uncorrelated inputs nothing is
    carried and the result is nearest rounding, bit for bit."""
    rng = np.random.default_rng(7)
    n, k, t, block = 96, 160, 1000, 32     # 160: the last of 5 blocks is whole; k=150 below pads
    mix = np.eye(k) + 0.1 * rng.standard_normal((k, k))
    x = rng.standard_normal((t, k)) @ mix * np.where(rng.random(k) < 0.05, 4.0, 1.0)   # a few strong features
    moments = x.T @ x / t
    w = (0.05 * rng.standard_normal((n, k))).astype(np.float32)
    importance = np.diag(moments).copy()
    nearest = quantize_blockwise_asymmetric(w, 4, block, importance)
    carried = quantize_blockwise_asymmetric(w, 4, block, importance, gptq_factor(moments, k))
    err_nearest, err_carried = _output_error(w, nearest, moments), _output_error(w, carried, moments)
    print(f"output error: nearest {err_nearest:.6f}, GPTQ {err_carried:.6f}")
    assert err_carried < 0.75 * err_nearest
    diagonal = np.diag(importance)
    same = quantize_blockwise_asymmetric(w, 4, block, importance, gptq_factor(diagonal, k))
    assert all(np.array_equal(a, b) for a, b in zip(same, nearest))
    # through quantize_rows in chunks of rows, with a padded last block: the same rows as a whole
    w = w[:, :150]
    m = moments[:150, :150]
    whole = quantize_rows(Lazy("w", w.shape, lambda: w), 4, block, True, importance=np.diag(m).copy(), moments=m)
    chunked = quantize_rows(Lazy("w", w.shape, lambda: w), 4, block, True, rows=40, importance=np.diag(m).copy(),
                            moments=m)
    assert all(np.array_equal(whole[p], chunked[p]) for p in ("q", "scales", "zero_points"))
    plain = quantize_rows(Lazy("w", w.shape, lambda: w), 4, block, True, importance=np.diag(m).copy())
    assert _output_error(w, (whole["q"], whole["scales"], whole["zero_points"]), m) < \
        0.75 * _output_error(w, (plain["q"], plain["scales"], plain["zero_points"]), m)
