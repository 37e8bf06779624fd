"""A disk that fills up during an export: one line, no partial bundle, and with --force the old
bundle is kept as it was. The full disk is simulated by the exporter's file writes failing with
ENOSPC once a byte budget is spent."""
from __future__ import annotations

import errno
import os

import pytest

import exporters.export
import exporters.writer
from bench.synthetic import write_random_checkpoint
from exporters import cli as export_cli
from gemma3n_rt.bundle import Bundle

TINY = {"model_type": "gemma3n_text", "hidden_size": 32, "num_hidden_layers": 4, "intermediate_size": [64] * 4,
        "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16, "hidden_size_per_layer_input": 8,
        "vocab_size": 2048 + 64, "vocab_size_per_layer_input": 2048, "laurel_rank": 4, "num_kv_shared_layers": 2,
        "sliding_window": 16, "max_position_embeddings": 4096, "activation_sparsity_pattern": [0.95, 0.0, 0.0, 0.0],
        "layer_types": ["sliding_attention", "full_attention", "sliding_attention", "full_attention"]}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, demo_tokenizer_path):
    ckpt = tmp_path_factory.mktemp("diskfull") / "ckpt"
    write_random_checkpoint(str(ckpt), TINY, seed=0, tokenizer=str(demo_tokenizer_path))
    return ckpt


class _FillingFile:
    """A file whose writes fail with ENOSPC once the disk's remaining bytes are spent."""

    def __init__(self, f, disk):
        self._f, self._disk = f, disk

    def write(self, data):
        n = memoryview(data).nbytes if not isinstance(data, str) else len(data.encode())
        if n > self._disk["left"]:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._disk["left"] -= n
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


def fill_disk_after(monkeypatch, nbytes: int) -> dict:
    disk = {"left": nbytes}
    real_open = open

    def opener(path, mode="r", *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        return _FillingFile(f, disk) if set(mode) & set("wax+") else f
    for module in (exporters.writer, exporters.export):     # the writers of tables, weights and manifest
        monkeypatch.setattr(module, "open", opener, raising=False)
    return disk


@pytest.fixture(scope="module")
def fp32_bytes(checkpoint, tmp_path_factory) -> int:
    """What an fp32 export writes through those writers (tables, weights store, manifest)."""
    with pytest.MonkeyPatch.context() as mp:
        disk = fill_disk_after(mp, 1 << 40)
        assert export_cli.main([str(checkpoint), str(tmp_path_factory.mktemp("fp32") / "b"), "--quiet",
                                "--quant", "fp32", "--tables", "fp32"]) == 0
    return (1 << 40) - disk["left"]


# where the disk fills: at once, in the row tables, in the weights store, in the manifest (the last write)
WHERE = [lambda total: 0, lambda total: 20_000, lambda total: total // 2, lambda total: total - 100]


def snapshot(directory):
    return {p.relative_to(directory): p.read_bytes() for p in directory.rglob("*") if p.is_file()}


@pytest.mark.parametrize("where", WHERE)
def test_disk_full_leaves_nothing(checkpoint, fp32_bytes, tmp_path, monkeypatch, capsys, where):
    out = tmp_path / "parent" / "bundle"
    fill_disk_after(monkeypatch, where(fp32_bytes))
    assert export_cli.main([str(checkpoint), str(out), "--quiet", "--quant", "fp32", "--tables", "fp32"]) == 2
    err = capsys.readouterr().err
    assert err == f"gemma3n-export: error: {out}: disk full (No space left on device); the partial export was " \
                  f"removed and nothing was written\n"
    assert not out.exists() and os.listdir(out.parent) == []


@pytest.mark.parametrize("where", WHERE)
def test_disk_full_with_force_keeps_the_old_bundle(checkpoint, fp32_bytes, tmp_path, monkeypatch, capsys, where):
    out = tmp_path / "bundle"
    assert export_cli.main([str(checkpoint), str(out), "--quiet"]) == 0
    before = snapshot(out)
    capsys.readouterr()
    fill_disk_after(monkeypatch, where(fp32_bytes))
    argv = [str(checkpoint), str(out), "--quiet", "--force", "--quant", "fp32", "--tables", "fp32"]
    assert export_cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "disk full" in err and "the bundle already there is unchanged" in err, err
    assert snapshot(out) == before
    Bundle.open(out).verify()
    assert os.listdir(tmp_path) == ["bundle"]


def test_disk_full_in_the_graph_writer(checkpoint, tmp_path, monkeypatch, capsys):
    """onnx writes the graph file itself."""
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(exporters.writer.onnx, "save_model", full)
    out = tmp_path / "bundle"
    assert export_cli.main([str(checkpoint), str(out), "--quiet"]) == 2
    assert "disk full" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []
