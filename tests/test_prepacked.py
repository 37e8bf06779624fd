"""Prepacked weights written once beside the graph and mapped on later loads (sessions.py)."""
import os

import numpy as np
import pytest

import gemma3n_rt
from gemma3n_rt import sessions


@pytest.mark.parametrize("quant", ["int4", "fp32"])
def test_prepacked_copy_is_written_once_and_gives_the_same_logits(export_tiny, monkeypatch, quant):
    _, bundle = export_tiny(0, quant)
    ids = [2, 17, 400, 9, 1234, 88, 5]
    monkeypatch.setenv(sessions.PREPACKED_ENV, "0")
    plain = gemma3n_rt.load(str(bundle), context=64).next_token_logits(ids)
    text = bundle / "text"
    assert not [d for d in os.listdir(text) if d.startswith(".prepacked")]

    monkeypatch.setenv(sessions.PREPACKED_ENV, "1")
    monkeypatch.setattr(sessions, "MIN_PREPACKED_BYTES", 0)
    first = gemma3n_rt.load(str(bundle), context=64).next_token_logits(ids)
    made = [d for d in os.listdir(text) if d.startswith(".prepacked")]
    assert len(made) == 1 and not made[0].count(".partial")
    data = text / made[0] / sessions.OPTIMIZED_DATA
    stamp = os.stat(data).st_mtime_ns
    second = gemma3n_rt.load(str(bundle), context=64).next_token_logits(ids)
    assert os.stat(data).st_mtime_ns == stamp            # reused, not rewritten
    assert np.array_equal(first, plain) and np.array_equal(second, plain)


def test_a_changed_graph_gets_a_new_prepacked_copy(tmp_path):
    graph = tmp_path / "decoder.full.onnx"
    graph.write_bytes(b"graph")
    (tmp_path / "weights.bin").write_bytes(b"weights")
    before = sessions.prepacked_dir(str(graph))
    assert os.path.dirname(before) == str(tmp_path)
    os.utime(tmp_path / "weights.bin", ns=(1, 1))
    assert sessions.prepacked_dir(str(graph)) != before
