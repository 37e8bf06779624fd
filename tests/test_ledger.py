"""The memory ledger is a safe upper bound within about 10 %: a slice loaded in a fresh process whose
context is then filled reaches, at its highest, RssAnon of 88-100 % of its ledger (a prompt chunk's
activations are released after its run, so the highest is sampled while it runs), for Gemma 3n models of two sizes and for
the real Gemma 3 270M. With the prepacked weights mapped from their copy, RssAnon is 80-100 % of the
ledger's anonymous part: a part 4-6x smaller than the whole, over which onnxruntime's run-to-run
spread (up to 14.5 MiB on the medium model) weighs several times more."""
import json
import os
import subprocess
import sys

import pytest

from bench.synthetic import MEDIUM, write_random_checkpoint
from exporters.export import export

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# MEDIUM at half the width (about 60 M parameters): where onnxruntime's fixed costs weigh most
SMALL = {**MEDIUM, "hidden_size": 256, "intermediate_size": [1024] * 35, "num_attention_heads": 2, "head_dim": 128,
         "hidden_size_per_layer_input": 32, "vocab_size": 16384 + 64, "vocab_size_per_layer_input": 16384,
         "laurel_rank": 16}
CONTEXT = 1024
LOWEST = {"off": 0.88, "on": 0.80}   # of RssAnon over the ledger (its anonymous part when mapped)


@pytest.fixture(scope="module")
def synthetic_bundle(tmp_path_factory, demo_tokenizer_path):
    made = {}

    def make(shape: str):
        if shape not in made:
            ckpt = tmp_path_factory.mktemp(f"{shape}_ckpt")
            write_random_checkpoint(str(ckpt), {"small": SMALL, "medium": MEDIUM}[shape], seed=0, dtype="bf16",
                                    tokenizer=str(demo_tokenizer_path))
            out = tmp_path_factory.mktemp(shape) / "bundle"
            export(str(ckpt), str(out), quant="int4", tables="int8", show_progress=False, slices="E4B,E2B")
            made[shape] = out
        return made[shape]
    return make


def measured_over_ledger(bundle, name: str, prepacked: str) -> float:
    """RssAnon growth over the ledger's anonymous part, the context filled (16 decode steps follow
    the prompt); prepacked: "on" maps a prepacked copy, "off" prepacks into anonymous memory."""
    out = subprocess.run([sys.executable, os.path.join(REPO, "bench", "ledger_check.py"), str(bundle), name,
                          "--context", str(CONTEXT), "--prompt-tokens", str(CONTEXT - 16), "--threads", "2",
                          "--prepacked", prepacked], capture_output=True, text=True, check=True, cwd=REPO)
    r = json.loads(out.stdout)
    assert r["ledger"]["mapped"] == (prepacked == "on")
    ratio = r["rss_anon_highest"] / r["ledger"]["anon"]
    print(f"{bundle} {name} prepacked {prepacked}: measured RssAnon {r['rss_anon_highest'] / 2**20:.1f} MiB at its highest "
          f"({r['rss_anon_after_generate'] / 2**20:.1f} after), "
          f"ledger {r['ledger']['anon'] / 2**20:.1f} of {r['ledger']['total'] / 2**20:.1f} MiB, ratio {ratio:.3f}")
    return ratio


@pytest.mark.parametrize("shape, name, prepacked", [("medium", "E4B", "off"), ("medium", "E2B", "off"),
                                                    ("medium", "E2B", "on"), ("small", "E2B", "off")])
def test_ledger_bounds_gemma3n(synthetic_bundle, shape, name, prepacked):
    assert LOWEST[prepacked] <= measured_over_ledger(synthetic_bundle(shape), name, prepacked) <= 1.0


@pytest.mark.real
@pytest.mark.parametrize("prepacked", ["off", "on"])
def test_ledger_bounds_gemma3_270m(gemma3_270m_gguf, tmp_path, prepacked):
    out = tmp_path / "bundle"
    export(gemma3_270m_gguf, str(out), quant="int4", tables="int8", show_progress=False)
    assert LOWEST[prepacked] <= measured_over_ledger(out, "full", prepacked) <= 1.0
