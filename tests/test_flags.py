"""Flags as the shell passes them: each bad value is one line, `PROG: error: --flag: problem`, exit
code 2; values that start with '-' reach the flag's own check."""
import os

import pytest

from exporters import cli as export_cli
from gemma3n_rt import cli as run_cli
from gemma3n_rt.model import demo_bundle_path


def refused(capsys, main, argv) -> str:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "usage:" not in err, err
    return err.rstrip("\n")


@pytest.mark.parametrize("argv, line", [
    (["--memory-budget", "-1GB", "hi"], "gemma3n-run: error: --memory-budget: memory budget must be positive, "
                                        "got '-1GB'"),
    (["--memory-budget", "-0.5", "hi"], "gemma3n-run: error: --memory-budget: memory budget must be positive, "
                                        "got '-0.5'"),
    (["--effective", "", "hi"], "gemma3n-run: error: --effective: must name a slice: 2b, 4b, a catalog name, or auto"),
    (["--effective", " ", "hi"], "gemma3n-run: error: --effective: must name a slice: 2b, 4b, a catalog name, or auto"),
    (["--threads", "-2", "hi"], "gemma3n-run: error: --threads: must be at least 1, got -2"),
    (["--top-k", "-many", "hi"], "gemma3n-run: error: --top-k: expected a whole number, got '-many'"),
    (["--model", "--plan"], "gemma3n-run: error: --model: expected one argument"),
    (["--nonsense", "hi"], "gemma3n-run: error: unrecognized arguments: --nonsense"),
])
def test_run_flag_error_is_one_line(capsys, argv, line):
    assert refused(capsys, run_cli.main, argv) == line


@pytest.mark.parametrize("threads", ["999", "257", str(4 * (os.cpu_count() or 64) + 1)])
def test_run_threads_bounded(capsys, threads):
    line = refused(capsys, run_cli.main, ["--threads", threads, "hi"])
    assert line.startswith("gemma3n-run: error: --threads: must be at most ") and line.endswith(f"got {threads}")


def test_run_threads_within_bound_accepted():
    args = run_cli.parser().parse_args(["--threads", str(min(256, 4 * (os.cpu_count() or 64))), "hi"])
    assert args.threads == min(256, 4 * (os.cpu_count() or 64))


def test_values_that_look_like_flags_are_not_swallowed():
    """Only a value that is not itself a flag is attached to the flag before it."""
    args = run_cli.parser().parse_args(["--model", "-dir-", "-i", "--seed=3", "--", "-a prompt"])
    assert (args.model, args.interactive, args.seed, args.prompt) == ("-dir-", True, 3, "-a prompt")


def test_every_run_flag_has_help():
    for action in run_cli.parser()._actions:
        assert action.help, f"{action.option_strings or action.dest} has no help text"


def test_export_flag_error_is_one_line(capsys, tmp_path):
    assert refused(capsys, export_cli.main, [str(tmp_path), str(tmp_path / "o"), "--block-size", "-32"]) == \
        "gemma3n-export: error: --block-size: invalid choice: -32 (choose from 16, 32, 64, 128, 256)"
    assert refused(capsys, export_cli.main, [str(tmp_path)]) == \
        "gemma3n-export: error: the following arguments are required: out"


def test_export_seconds_include_reading_the_checkpoint(capsys, monkeypatch, tmp_path):
    """The reported time is the whole export call, not the part after the checkpoint was read."""
    import time
    manifest = {"files": {"a": {"size": 1 << 20}}, "slices": [{"name": "full"}], "seconds": 0.01}

    def slow_export(*args, **kwargs):
        time.sleep(0.3)      # reading a checkpoint
        return manifest
    monkeypatch.setattr(export_cli, "export", slow_export)
    assert export_cli.main([str(tmp_path / "ckpt"), str(tmp_path / "out"), "--quiet"]) == 0
    out = capsys.readouterr().out
    seconds = float(out.split(", ")[-2].removesuffix(" s"))
    assert seconds >= 0.3, out


def test_demo_still_runs_with_dash_prompt(capsys, monkeypatch):
    monkeypatch.delenv("GEMMA3N_MODEL", raising=False)
    assert run_cli.main(["--model", demo_bundle_path(), "--max-new-tokens", "2", "--seed", "0", "--", "-x"]) == 0
