"""bench/worker.py's touched_bytes: the memory one decode step really reads, which the benchmark's
bandwidth fraction is computed from (the weights' layout in memory is the runtime's, not the file's)."""
import mmap
import os

import pytest

from bench.worker import touched_bytes

MiB = 1 << 20


def test_touched_bytes_counts_the_pages_a_step_reads(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(os.urandom(48 * MiB))
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        first_half = range(0, 24 * MiB, mmap.PAGESIZE)
        sum(m[i] for i in first_half)                     # mapped in before: only the accessed bits tell
        idle = touched_bytes(lambda: None)
        if idle is None:
            pytest.skip("no /proc/self/clear_refs on this kernel")
        half = touched_bytes(lambda: sum(m[i] for i in first_half))
        whole = touched_bytes(lambda: sum(m[i] for i in range(0, len(m), mmap.PAGESIZE)))
    assert idle < 16 * MiB
    assert 24 * MiB <= half < 24 * MiB + 16 * MiB
    assert 48 * MiB <= whole < 48 * MiB + 16 * MiB
