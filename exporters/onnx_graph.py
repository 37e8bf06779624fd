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
FLOAT, FLOAT16, INT64 = TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.INT64


@dataclass(frozen=True)
class WeightRef:
    """An initializer: a tensor of the bundle's weights store, or a range of its rows (a view,
    no copy: MatFormer slices point into the same bytes)."""
    key: str                              # the stored tensor, shared by every graph that uses it
    lazy: Lazy                            # produces the whole stored tensor
    rows: tuple[int, int] | None = None   # a range of its first dimension (of `shape`, if given)
    shape: tuple[int, ...] | None = None  # the same bytes seen with another shape


@dataclass
class Linear:
    nodes: list[onnx.NodeProto]   # the Gemm nodes computing x @ W.T (a weight may serve several)
    weight: str                   # initializer name
    key: str                      # stored tensor: W in PyTorch layout [out_features, in_features]
    source: Lazy
    rows: tuple[int, int] | None  # the output features used, a range of W's rows
    int8_matmul: bool = False     # quantized, an int8 x int8 matmul on a transposed copy (prompt chunks)


@dataclass
class RowGather:
    """A Gather of rows of a stored weight (W[idx], float), which quantization turns into a
    gather of the quantized rows that dequantizes only them (GatherBlockQuantized)."""
    node: onnx.NodeProto
    key: str
    source: Lazy
    rows: tuple[int, int] | None
    density: float    # the expected fraction of the rows one call gathers


