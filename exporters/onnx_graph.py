"""A small ONNX graph builder: deterministic names, lazy external weights, recorded linears.

Weights are `Lazy` tensors, read from the checkpoint only when the graph is written, one at a
time, so building the graph of a 4-billion-parameter decoder takes almost no memory. Every
`linear` is recorded so that quantization can rewrite it as a pass after building.
"""
from __future__ import annotations

import contextlib
from collections import Counter
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .checkpoint import Lazy

OPSET = 20
MS_DOMAIN = "com.microsoft"
FLOAT, INT64 = TensorProto.FLOAT, TensorProto.INT64


@dataclass
class Linear:
    nodes: list[onnx.NodeProto]   # the MatMuls computing x @ W.T (a weight may serve several)
    weight: str                   # initializer name of W.T
    source: Lazy                  # W in PyTorch layout [out_features, in_features]


class Graph:
    def __init__(self, name: str):
        self.name = name
        self.nodes: list[onnx.NodeProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self.consts: dict[str, np.ndarray] = {}   # small constants, stored inside the graph file
        self.weights: dict[str, Lazy] = {}        # big tensors, stored as external data
        self.linears: dict[str, Linear] = {}
        self._scope: list[str] = []
        self._count: Counter = Counter()
        self._const_names: dict[tuple, str] = {}

    @contextlib.contextmanager
    def scope(self, name: str):
        self._scope.append(name)
        try:
            yield
        finally:
            self._scope.pop()

    def _fresh(self, op_type: str) -> str:
        base = "/" + "/".join(self._scope + [op_type])
        self._count[base] += 1
        k = self._count[base]
        return base if k == 1 else f"{base}_{k}"

    def op(self, op_type: str, *inputs: str, outputs: int = 1, domain: str = "", **attrs):
        name = self._fresh(op_type)
        outs = [f"{name}/out{i}" if outputs > 1 else f"{name}/out" for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=name, domain=domain or None, **attrs))
        return outs if outputs > 1 else outs[0]

    def input(self, name: str, elem_type: int, shape: list) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, elem_type, shape))
        return name

    def output(self, value: str, name: str, elem_type: int, shape: list) -> None:
        self.nodes.append(helper.make_node("Identity", [value], [name], name=f"/output/{name}"))
        self.outputs.append(helper.make_tensor_value_info(name, elem_type, shape))

    def const(self, value, dtype=np.float32) -> str:
        arr = np.asarray(value, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self._const_names:
            name = f"/const/{len(self._const_names)}"
            self._const_names[key] = name
            self.consts[name] = arr
        return self._const_names[key]

    def weight(self, name: str, lazy: Lazy) -> str:
        """Register an external weight; using the same tensor again under the same name is fine."""
        if name in self.weights and self.weights[name] is not lazy:
            raise AssertionError(f"two different weights named {name}")
        self.weights[name] = lazy
        return name

    def linear(self, x: str, w: Lazy, name: str) -> str:
        """x @ w.T for a PyTorch-layout weight w [out, in]; stored transposed for MatMul."""
        if name not in self.linears:
            out_f, in_f = w.shape
            self.weight(name, w.map(lambda a: np.ascontiguousarray(a.T), (in_f, out_f)))
            self.linears[name] = Linear([], name, w)
        elif self.linears[name].source is not w:
            raise AssertionError(f"two different linear weights named {name}")
        y = self.op("MatMul", x, name)
        self.linears[name].nodes.append(self.nodes[-1])
        return y

    def make_model(self, initializers: list[onnx.TensorProto]) -> onnx.ModelProto:
        consts = [numpy_helper.from_array(a, n) for n, a in self.consts.items()]
        graph = helper.make_graph(self.nodes, self.name, self.inputs, self.outputs, consts + initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(MS_DOMAIN, 1)],
                                  producer_name="gemma3n-export")
        model.ir_version = 10
        return model
