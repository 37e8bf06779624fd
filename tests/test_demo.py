"""The embedded demo bundle: regenerated deterministically by assets/make_demo.py, and usable
through the CLI in one shot or as an interactive chat."""
import json
import os


from gemma3n_rt import cli
from gemma3n_rt.bundle import Bundle
from gemma3n_rt.model import demo_bundle_path



def test_demo_is_what_make_demo_writes(tmp_path, make_tokenizer):
    """The committed demo matches a fresh regeneration (decoder graph, weights and tables, the
    towers' manifest sections;
    the tokenizer depends on the Python version's docstrings and is checked by its own test)."""
    from conftest import asset_script
    asset_script("make_demo").main(str(tmp_path / "demo"))
    with open(os.path.join(demo_bundle_path(), "manifest.json")) as f:
        committed = json.load(f)
    with open(tmp_path / "demo" / "manifest.json") as f:
        fresh = json.load(f)
    text_files = lambda m: {k: v for k, v in m["files"].items() if k.startswith("text/")}
    assert text_files(fresh) == text_files(committed)
    assert fresh["slices"] == committed["slices"] and fresh["text_config"] == committed["text_config"]
    assert fresh["vision"] == committed["vision"] and fresh["audio"] == committed["audio"]


def test_demo_bundle_verifies():
    Bundle.open(demo_bundle_path()).verify()


def test_run_one_prompt(capsys, monkeypatch):
    monkeypatch.delenv("GEMMA3N_MODEL", raising=False)
    assert cli.main(["Why is the sky blue?", "--max-new-tokens", "8", "--seed", "1", "--stats"]) == 0
    out, err = capsys.readouterr()
    assert out.endswith("\n") and "decode" in err and "RssAnon" in err


def test_interactive_chat(capsys, monkeypatch):
    answers = iter(["Hello", "And again", ""])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(answers))
    assert cli.main(["--interactive", "--max-new-tokens", "4", "--temperature", "0"]) == 0
    out, _ = capsys.readouterr()
    assert out.count("\n") >= 2


def test_plan_prints_the_ledger(capsys):
    assert cli.main(["--plan", "--context", "8192"]) == 0
    out, _ = capsys.readouterr()
    assert "E4B" in out and "chosen" in out
