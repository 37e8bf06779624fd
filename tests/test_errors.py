"""Bad input gets one clear line on stderr and exit status 2, never a traceback.

Both CLIs are called in-process (`main(argv)`), plus once each as a real subprocess. The broken
checkpoints are copies of one good tiny checkpoint with a file or a tensor changed.
"""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from exporters import cli as export_cli
from gemma3n_rt import cli as run_cli
from gemma3n_rt.bundle import MANIFEST, Bundle
from gemma3n_rt.model import demo_bundle_path

REPO = Path(__file__).resolve().parent.parent
PREFIX = "model.language_model."
VICTIM = PREFIX + "layers.3.mlp.down_proj.weight"


def one_line_error(capsys, prog: str, *needles: str) -> str:
    """stderr is exactly one line, `prog: error: ...`, mentioning every needle."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.endswith("\n") and err.count("\n") == 1, f"not one line:\n{err}"
    line = err.rstrip("\n")
    assert line.startswith(f"{prog}: error:"), line
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    return line


def usage_error(capsys, main, argv, flag: str) -> str:
    """A flag argparse refuses: SystemExit(2) and one stderr line naming the flag, no usage block."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "usage:" not in err
    assert err.endswith("\n") and err.count("\n") == 1, f"not one line:\n{err}"
    line = err.rstrip("\n")
    assert flag in line, line
    return line


# --- gemma3n-export -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def good_ckpt(tmp_path_factory, demo_tokenizer_path) -> Path:
    from hf_reference import reference_model, save_checkpoint, tiny_text_config
    ckpt = tmp_path_factory.mktemp("good_ckpt")
    save_checkpoint(reference_model(tiny_text_config(), 0), str(ckpt), str(demo_tokenizer_path))
    return ckpt


@pytest.fixture
def ckpt(good_ckpt, tmp_path) -> Path:
    """A private copy of the good checkpoint, to break."""
    return Path(shutil.copytree(good_ckpt, tmp_path / "ckpt"))


def shard_of(ckpt: Path, name: str) -> Path:
    with open(ckpt / "model.safetensors.index.json") as f:
        return ckpt / json.load(f)["weight_map"][name]


def rewrite_shard(shard: Path, edit) -> None:
    tensors = load_file(str(shard))
    edit(tensors)
    save_file(tensors, str(shard))


def export(capsys, *argv: str) -> int:
    capsys.readouterr()
    return export_cli.main([*map(str, argv), "--quiet"])


def test_export_missing_checkpoint_dir(capsys, tmp_path):
    missing = tmp_path / "nope"
    assert export(capsys, missing, tmp_path / "out") == 2
    one_line_error(capsys, "gemma3n-export", str(missing), "not found")
    assert not (tmp_path / "out").exists()


