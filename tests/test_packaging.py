"""The package as pip installs it: every data file the code opens is there, and the console
scripts work from outside the source tree. CI (.ci/run) runs the suite against a non-editable
install with GEMMA3N_TEST_INSTALLED=1, where these tests see exactly what a user gets."""
import json
import os
import subprocess
import sys
import sysconfig
from importlib.resources import files

import pytest

import exporters
import gemma3n_rt
from bench.synthetic import write_random_checkpoint

INSTALLED = os.environ.get("GEMMA3N_TEST_INSTALLED") == "1"
# Non-Python files the code opens at run or export time, by package.
DATA_FILES = {"gemma3n_rt": ["FORMAT.md"], "exporters": ["matformer_configs.csv", "calibration.txt"],
              "gemma3n_rt.assets": ["demo/manifest.json", "demo/tokenizer.model", "sample.jpg", "speech.flac"]}
SCRIPTS = {"gemma3n-run": "gemma3n_rt.cli", "gemma3n-export": "exporters.cli", "gemma3n-serve": "gemma3n_rt.server.cli"}
# E4B's structure (35 layers, uniform FFN width, KV sharing from layer 20) at a tiny width: the
# exporter reads the published MatFormer catalog for it.
TINY_E4B = {"model_type": "gemma3n_text", "hidden_size": 32, "num_hidden_layers": 35, "intermediate_size": [64] * 35,
            "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16, "hidden_size_per_layer_input": 8,
            "vocab_size": 2048 + 64, "vocab_size_per_layer_input": 2048, "laurel_rank": 4,
            "num_kv_shared_layers": 15, "sliding_window": 16, "max_position_embeddings": 4096,
            "activation_sparsity_pattern": [0.95] * 10 + [0.0] * 25, "final_logit_softcapping": 30.0}


def test_suite_runs_against_the_installed_package():
    if not INSTALLED:
        pytest.skip("the suite runs from the source tree; .ci/run sets GEMMA3N_TEST_INSTALLED=1")
    for module in (gemma3n_rt, exporters):
        assert "site-packages" in module.__file__, f"{module.__name__} imported from {module.__file__}"


@pytest.mark.parametrize("package", sorted(DATA_FILES))
def test_package_data_is_installed(package):
    root = files(package)
    for rel in DATA_FILES[package]:
        assert (root / rel).is_file(), f"{package}/{rel} is not in the package"


def test_demo_bundle_files_are_installed():
    demo = files("gemma3n_rt.assets") / "demo"
    manifest = json.loads((demo / "manifest.json").read_text())
    for rel, meta in manifest["files"].items():
        path = demo / rel
        assert path.is_file(), f"demo file {rel} is not in the package"
        assert len(path.read_bytes()) == meta["size"]


def _console_script(name: str) -> list[str]:
    """The installed console script beside this Python; in a source checkout without one, the module."""
    script = os.path.join(sysconfig.get_path("scripts"), name)
    if os.path.isfile(script):
        return [script]
    if INSTALLED:
        pytest.fail(f"{name} is not installed in {sysconfig.get_path('scripts')}")
    return [sys.executable, "-m", SCRIPTS[name]]


def _package_env() -> dict:
    """Run scripts against the packages this test imported (site-packages in CI, else this checkout)."""
    env = {k: v for k, v in os.environ.items() if k != "GEMMA3N_MODEL"}
    env["PYTHONPATH"] = os.path.dirname(os.path.dirname(exporters.__file__))
    return env


def test_export_e4b_shaped_checkpoint_with_the_console_scripts(tmp_path, demo_tokenizer_path):
    """An E4B-shaped export reads the MatFormer catalog (matformer_configs.csv); run from an
    unrelated directory, as a user would."""
    ckpt, out = tmp_path / "ckpt", tmp_path / "bundle"
    write_random_checkpoint(str(ckpt), TINY_E4B, seed=0, tokenizer=str(demo_tokenizer_path))
    work = tmp_path / "elsewhere"
    work.mkdir()
    p = subprocess.run(_console_script("gemma3n-export") + [str(ckpt), str(out), "--slices", "E2B", "--quiet"],
                       cwd=work, env=_package_env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith(f"wrote {out}:") and "slices E2B" in p.stdout
    p = subprocess.run(_console_script("gemma3n-run") + ["--model", str(out), "--max-new-tokens", "3", "--seed", "0",
                                                         "Hello"],
                       cwd=work, env=_package_env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert p.stdout.endswith("\n")


def test_demo_runs_with_the_console_script(tmp_path):
    p = subprocess.run(_console_script("gemma3n-run") + ["--max-new-tokens", "3", "--seed", "0", "Hi"],
                       cwd=tmp_path, env=_package_env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert p.stdout.endswith("\n")


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_every_console_script_starts(tmp_path, name):
    p = subprocess.run(_console_script(name) + ["--help"], cwd=tmp_path, env=_package_env(), capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith(f"usage: {name}")


@pytest.mark.parametrize("flag, sample", [("--image", "sample.jpg"), ("--audio", "speech.flac")])
def test_demo_takes_the_installed_samples(tmp_path, flag, sample):
    """`gemma3n-run --image <sample>` / `--audio <sample>` on the embedded demo, from any directory."""
    path = files("gemma3n_rt.assets") / sample
    out = subprocess.run(_console_script("gemma3n-run") + [flag, str(path), "--max-new-tokens", "4", "--seed", "0",
                                                         "--stats", "Describe it."],
                         capture_output=True, text=True, env=_package_env(), cwd=tmp_path, timeout=600)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() and "encoding images/audio" in out.stderr
