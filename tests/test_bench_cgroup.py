"""bench/cgroup.py's drop_page_cache: a capped benchmark run must pay for the pages it reads, so the
files it measures are evicted from the page cache first (a cached page stays charged to the cgroup
that read it). Residency is read with mincore(2)."""
import ctypes
import mmap
import os
import sys

import pytest

from bench.cgroup import drop_page_cache

PAGE = mmap.PAGESIZE


def resident_pages(path: str) -> int:
    """How many of the file's pages are in the page cache (mincore on a shared read-only mapping)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long)
    libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
    libc.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p)
    size = os.path.getsize(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        assert addr not in (None, ctypes.c_void_p(-1).value), os.strerror(ctypes.get_errno())
        pages = -(-size // PAGE)
        vec = ctypes.create_string_buffer(pages)
        try:
            assert libc.mincore(addr, size, vec) == 0, os.strerror(ctypes.get_errno())
        finally:
            libc.munmap(addr, size)
    finally:
        os.close(fd)
    return sum(b & 1 for b in vec.raw)


def filesystem(path: str) -> str:
    """The type of the filesystem holding `path` (the longest mount point above it)."""
    best, kind = "", "?"
    with open("/proc/mounts") as f:
        for line in f:
            _, point, fstype = line.split()[:3]
            if os.path.realpath(path).startswith(point.rstrip("/") + "/") and len(point) > len(best):
                best, kind = point, fstype
    return kind


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mincore and /proc/mounts are Linux's")
def test_drop_page_cache_evicts_every_file_of_a_folder(tmp_path):
    if filesystem(str(tmp_path)) in ("tmpfs", "ramfs"):
        pytest.skip(f"{tmp_path} is in memory: its pages can't be evicted")
    folder = tmp_path / "bundle"
    (folder / "text").mkdir(parents=True)
    files = [folder / "manifest.json", folder / "text" / "weights.bin"]
    files[0].write_bytes(os.urandom(3 * PAGE))
    files[1].write_bytes(os.urandom(256 * PAGE))   # written, so cached (and dirty until synced)
    for f in files:
        f.read_bytes()
    assert all(resident_pages(str(f)) > 0 for f in files)
    drop_page_cache(str(folder))
    assert [resident_pages(str(f)) for f in files] == [0, 0]
    files[1].read_bytes()
    drop_page_cache(str(files[1]))       # a single file too
    assert resident_pages(str(files[1])) == 0
