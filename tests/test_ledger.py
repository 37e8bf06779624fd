"""The memory ledger is honest: each of two slices of a medium-size synthetic model, loaded in a
fresh process with its context filled, holds RssAnon within 15 % of what its ledger says."""
import json
import os
import subprocess
import sys

import pytest

from bench.synthetic import MEDIUM, write_random_checkpoint
from exporters.export import export

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def medium_bundle(tmp_path_factory, demo_tokenizer_path):
    ckpt = tmp_path_factory.mktemp("medium_ckpt")
    write_random_checkpoint(str(ckpt), MEDIUM, seed=0, dtype="bf16", tokenizer=str(demo_tokenizer_path))
    out = tmp_path_factory.mktemp("medium") / "bundle"
    export(str(ckpt), str(out), quant="int4", tables="int8", show_progress=False, slices="E4B,E2B")
    return out


@pytest.mark.parametrize("name", ["E4B", "E2B"])
def test_measured_rss_matches_ledger(medium_bundle, name):
    out = subprocess.run([sys.executable, os.path.join(REPO, "bench", "ledger_check.py"), str(medium_bundle), name,
                          "--context", "1024", "--prompt-tokens", "1000"],
                         capture_output=True, text=True, check=True, cwd=REPO)
    r = json.loads(out.stdout)
    ratio = r["rss_anon_after_generate"] / r["ledger"]["total"]
    print(f"{name}: measured RssAnon {r['rss_anon_after_generate'] / 2**20:.1f} MiB, "
          f"ledger {r['ledger']['total'] / 2**20:.1f} MiB, ratio {ratio:.3f}")
    assert 0.85 <= ratio <= 1.15