class Graph:
    def __init__(self, name: str):
        self.name = name
        self.nodes: list[onnx.NodeProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self.consts: dict[str, np.ndarray] = {}   # small constants, stored inside the graph file
        self.weights: dict[str, WeightRef] = {}   # big tensors, stored as external data
        self.linears: dict[str, Linear] = {}
        self.row_gathers: list[RowGather] = []
        self._branches: dict[str, tuple] = {}    # If node name -> (then, else): (nodes, outputs) each
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

    def weight(self, key: str, lazy: Lazy, rows: tuple[int, int] | None = None,
               shape: tuple[int, ...] | None = None) -> str:
        """Register an external weight (or a row range of one, or its bytes seen with another
        shape); using it again is fine."""
        name = key if shape is None else f"{key}@{'x'.join(map(str, shape))}"
        name = name if rows is None else f"{name}[{rows[0]}:{rows[1]}]"
        ref = WeightRef(key, lazy, rows, shape)
        if name in self.weights and self.weights[name].lazy is not lazy:
            raise AssertionError(f"two different weights named {name}")
        self.weights[name] = ref
        return name

    def linear(self, x: str, w: Lazy, key: str, rows: tuple[int, int] | None = None, int8_matmul: bool = False) -> str:
        """x @ w[a:b].T for a PyTorch-layout weight w [out, in] and x of rank 2: Gemm with transB,
        so the stored layout is w itself and a range of output features is a range of bytes.
        `int8_matmul`: quantization makes it an int8 x int8 matmul instead of MatMulNBits."""
        name = self.weight(key, w, rows)
        record = name + ("|int8_matmul" if int8_matmul else "")
        if record not in self.linears:
            self.linears[record] = Linear([], name, key, w, rows, int8_matmul)
        y = self.op("Gemm", x, name, transB=1)
        self.linears[record].nodes.append(self.nodes[-1])
        return y

    def gather_rows(self, w: Lazy, key: str, idx: str, rows: tuple[int, int] | None = None,
                    density: float = 1.0) -> str:
        """w[idx] for a weight w [rows, in] and int64 indices idx [n] (below the row range's length):
        [n, in], reading only those rows, about `density` of them."""
        y = self.op("Gather", self.weight(key, w, rows), idx, axis=0)
        self.row_gathers.append(RowGather(self.nodes[-1], key, w, rows, density))
        return y

    def cond(self, condition: str, then_branch, else_branch):
        """An If node: each branch is a function that builds its nodes (which may use any value
        or weight of the graph) and returns its output, or a list of outputs (then so does cond)."""
        bodies = []
        for build in (then_branch, else_branch):
            outer, self.nodes = self.nodes, []
            try:
                out = build()
                bodies.append((self.nodes, [out] if isinstance(out, str) else list(out)))
            finally:
                self.nodes = outer
        count = len(bodies[0][1])
        assert count == len(bodies[1][1]), "If branches must have as many outputs"
        y = self.op("If", condition, outputs=count)
        self._branches[self.nodes[-1].name] = tuple(bodies)
        if isinstance(out, str):
            return y
        return [y] if count == 1 else y

    def replace(self, node: onnx.NodeProto, new: list[onnx.NodeProto]) -> None:
        """Put the nodes `new` where `node` is, in the graph or in an If branch."""
        for nodes in [self.nodes] + [body for bodies in self._branches.values() for body, _ in bodies]:
            for i, n in enumerate(nodes):
                if n is node:
                    nodes[i:i + 1] = new
                    return
        raise KeyError(node.name)

    def _all_nodes(self, nodes=None, then_only: bool = False) -> list[onnx.NodeProto]:
        """Every node, those of If branches included (with `then_only`, only then-branches)."""
        out = []
        for n in self.nodes if nodes is None else nodes:
            out.append(n)
            for body, _ in self._branches.get(n.name, ())[:1 if then_only else 2]:
                out += self._all_nodes(body, then_only)
        return out

    @staticmethod
    def _gathered_only(nodes: list[onnx.NodeProto], sizes: dict[str, int]) -> tuple[set[str], set[str]]:
        """Of the weights `nodes` read: all of them, and those only row gathers read."""
        readers: dict[str, set[str]] = {}
        for n in nodes:
            for name in n.input:
                if name in sizes:
                    readers.setdefault(name, set()).add(n.op_type)
        return set(readers), {name for name, ops in readers.items() if ops <= {"Gather", "GatherBlockQuantized"}}

    def gathered_bytes(self, sizes: dict[str, int]) -> int:
        """Bytes of the weights that only row gathers read (onnxruntime maps them and never
        prepacks them: they stay file-backed), given each initializer's bytes by name."""
        return sum(sizes[name] for name in self._gathered_only(self._all_nodes(), sizes)[1])

    def then_bytes(self, sizes: dict[str, int]) -> int:
        """Weight bytes one run reads when every If takes its then-branch, the weights' bytes given by
        initializer name; a weight only gathered from counts at the gathers' density."""
        density = {}
        for g in self.row_gathers:   # quantized gathers read their scales and zero points alike
            density.update({name: g.density for name in (g.node.input[0], *g.node.input[2:])})
        used, gathered = self._gathered_only(self._all_nodes(then_only=True), sizes)
        return sum(sizes[name] for name in used - gathered) + sum(round(sizes[name] * density[name]) for name in gathered)

    def _with_branches(self, node: onnx.NodeProto) -> onnx.NodeProto:
        """The If node with its subgraphs, made from the branch node lists as they are now (the
        quantization pass rewrites nodes in place after building)."""
        if node.name not in self._branches:
            return node
        full = onnx.NodeProto()
        full.CopyFrom(node)
        for attr, (nodes, outs) in zip(("then_branch", "else_branch"), self._branches[node.name]):
            body = helper.make_graph([self._with_branches(n) for n in nodes], f"{node.name}/{attr}", [],
                                     [helper.make_tensor_value_info(out, FLOAT, None) for out in outs])
            full.attribute.append(helper.make_attribute(attr, body))
        return full

    def make_model(self, initializers: list[onnx.TensorProto]) -> onnx.ModelProto:
        consts = [numpy_helper.from_array(a, n) for n, a in self.consts.items()]
        graph = helper.make_graph([self._with_branches(n) for n in self.nodes], self.name, self.inputs, self.outputs,
                                  consts + initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(MS_DOMAIN, 1)],
                                  producer_name="gemma3n-export")
        model.ir_version = 10
        return model
