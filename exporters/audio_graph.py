"""audio/encoder.onnx from the reference modules: torch.onnx.export (dynamo) of the tower, embed_audio's
soft path and the padding, then, for int8, each large MatMul with a constant weight becomes a
MatMulNBits (8 bits, blocks along the input dimension), as the decoder's linears are."""
from __future__ import annotations

import os
from contextlib import contextmanager

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.external_data_helper import load_external_data_for_tensor

from .onnx_graph import MS_DOMAIN
from .quantize import MIN_DIM, quantize_blockwise

DATA_SUFFIX = ".data"     # the name torch.onnx gives the external data file


def _wrapper(tower, embed, pad: np.ndarray, tokens: int):
    import torch

    class AudioSoftEmbeddings(torch.nn.Module):
        """features [N, T, mel], mask [N, T] (True = valid) -> [N, tokens, D], as Gemma3nModel merges them."""

        def __init__(self):
            super().__init__()
            self.tower, self.embed = tower, embed
            self.register_buffer("pad", torch.from_numpy(np.ascontiguousarray(pad, np.float32)).view(1, 1, -1))

        def forward(self, features, mask):
            out = self.tower(features, ~mask, return_dict=True)   # the tower takes True = padded
            soft = self.embed(inputs_embeds=out.last_hidden_state)
            soft = torch.where(out.audio_mel_mask.unsqueeze(-1), self.pad, soft)
            tail = self.pad.expand(soft.shape[0], tokens, soft.shape[2])
            return torch.cat([soft, tail], dim=1)[:, :tokens]      # missing positions: the padding row

    return AudioSoftEmbeddings().eval()


@contextmanager
def _traceable_blocks():
    """The reference pads the time axis to whole attention chunks only `if` padding is needed: an
    export traced at one length bakes that branch and the pad size in. Padding by (-t) % chunk,
    zero rows when none are needed, is the same computation for every length."""
    from transformers.models.gemma3n.modeling_gemma3n import Gemma3nAudioAttention

    def convert_to_block(self, hidden_states):
        b, t = hidden_states.shape[:2]
        hidden_states = self._pad_dim1(hidden_states, 0, (-t) % self.chunk_size)
        return hidden_states.reshape((b, -1, self.chunk_size) + tuple(hidden_states.shape[2:])).contiguous()

    original = Gemma3nAudioAttention._convert_to_block
    Gemma3nAudioAttention._convert_to_block = convert_to_block
    try:
        yield
    finally:
        Gemma3nAudioAttention._convert_to_block = original


def export_encoder(modules: list, pad: np.ndarray, tokens: int, path: str, quant: str, block: int, mel: int) -> int:
    """Write the graph to `path` and its weights beside it; returns the weight bytes. `modules`
    ([tower, embed]) is emptied, so that the torch weights can be freed before the int8 pass."""
    import torch

    module = _wrapper(*modules, pad, tokens)
    modules.clear()
    features = torch.zeros(1, 200, mel)
    mask = torch.ones(1, 200, dtype=torch.bool)
    n = t = torch.export.Dim.DYNAMIC
    with torch.no_grad(), _traceable_blocks():
        program = torch.onnx.export(module, (features, mask), dynamo=True, input_names=["features", "mask"],
                                    output_names=["embeddings"], verbose=False,
                                    dynamic_shapes={"features": {0: n, 1: t}, "mask": {0: n, 1: t}})
    del module
    fp32 = path + ".fp32" if quant == "int8" else path
    program.save(fp32, external_data=True)       # streams the weights out; no second copy in memory
    del program
    if quant == "int8":
        # the fp32 weights are read one at a time from the file just written, never all at once
        model = onnx.load(fp32, load_external_data=False)
        _matmuls_to_nbits(model, block, os.path.dirname(fp32))
        onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                        location=os.path.basename(path) + DATA_SUFFIX, size_threshold=1024)
        for f in (fp32, fp32 + DATA_SUFFIX):
            os.remove(f)
    return os.path.getsize(path + DATA_SUFFIX)


def _matmuls_to_nbits(model: onnx.ModelProto, block: int, base_dir: str) -> None:
    """MatMul(x, W[K, N] constant) -> MatMulNBits(x, q(W^T), scales), 8 bits, for K and N >= MIN_DIM.
    Weights whose data is external (under base_dir) are read one at a time; the ones kept are
    brought into the model, so it can be saved elsewhere."""
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    nodes = []
    for node in graph.node:
        w = inits.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) == 2 else None
        if w is None or len(w.dims) != 2 or min(w.dims) < MIN_DIM:
            nodes.append(node)
            continue
        k, n = w.dims
        q, s = quantize_blockwise(numpy_helper.to_array(w, base_dir).T.astype(np.float32), 8, block)
        qi = numpy_helper.from_array(q, node.name + ".q8")
        si = numpy_helper.from_array(s, node.name + ".scales")
        graph.initializer.extend([qi, si])
        nodes.append(helper.make_node("MatMulNBits", [node.input[0], qi.name, si.name], list(node.output),
                                      name=node.name + "NBits", domain=MS_DOMAIN, K=k, N=n, bits=8,
                                      block_size=block, accuracy_level=4))
        uses[w.name] -= 1
    del graph.node[:]
    graph.node.extend(nodes)
    keep = [i for i in graph.initializer if uses.get(i.name, 0) > 0 or i.name.endswith((".q8", ".scales"))]
    for t in keep:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            load_external_data_for_tensor(t, base_dir)
            t.data_location = onnx.TensorProto.DEFAULT
            del t.external_data[:]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
