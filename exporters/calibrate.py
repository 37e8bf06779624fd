"""Calibration for int4: the second moments of each linear's inputs, measured on text.

The decoder is exported once at int8 into a scratch bundle (its activations are within about
0.003 KL of fp32), the runtime feeds it a calibration text, and every int4-bound linear's input
x [K] is read back: moments[key] is the mean of x x^T [K, K] over the text's positions (E2B: 185
such inputs, 1.96 GiB), or with `full=False` its diagonal alone. The scratch graph runs its final
block and norm over every position (DecoderGraph.every_position), so the LM head and AltUp's
unembedding are measured on the whole text too, not on the last position of each chunk. The
diagonal (how much each input feature matters) picks each block's int4 grid in quantize.py; the
whole matrix lets the rounding carry each column's error into the columns after it (GPTQ).
Measured on the real Gemma 3 270M (bench/quality.py): mean KL to fp32 0.136 -> 0.080 from the
grids at the same bytes.
"""
from __future__ import annotations

import os

import numpy as np
import onnx
from onnx import TensorProto, helper

from gemma3n_rt.errors import Gemma3nError

CALIBRATION_TEXT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "calibration.txt")
MAX_TOKENS = 2048


def calibration_ids(tokenizer, path: str, bos: int, tokens: int = MAX_TOKENS) -> list[int]:
    """`<bos>` and the text's first tokens; read before anything is exported, so a bad file fails fast."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise Gemma3nError(f"{path}: cannot read the calibration text ({e})") from None
    ids = [bos] + tokenizer.encode(text)
    if len(ids) < 64:
        raise Gemma3nError(f"{path}: {len(ids)} tokens of calibration text, at least 64 are needed")
    return ids[:tokens]


class _Tap:
    """A decoder session that also returns the named activations and keeps their sums of x x^T
    (float32 [K, K]), or with `full=False` of x^2 (float64 [K])."""

    def __init__(self, session, taps: dict[str, list[str]], full: bool):
        self.session, self.taps, self.full = session, taps, full    # taps: activation name -> the linears it feeds
        self.sums: dict[str, np.ndarray] = {}
        self.positions = 0

    def run(self, names, feeds, options=None):
        out = self.session.run(list(names) + list(self.taps), feeds, options)
        for value, name in zip(out[len(names):], self.taps):
            x = value.reshape(-1, value.shape[-1])
            part = x.T @ x if self.full else np.square(x.astype(np.float64)).sum(axis=0)
            if name in self.sums:
                self.sums[name] += part
            else:
                self.sums[name] = part
        self.positions += len(feeds["positions"])
        return out[:len(names)]


def measure_moments(bundle_dir: str, graph_file: str, taps: dict[str, list[str]], ids: list[int],
                    full: bool = True, threads: int | None = None) -> dict[str, np.ndarray]:
    """Run `ids` through the bundle's decoder; per linear key, the mean x x^T [K, K] of its input,
    or with `full=False` the mean x^2 [K] (linears that read the same activation share one array)."""
    import gemma3n_rt
    from gemma3n_rt.sessions import create_session
    path = os.path.join(bundle_dir, graph_file)
    model_proto = onnx.load(path, load_external_data=False)
    model_proto.graph.output.extend(helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in taps)
    tapped = path[:-len(".onnx")] + ".tapped.onnx"      # beside the graph: the external data paths hold
    onnx.save(model_proto, tapped)
    model = gemma3n_rt.load(bundle_dir, context=len(ids), threads=threads)
    model.decoder.close()       # the untapped session goes before the tapped one is made
    tap = _Tap(create_session(tapped, threads), taps, full)
    model.decoder.session = tap
    model.next_token_logits(ids)
    model.decoder.close()
    moments = {}
    for name, keys in taps.items():
        m = tap.sums.pop(name)
        m /= tap.positions
        # a feature never active still gets a tiny weight, never 0 for a whole block
        if full:
            m[np.diag_indices_from(m)] += 1e-12
        else:
            m += 1e-12
        moments.update(dict.fromkeys(keys, m))
    return moments