def test_export_empty_checkpoint_dir(capsys, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert export(capsys, empty, tmp_path / "out") == 2
    one_line_error(capsys, "gemma3n-export", str(empty), "config.json")


def test_export_config_but_no_safetensors(capsys, good_ckpt, tmp_path):
    d = tmp_path / "cfg_only"
    d.mkdir()
    shutil.copy(good_ckpt / "config.json", d)
    assert export(capsys, d, tmp_path / "out") == 2
    one_line_error(capsys, "gemma3n-export", str(d), "safetensors")


def test_export_config_not_json(capsys, ckpt, tmp_path):
    (ckpt / "config.json").write_text('{"model_type": "gemma3n",')
    assert export(capsys, ckpt, tmp_path / "out") == 2
    one_line_error(capsys, "gemma3n-export", str(ckpt / "config.json"), "not valid JSON")


def test_export_config_not_an_object(capsys, ckpt, tmp_path):
    (ckpt / "config.json").write_text("[1, 2]")
    assert export(capsys, ckpt, tmp_path / "out") == 2
    one_line_error(capsys, "gemma3n-export", str(ckpt / "config.json"))


def test_export_other_model_type(capsys, ckpt, tmp_path):
    (ckpt / "config.json").write_text('{"model_type": "llama"}')
    (ckpt / "tokenizer.model").unlink()     # as in a real Llama checkpoint: the model type is what's wrong
    assert export(capsys, ckpt, tmp_path / "out") == 2
    one_line_error(capsys, "gemma3n-export", "config.json", "'llama'", "not a Gemma 3n checkpoint")


@pytest.mark.parametrize("victim", [VICTIM, PREFIX + "embed_tokens.weight"])
def test_export_missing_tensor(capsys, ckpt, tmp_path, victim):
    rewrite_shard(shard_of(ckpt, victim), lambda t: t.pop(victim))
    assert export(capsys, ckpt, tmp_path / "out") == 2
    one_line_error(capsys, "gemma3n-export", str(ckpt), "missing tensor", victim)


def test_export_wrong_shape(capsys, ckpt, tmp_path):
    def transpose(t):
        t[VICTIM] = np.ascontiguousarray(t[VICTIM].T)
    rewrite_shard(shard_of(ckpt, VICTIM), transpose)
    assert export(capsys, ckpt, tmp_path / "out") == 2
    # down_proj is [hidden 64, width 96]; the transposed one is [96, 64]
    one_line_error(capsys, "gemma3n-export", VICTIM, "[96, 64]", "[64, 96]")


def test_export_unexpected_tensor(capsys, ckpt, tmp_path):
    extra = PREFIX + "layers.0.mlp.bias_that_should_not_be_here"
    rewrite_shard(shard_of(ckpt, VICTIM), lambda t: t.update({extra: np.zeros(4, np.float32)}))
    assert export(capsys, ckpt, tmp_path / "out") == 2
    one_line_error(capsys, "gemma3n-export", "unexpected tensors", extra)


def test_export_no_tokenizer(capsys, ckpt, tmp_path):
    (ckpt / "tokenizer.model").unlink()
    assert export(capsys, ckpt, tmp_path / "out") == 2
    one_line_error(capsys, "gemma3n-export", str(ckpt), "tokenizer.model")


def test_export_truncated_shard(capsys, ckpt, tmp_path):
    shard = shard_of(ckpt, VICTIM)
    os.truncate(shard, shard.stat().st_size // 2)
    assert export(capsys, ckpt, tmp_path / "out") == 2
    one_line_error(capsys, "gemma3n-export", str(shard), "truncated")


def test_export_shard_named_by_index_missing(capsys, ckpt, tmp_path):
    shard = shard_of(ckpt, VICTIM)
    shard.unlink()
    assert export(capsys, ckpt, tmp_path / "out") == 2
    one_line_error(capsys, "gemma3n-export", shard.name, "missing")


def test_export_out_is_a_file(capsys, good_ckpt, tmp_path):
    out = tmp_path / "out"
    out.write_text("not a bundle")
    assert export(capsys, good_ckpt, out) == 2
    one_line_error(capsys, "gemma3n-export", str(out), "not a directory")
    assert out.read_text() == "not a bundle"


def test_export_out_not_empty_then_force(capsys, good_ckpt, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert export(capsys, good_ckpt, out) == 2
    one_line_error(capsys, "gemma3n-export", str(out), "--force")
    assert sorted(os.listdir(out)) == ["keep.txt"]

    assert export(capsys, good_ckpt, out, "--quant", "fp32", "--tables", "fp32", "--force") == 0
    assert not (out / "keep.txt").exists()
    Bundle.open(out).verify()
    assert os.listdir(tmp_path) == ["out"]           # no .partial-* or .old-* left beside it


def _fail_after_row_tables(monkeypatch):
    import exporters.export

    def write_graph(graph, onnx_path, store, progress=None, sizes=None):
        text = os.path.dirname(onnx_path)
        assert os.path.isfile(os.path.join(text, "embed.safetensors"))
        assert os.path.isfile(os.path.join(text, "ple.safetensors"))
        raise OSError(errno.ENOSPC, "No space left on device", onnx_path)

    monkeypatch.setattr(exporters.export, "write_graph", write_graph)


def test_export_failing_midway_leaves_nothing(capsys, good_ckpt, tmp_path, monkeypatch):
    _fail_after_row_tables(monkeypatch)
    out = tmp_path / "out"
    assert export(capsys, good_ckpt, out, "--quant", "fp32") == 2
    one_line_error(capsys, "gemma3n-export", "No space left on device")
    assert os.listdir(tmp_path) == []


def test_export_failing_midway_keeps_old_bundle(capsys, good_ckpt, export_tiny, tmp_path, monkeypatch):
    out = tmp_path / "out"
    shutil.copytree(export_tiny(0)[1], out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    _fail_after_row_tables(monkeypatch)
    assert export(capsys, good_ckpt, out, "--quant", "fp32", "--force") == 2
    one_line_error(capsys, "gemma3n-export", "No space left on device")
    assert os.listdir(tmp_path) == ["out"]
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    Bundle.open(out).verify()


def test_export_prefill_int8_needs_quantized_weights(capsys, good_ckpt, tmp_path):
    assert export(capsys, good_ckpt, tmp_path / "out", "--quant", "fp32", "--prefill-int8") == 2
    one_line_error(capsys, "gemma3n-export", "--prefill-int8", "int4 or int8")
    assert not (tmp_path / "out").exists()


def test_export_int8_block_size_needs_int4(capsys, good_ckpt, tmp_path):
    assert export(capsys, good_ckpt, tmp_path / "out", "--quant", "int8", "--int8-block-size", "64") == 2
    one_line_error(capsys, "gemma3n-export", "--int8-block-size", "--block-size")
    assert not (tmp_path / "out").exists()
    assert export(capsys, good_ckpt, tmp_path / "out", "--quant", "fp32", "--int8-block-size", "64") == 2
    one_line_error(capsys, "gemma3n-export", "--int8-block-size", "no blocks")
    assert not (tmp_path / "out").exists()


def test_export_usage_error(capsys, tmp_path):
    usage_error(capsys, export_cli.main, [str(tmp_path), str(tmp_path / "o"), "--quant", "int3"], "--quant")
    usage_error(capsys, export_cli.main, [str(tmp_path), str(tmp_path / "o"), "--block-size", "33"], "--block-size")
    usage_error(capsys, export_cli.main, [str(tmp_path)], "out")


# --- gemma3n-run --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def demo() -> Path:
    path = Path(demo_bundle_path())
    assert (path / MANIFEST).is_file(), "demo bundle missing: run python assets/make_demo.py"
    return path


@pytest.fixture
def bundle(demo, tmp_path) -> Path:
    """A private copy of the demo bundle, to break."""
    return Path(shutil.copytree(demo, tmp_path / "bundle"))


@pytest.fixture(autouse=True)
def _no_model_env(monkeypatch):
    monkeypatch.delenv("GEMMA3N_MODEL", raising=False)


def run(capsys, *argv: str) -> int:
    capsys.readouterr()
    return run_cli.main([*map(str, argv)])


def test_run_missing_model_dir(capsys, tmp_path):
    missing = tmp_path / "nope"
    assert run(capsys, "--model", missing, "hi") == 2
    one_line_error(capsys, "gemma3n-run", str(missing), "not found")


def test_run_no_manifest(capsys, tmp_path):
    assert run(capsys, "--model", tmp_path, "hi") == 2
    one_line_error(capsys, "gemma3n-run", str(tmp_path), "manifest.json")


def test_run_manifest_not_json(capsys, bundle):
    (bundle / MANIFEST).write_text("{")
    assert run(capsys, "--model", bundle, "hi") == 2
    one_line_error(capsys, "gemma3n-run", str(bundle / MANIFEST), "not valid JSON")


def test_run_manifest_not_an_object(capsys, bundle):
    (bundle / MANIFEST).write_text("[]")
    assert run(capsys, "--model", bundle, "hi") == 2
    one_line_error(capsys, "gemma3n-run", str(bundle / MANIFEST), "not a gemma3n-rt bundle")


def test_run_bundle_file_deleted(capsys, bundle):
    (bundle / "text" / "weights.bin").unlink()
    assert run(capsys, "--model", bundle, "hi") == 2
    one_line_error(capsys, "gemma3n-run", "missing", "text/weights.bin")


def test_run_bundle_file_truncated(capsys, bundle):
    ple = bundle / "text" / "ple.safetensors"
    size = ple.stat().st_size
    os.truncate(ple, size - 100)
    assert run(capsys, "--model", bundle, "hi") == 2
    one_line_error(capsys, "gemma3n-run", str(ple), str(size - 100), str(size))


def test_run_future_format_version(capsys, bundle):
    manifest = json.loads((bundle / MANIFEST).read_text())
    manifest["format_version"] = 99
    (bundle / MANIFEST).write_text(json.dumps(manifest))
    assert run(capsys, "--model", bundle, "hi") == 2
    one_line_error(capsys, "gemma3n-run", str(bundle / MANIFEST), "version 99", "re-export")


def test_run_unknown_kv_cache_dtype(capsys, bundle):
    manifest = json.loads((bundle / MANIFEST).read_text())
    manifest["quantization"]["kv_cache"] = "int3"
    (bundle / MANIFEST).write_text(json.dumps(manifest))
    assert run(capsys, "--model", bundle, "hi") == 2
    one_line_error(capsys, "gemma3n-run", str(bundle / MANIFEST), "kv_cache", "'int3'", "fp16")


def test_run_prompt_too_long(capsys, demo):
    from gemma3n_rt.prompt import SpecialTokens, chat_ids
    from gemma3n_rt.tokenizer import Tokenizer
    prompt = "tell me a long story about the sea and the ships on it"
    tok = Tokenizer(demo / "tokenizer.model")
    n = len(chat_ids(tok, SpecialTokens.from_tokenizer(tok), [{"role": "user", "content": prompt}]))
    assert n > 8
    assert run(capsys, "--model", demo, "--context", "8", "--max-new-tokens", "4", prompt) == 2
    line = one_line_error(capsys, "gemma3n-run", "too long", f"{n} tokens", "context of 8")
    assert re.search(r"--context", line)


@pytest.mark.parametrize("flag, value", [
    ("--top-p", "1.5"), ("--top-p", "0"), ("--temperature", "-1"), ("--temperature", "nan"),
    ("--max-new-tokens", "-3"), ("--context", "0"), ("--threads", "0"), ("--memory-budget", "lots"),
    ("--top-k", "many"), ("--seed", "-1"),
])
def test_run_invalid_flag(capsys, demo, flag, value):
    last = usage_error(capsys, run_cli.main, ["--model", str(demo), flag, value, "hi"], flag)
    assert last.startswith(f"gemma3n-run: error: {flag}: "), last
    assert value in last


def test_run_unknown_slice(capsys, demo):
    assert run(capsys, "--model", demo, "--effective", "7b", "hi") == 2
    one_line_error(capsys, "gemma3n-run", "'7b'", "E4B")


def test_run_unknown_slice_plan(capsys, demo):
    assert run(capsys, "--model", demo, "--effective", "7b", "--plan") == 2
    one_line_error(capsys, "gemma3n-run", "'7b'", "E4B")


def test_run_no_prompt(capsys, demo):
    assert run(capsys, "--model", demo) == 2
    one_line_error(capsys, "gemma3n-run", "PROMPT", "--interactive")


# --- as real processes --------------------------------------------------------------------------

def _subprocess(module: str, *argv: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "GEMMA3N_MODEL"}
    return subprocess.run([sys.executable, "-m", module, *argv], cwd=REPO, capture_output=True, text=True,
                          env=env, timeout=60)


def test_run_subprocess(tmp_path):
    missing = tmp_path / "nope"
    p = _subprocess("gemma3n_rt.cli", "--model", str(missing), "hi")
    assert p.returncode == 2
    assert "Traceback" not in p.stderr
    assert p.stderr.count("\n") == 1 and p.stderr.startswith("gemma3n-run: error:"), p.stderr
    assert str(missing) in p.stderr


def test_export_subprocess(tmp_path):
    missing = tmp_path / "nope"
    p = _subprocess("exporters.cli", str(missing), str(tmp_path / "out"))
    assert p.returncode == 2
    assert "Traceback" not in p.stderr
    assert p.stderr.count("\n") == 1 and p.stderr.startswith("gemma3n-export: error:"), p.stderr
    assert str(missing) in p.stderr


def test_export_int4_calibration_is_recorded_and_leaves_no_scratch(capsys, good_ckpt, tmp_path):
    out = tmp_path / "out"
    assert export(capsys, good_ckpt, out) == 0                   # int4: calibrated by default
    calibration = json.loads((out / "manifest.json").read_text())["quantization"]["calibration"]
    assert calibration["text"] == "built-in" and 64 <= calibration["tokens"] <= 2048 and calibration["gptq"] is True
    assert not any(".calibration" in str(p) for p in out.rglob("*"))
    Bundle.open(out).verify()
    assert os.listdir(tmp_path) == ["out"]
    carried = (out / "text/weights.bin").read_bytes()
    assert export(capsys, good_ckpt, out, "--no-gptq", "--force") == 0      # the same grids, nearest rounding
    assert json.loads((out / "manifest.json").read_text())["quantization"]["calibration"]["gptq"] is False
    assert (out / "text/weights.bin").read_bytes() != carried
    assert export(capsys, good_ckpt, out, "--no-calibration", "--force") == 0
    assert json.loads((out / "manifest.json").read_text())["quantization"]["calibration"] is None


def test_export_calibration_text_missing_or_too_short(capsys, good_ckpt, tmp_path):
    missing = tmp_path / "nope.txt"
    assert export(capsys, good_ckpt, tmp_path / "out", "--calibration", missing) == 2
    one_line_error(capsys, "gemma3n-export", "--calibration", str(missing), "no such file")
    short = tmp_path / "short.txt"
    short.write_text("Too short.")
    assert export(capsys, good_ckpt, tmp_path / "out", "--calibration", short) == 2
    one_line_error(capsys, "gemma3n-export", str(short), "at least 64")
    assert os.listdir(tmp_path) == ["short.txt"]           # no bundle, no scratch
