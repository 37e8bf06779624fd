"""The int4/int8 quantization pass: packing as onnxruntime's MatMulNBits reads it."""
import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from exporters.quantize import dequantize_blockwise, quantize_blockwise


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
