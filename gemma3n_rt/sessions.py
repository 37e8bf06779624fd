"""The one place that creates onnxruntime sessions: options, threads, providers and the one-line
error on a graph that can't be loaded. A GPU execution provider later is one argument here."""
from __future__ import annotations

import onnxruntime as ort

from .errors import Gemma3nError

CPU = ("CPUExecutionProvider",)


def session_options(threads: int | None, memory_pattern: bool = True) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.enable_mem_pattern = memory_pattern
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads or 0   # 0: one per physical core
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return opts


def create_session(path: str, threads: int | None = None, providers=CPU,
                   memory_pattern: bool = True) -> ort.InferenceSession:
    """An inference session for the graph at `path` (its external data beside it). memory_pattern=False
    plans no single block for all intermediate tensors: for a convolutional encoder that block is
    larger than the tensors alive at any one time."""
    try:
        return ort.InferenceSession(path, session_options(threads, memory_pattern), providers=list(providers))
    except Exception as e:  # onnxruntime raises its own exception types; keep the first line
        raise Gemma3nError(f"{path}: onnxruntime could not load it: {str(e).splitlines()[0]}") from None
