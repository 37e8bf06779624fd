"""The one place that creates onnxruntime sessions: options, threads, providers and the one-line
error on a graph that can't be loaded. A GPU execution provider later is one argument here.

Prepacked weights, mapped: onnxruntime rearranges (prepacks) MatMulNBits weights at every session
creation into anonymous memory, which the kernel can't reclaim under pressure. The first load of a
graph therefore also writes onnxruntime's optimized model with its prepacked initializers in an
external file (`session.save_external_prepacked_constant_initializers`), in a directory beside
the graph named after this machine's onnxruntime version and CPU; later loads open that model,
whose prepacked weights stay file-backed (mapped, reclaimable page cache). The copy holds the
graph's own weights too (onnxruntime reads a prepacked blob from the file of its tensor), so it
takes about twice their size on disk. The session is made the usual way where
GEMMA3N_PREPACKED=0, where the graphs and their weights hold under 64 MiB, where their folder
can't be written or lacks the room, or where writing or loading the copy fails.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil

import onnxruntime as ort

from .errors import Gemma3nError

CPU = ("CPUExecutionProvider",)
PREPACKED_ENV = "GEMMA3N_PREPACKED"
OPTIMIZED_GRAPH, OPTIMIZED_DATA = "graph.onnx", "weights.bin"
MIN_PREPACKED_BYTES = 64 << 20   # smaller graphs (the demo, test models) load fast enough as they are
# the copy is the graph's weights plus their prepacked forms (3.93 GB for E2B's 2.04 GB); leave a margin
COPY_ROOM_FACTOR, COPY_ROOM_MARGIN = 2.5, 1 << 30
log = logging.getLogger("gemma3n_rt")


def session_options(threads: int | None, memory_pattern: bool = True) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.enable_mem_pattern = memory_pattern
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads or 0   # 0: one per physical core
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    # prepack MatMulNBits weights on every thread: E2B's session was ready in 2.3 s instead of
    # 4.3 s (2 threads, measured in one process), with bit-identical logits
    opts.add_session_config_entry("session.prepack.enable_parallel", "1")
    return opts


def create_session(path: str, threads: int | None = None, providers=CPU,
                   memory_pattern: bool = True, prepacked: bool = False) -> ort.InferenceSession:
    """An inference session for the graph at `path` (its external data beside it). memory_pattern=False
    plans no single block for all intermediate tensors: for a convolutional encoder that block is
    larger than the tensors alive at any one time. prepacked: map a prepacked copy where
    maps_prepacked() allows (the decoders; the encoders load once per input and are released)."""
    try:
        if prepacked and tuple(providers) == CPU and maps_prepacked(path):
            cached = _prepacked_session(path, threads, memory_pattern)
            if cached is not None:
                return cached
        return ort.InferenceSession(path, session_options(threads, memory_pattern), providers=list(providers))
    except Exception as e:  # onnxruntime raises its own exception types; keep the first line
        raise Gemma3nError(f"{path}: onnxruntime could not load it: {_first_line(e)}") from None


def _first_line(e: Exception) -> str:
    """onnxruntime's messages run to many lines; the first says what went wrong."""
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def maps_prepacked(path: str) -> bool:
    """Whether a CPU session for the graph at `path` maps a prepacked copy: unless GEMMA3N_PREPACKED=0,
    for graphs of at least MIN_PREPACKED_BYTES whose copy exists or can be written beside them."""
    if os.environ.get(PREPACKED_ENV, "1") == "0":
        return False
    folder = os.path.dirname(os.path.abspath(path))
    # the graphs and their external data; row tables (.safetensors) are read by rows, never copied
    data = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder)
               if os.path.isfile(os.path.join(folder, f)) and not f.endswith(".safetensors"))
    if data < MIN_PREPACKED_BYTES:
        return False
    if os.path.isfile(os.path.join(prepacked_dir(path), OPTIMIZED_GRAPH)):
        return True
    return os.access(folder, os.W_OK) and shutil.disk_usage(folder).free >= COPY_ROOM_FACTOR * data + COPY_ROOM_MARGIN


def prepacked_dir(path: str) -> str:
    """Where the optimized, prepacked copy of the graph at `path` lives: beside it, keyed by the
    graph's files, the onnxruntime version and the CPU (prepacked layouts depend on both)."""
    key = hashlib.sha256()
    folder = os.path.dirname(os.path.abspath(path))
    for name in sorted(os.listdir(folder)):   # the graph and its external data files
        full = os.path.join(folder, name)
        if os.path.isfile(full):
            st = os.stat(full)
            key.update(f"{name}:{st.st_size}:{st.st_mtime_ns};".encode())
    key.update(ort.__version__.encode() + _cpu_flags().encode())
    return os.path.join(folder, f".prepacked-{os.path.basename(path)}-{key.hexdigest()[:16]}")


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line
    except OSError:
        pass
    return ""


def _prepacked_session(path: str, threads: int | None, memory_pattern: bool) -> ort.InferenceSession | None:
    target = prepacked_dir(path)
    if not os.path.isfile(os.path.join(target, OPTIMIZED_GRAPH)):
        if not _write_prepacked(path, target, threads, memory_pattern):
            return None
    opts = session_options(threads, memory_pattern)
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL   # optimized already
    try:
        return ort.InferenceSession(os.path.join(target, OPTIMIZED_GRAPH), opts, providers=list(CPU))
    except Exception as e:   # a damaged copy: the graph itself may still load
        log.warning("%s: could not load its prepacked copy %s (%s); loading without it", path, target, _first_line(e))
        return None


def _write_prepacked(path: str, target: str, threads: int | None, memory_pattern: bool) -> bool:
    """Write the optimized model into a temporary directory and rename it into place; False where
    that fails (the directory is not writable, the disk fills up): the caller loads the usual way."""
    tmp = f"{target}.partial-{os.getpid()}"
    try:
        os.makedirs(tmp)
    except OSError:
        return False
    log.info("%s: writing its prepacked weights for this CPU once, to %s", path, target)
    try:
        opts = session_options(threads, memory_pattern)
        opts.optimized_model_filepath = os.path.join(tmp, OPTIMIZED_GRAPH)
        opts.add_session_config_entry("session.save_external_prepacked_constant_initializers", "1")
        opts.add_session_config_entry("session.optimized_model_external_initializers_file_name", OPTIMIZED_DATA)
        opts.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
        ort.InferenceSession(path, opts, providers=list(CPU))
        os.rename(tmp, target)
        return True
    except Exception as e:   # another process put it there first, or the disk is full (onnxruntime's own error)
        if os.path.isfile(os.path.join(target, OPTIMIZED_GRAPH)):
            return True
        log.warning("%s: could not write its prepacked weights (%s); loading without them", path, _first_line(e))
        return False
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
