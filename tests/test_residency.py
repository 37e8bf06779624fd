"""Locking the weights a decode step reads (residency.py, lock_weights=True, --mlock): only the
mappings a step touches, all or nothing, refused where they don't fit, and the same tokens."""
import errno
import mmap
import os
import resource
import shutil

import numpy as np
import pytest

import gemma3n_rt
from gemma3n_rt import cli, decoder, residency, sessions
from gemma3n_rt.errors import Gemma3nError

MiB = 1 << 20
pytestmark = pytest.mark.skipif(not os.path.exists(residency.CLEAR_REFS), reason="needs Linux's /proc/self/clear_refs")


def can_lock(nbytes: int) -> bool:
    soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    return os.geteuid() == 0 or hard == resource.RLIM_INFINITY or hard >= nbytes


def locked_bytes(m: residency.Mapping) -> int:
    """smaps' Locked: for the mapping starting at m.start."""
    with open(residency.SMAPS) as f:
        inside = False
        for line in f:
            if not line.split(None, 1)[0].endswith(":"):
                inside = int(line.split("-", 1)[0], 16) == m.start
            elif inside and line.startswith("Locked:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("mapping not found")


@pytest.fixture
def two_mapped_files(tmp_path):
    """Two 2 MiB files under tmp_path/weights, mapped and read once."""
    folder = tmp_path / "weights"
    folder.mkdir()
    maps = []
    for name in ("a.bin", "b.bin"):
        (folder / name).write_bytes(np.random.default_rng(0).integers(0, 255, 2 * MiB, dtype=np.uint8).tobytes())
        with open(folder / name, "rb") as f:
            maps.append(mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ))
    arrays = [np.frombuffer(m, dtype=np.uint8) for m in maps]
    for a in arrays:
        int(a[:: 4096].sum())
    return folder, arrays        # the mappings go with the arrays, at garbage collection


def test_mappings_reads_each_mapping_and_its_referenced_bytes(two_mapped_files):
    folder, _ = two_mapped_files
    ours = [m for m in residency.mappings() if m.path.startswith(str(folder))]
    assert sorted(os.path.basename(m.path) for m in ours) == ["a.bin", "b.bin"]
    assert all(m.size == 2 * MiB and m.referenced == 2 * MiB for m in ours)     # the fixture read every page


def test_only_the_mappings_a_step_reads_are_touched(two_mapped_files):
    folder, (a, b) = two_mapped_files
    touched = residency.touched_mappings(lambda: int(a[:: 4096].sum()), str(folder))
    assert [os.path.basename(m.path) for m in touched] == ["a.bin"]
    assert touched[0].referenced == 2 * MiB
    # a folder whose name only starts like ours is not ours
    assert residency.touched_mappings(lambda: int(a[:: 4096].sum()), str(folder)[:-1]) == []


@pytest.mark.skipif(not can_lock(4 * MiB), reason="RLIMIT_MEMLOCK too small to lock 4 MiB")
def test_lock_locks_whole_mappings_and_undoes_them_on_a_failure(two_mapped_files, monkeypatch):
    folder, (a, b) = two_mapped_files
    both = residency.touched_mappings(lambda: (int(a[:: 4096].sum()), int(b[:: 4096].sum())), str(folder))
    assert residency.lock(both[:1]) == 2 * MiB
    assert locked_bytes(both[0]) == 2 * MiB and locked_bytes(both[1]) == 0
    residency._libc().munlock(both[0].start, both[0].size)
    assert locked_bytes(both[0]) == 0

    real = residency._mlock
    monkeypatch.setattr(residency, "_mlock", lambda libc, m: errno.EPERM if m.path.endswith("b.bin") else real(libc, m))
    with pytest.raises(Gemma3nError, match=r"could not lock 4 MiB .*RLIMIT_MEMLOCK.*ulimit -l"):
        residency.lock(both)
    assert locked_bytes(both[0]) == 0          # a.bin was locked first, then let go


@pytest.fixture
def prepacked_bundle(export_tiny, tmp_path, monkeypatch):
    """A tiny int4 bundle of this test's own whose decoder maps a prepacked copy."""
    _, bundle = export_tiny(0, "int4")
    own = shutil.copytree(bundle, tmp_path / "bundle", ignore=shutil.ignore_patterns(".prepacked*"))
    monkeypatch.delenv(sessions.PREPACKED_ENV, raising=False)
    monkeypatch.setattr(sessions, "MIN_PREPACKED_BYTES", 0)
    return str(own)


def test_locked_weights_give_the_same_tokens(prepacked_bundle):
    plain = gemma3n_rt.load(prepacked_bundle, context=64)
    want = list(plain.generate_tokens(plain.prompt("The capital of France is", chat=False), 12, temperature=0))
    plain.decoder.close()
    if not can_lock(64 * MiB):
        pytest.skip("RLIMIT_MEMLOCK too small")
    model = gemma3n_rt.load(prepacked_bundle, context=64, lock_weights=True)
    copy = sessions.prepacked_dir(model.bundle.file(model.decoder.spec.graph))
    mapped = [m for m in residency.mappings() if m.path.startswith(copy + os.sep)]
    assert 0 < model.decoder.locked_bytes <= sum(m.size for m in mapped)
    with open("/proc/self/status") as f:
        vm_lck = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmLck:"))
    assert vm_lck >= model.decoder.locked_bytes
    got = list(model.generate_tokens(model.prompt("The capital of France is", chat=False), 12, temperature=0))
    assert got == want


def test_locking_is_refused_where_the_weights_and_the_rest_do_not_fit(prepacked_bundle, monkeypatch):
    monkeypatch.setattr(decoder, "memory_limit", lambda: 64 * MiB)
    with pytest.raises(Gemma3nError, match=r"locking .* decode weights .* would not leave room for the rest at "
                                           r"context 64 .* within this process's 0.06 GiB"):
        gemma3n_rt.load(prepacked_bundle, context=64, lock_weights=True)


def test_locking_without_a_prepacked_copy_is_a_clear_error(prepacked_bundle, monkeypatch):
    monkeypatch.setenv(sessions.PREPACKED_ENV, "0")
    with pytest.raises(Gemma3nError, match="no prepacked copy of its weights is mapped"):
        gemma3n_rt.load(prepacked_bundle, context=64, lock_weights=True)


def test_cli_mlock_on_the_demo_is_one_line_and_exit_2(capsys, monkeypatch):
    """The demo's graphs are too small for a prepacked copy: --mlock says so, in one line."""
    monkeypatch.delenv("GEMMA3N_MODEL", raising=False)
    assert cli.main(["--mlock", "--max-new-tokens", "2", "hi"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gemma3n-run: error: ") and "nothing to lock" in lines[0]
