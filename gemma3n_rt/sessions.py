"""The one place that creates onnxruntime sessions: options, threads, providers and the one-line
error on a graph that can't be loaded. A GPU execution provider later is one argument here."""
from __future__ import annotations

import onnxruntime as ort

from .errors import Gemma3nError

CPU = ("CPUExecutionProvider",)


def session_options(threads: int | None) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads or 0   # 0: one per physical core
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return opts


def create_session(path: str, threads: int | None = None, providers=CPU) -> ort.InferenceSession:
    """An inference session for the graph at `path` (its external data beside it)."""
    try:
        return ort.InferenceSession(path, session_options(threads), providers=list(providers))
    except Exception as e:  # onnxruntime raises its own exception types; keep the first line
        raise Gemma3nError(f"{path}: onnxruntime could not load it: {str(e).splitlines()[0]}") from None
