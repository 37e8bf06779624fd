"""Prepacked weights written once beside the graph and mapped on later loads (sessions.py)."""
import logging
import os
import shutil

import numpy as np
import pytest

import gemma3n_rt
from gemma3n_rt import cli, sessions


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


def own_copy(export_tiny, tmp_path):
    """A tiny int4 bundle of this test's own (the cached one is shared with other tests)."""
    _, bundle = export_tiny(0, "int4")
    return shutil.copytree(bundle, tmp_path / "bundle", ignore=shutil.ignore_patterns(".prepacked*"))


def prepacked_copies(bundle) -> list:
    return [d for d in os.listdir(bundle / "text") if d.startswith(".prepacked")]


IDS = [2, 17, 400, 9, 1234, 88, 5]


def test_decoders_map_a_prepacked_copy_by_default(export_tiny, tmp_path, monkeypatch):
    bundle = own_copy(export_tiny, tmp_path)
    monkeypatch.delenv(sessions.PREPACKED_ENV, raising=False)
    monkeypatch.setattr(sessions, "MIN_PREPACKED_BYTES", 0)
    model = gemma3n_rt.load(str(bundle), context=64)
    assert sessions.maps_prepacked(model.bundle.file(model.decoder.spec.graph))
    assert len(prepacked_copies(bundle)) == 1
    monkeypatch.setenv(sessions.PREPACKED_ENV, "0")
    assert not sessions.maps_prepacked(model.bundle.file(model.decoder.spec.graph))


def test_no_copy_where_the_disk_lacks_room(export_tiny, tmp_path, monkeypatch):
    bundle = own_copy(export_tiny, tmp_path)
    monkeypatch.setattr(sessions, "MIN_PREPACKED_BYTES", 0)
    monkeypatch.setattr(sessions.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(1 << 40, 1 << 40, 0))
    gemma3n_rt.load(str(bundle), context=64)
    assert not prepacked_copies(bundle)


def test_a_failed_or_damaged_copy_falls_back_to_the_graph(export_tiny, tmp_path, monkeypatch, caplog):
    bundle = own_copy(export_tiny, tmp_path)
    monkeypatch.setenv(sessions.PREPACKED_ENV, "0")
    plain = gemma3n_rt.load(str(bundle), context=64).next_token_logits(IDS)
    monkeypatch.setenv(sessions.PREPACKED_ENV, "1")
    monkeypatch.setattr(sessions, "MIN_PREPACKED_BYTES", 0)

    # onnxruntime fails to write the copy (as on a full disk): a warning, no partial copy left
    monkeypatch.setattr(sessions, "OPTIMIZED_DATA", os.path.join("missing", "weights.bin"))
    with caplog.at_level("WARNING", logger="gemma3n_rt"):
        logits = gemma3n_rt.load(str(bundle), context=64).next_token_logits(IDS)
    assert np.array_equal(logits, plain)
    assert not prepacked_copies(bundle)
    assert "could not write its prepacked weights" in caplog.text
    monkeypatch.undo()

    # a damaged copy is passed over with a warning
    monkeypatch.setenv(sessions.PREPACKED_ENV, "1")
    monkeypatch.setattr(sessions, "MIN_PREPACKED_BYTES", 0)
    gemma3n_rt.load(str(bundle), context=64)
    (copy,) = prepacked_copies(bundle)
    (bundle / "text" / copy / sessions.OPTIMIZED_GRAPH).write_bytes(b"not a graph")
    caplog.clear()
    with caplog.at_level("WARNING", logger="gemma3n_rt"):
        logits = gemma3n_rt.load(str(bundle), context=64).next_token_logits(IDS)
    assert np.array_equal(logits, plain)
    assert "could not load its prepacked copy" in caplog.text


def test_gemma3n_run_says_when_it_writes_the_copy(export_tiny, tmp_path, monkeypatch, capsys):
    bundle = own_copy(export_tiny, tmp_path)
    monkeypatch.setenv(sessions.PREPACKED_ENV, "1")
    monkeypatch.setattr(sessions, "MIN_PREPACKED_BYTES", 0)
    assert cli.main(["--model", str(bundle), "--max-new-tokens", "2", "--temperature", "0", "Hello"]) == 0
    assert "writing its prepacked weights for this CPU once" in capsys.readouterr().err
    assert not logging.getLogger("gemma3n_rt").handlers      # nothing left bound to this command's stderr
    assert cli.main(["--model", str(bundle), "--max-new-tokens", "2", "--temperature", "0", "Hello"]) == 0
    assert "writing" not in capsys.readouterr().err           # written once
