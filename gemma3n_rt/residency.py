"""Keeping the weights a decode step reads resident (`lock_weights=True`, `--mlock`).

A decoder's prepacked weights are a mapped file (sessions.py): page cache, which a memory cgroup
near its limit reclaims and each decode step then reads back from flash (E2B inside 2.5 GB: 5.0
against 12.4 tok/s uncapped). Locking them keeps decode at full speed wherever they fit; where
they don't, the decoder refuses to lock (decoder.py), since locked pages past the limit leave the
process thrashing, and llama.cpp's --mlock is killed.

Only the mappings one decode step touches are locked: the dense weights and the sparse layers'
row copies (each token gathers other rows), not the weights only prompts read (the sparse
layers' dense up/down) nor onnxruntime's copies of the originals. Which ones a step touches is
read from the kernel's accessed bits: /proc/self/clear_refs clears them, a scratch step runs,
and /proc/self/smaps gives each mapping's Referenced bytes. Linux only (Android included).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import resource
from dataclasses import dataclass

from .errors import Gemma3nError

CLEAR_REFS, SMAPS = "/proc/self/clear_refs", "/proc/self/smaps"


@dataclass(frozen=True)
class Mapping:
    start: int
    end: int
    path: str
    referenced: int   # bytes accessed since the accessed bits were cleared

    @property
    def size(self) -> int:
        return self.end - self.start


def mappings(smaps: str = SMAPS) -> list[Mapping]:
    """Every mapping of this process, with its referenced bytes."""
    out, head, fields = [], None, {}

    def close():
        if head is not None:
            out.append(Mapping(head[0], head[1], head[2], fields.get("Referenced", 0)))

    with open(smaps) as f:
        for line in f:
            word = line.split(None, 1)[0]
            if word.endswith(":"):
                parts = line.split()
                if len(parts) == 3 and parts[2] == "kB":
                    fields[word[:-1]] = int(parts[1]) * 1024
                continue
            close()
            parts = line.split(None, 5)
            start, end = (int(x, 16) for x in parts[0].split("-"))
            head, fields = (start, end, parts[5].strip() if len(parts) > 5 else ""), {}
    close()
    return out


def touched_mappings(step, folder: str) -> list[Mapping]:
    """The mappings of files under `folder` that `step()` reads."""
    try:
        with open(CLEAR_REFS, "w") as f:
            f.write("1")
    except OSError as e:
        raise Gemma3nError(f"locking weights needs Linux's {CLEAR_REFS} ({e.strerror})") from None
    step()
    prefix = os.path.join(os.path.abspath(folder), "")
    return [m for m in mappings() if m.path.startswith(prefix) and m.referenced > 0]


MLOCK_ONFAULT = 1


def _libc():
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.munlock.argtypes = libc.mlock.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    try:
        libc.mlock2.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    except AttributeError:    # a C library without mlock2 (glibc before 2.27)
        pass
    return libc


def _mlock(libc, m: Mapping) -> int:
    """0, or the errno. MLOCK_ONFAULT locks the pages resident now and each other page as it is
    first read, without reading the rest in: E2B's 1.79 GiB locked in 0.08 s, against 3.0 s for
    a plain mlock of the same mappings."""
    if hasattr(libc, "mlock2"):
        if libc.mlock2(m.start, m.size, MLOCK_ONFAULT) == 0:
            return 0
        if ctypes.get_errno() not in (errno.EINVAL, errno.ENOSYS):    # EINVAL/ENOSYS: a kernel before 4.4
            return ctypes.get_errno()
    return 0 if libc.mlock(m.start, m.size) == 0 else ctypes.get_errno()


def lock(ranges: list[Mapping]) -> int:
    """Lock every mapping whole; all or nothing. Returns the bytes locked. The soft RLIMIT_MEMLOCK
    is first raised to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (hard, hard))
    libc, done = _libc(), []
    for m in ranges:
        code = _mlock(libc, m)
        if code:
            for d in done:
                libc.munlock(d.start, d.size)
            total = sum(r.size for r in ranges)
            limit = resource.getrlimit(resource.RLIMIT_MEMLOCK)[0]
            shown = "unlimited" if limit == resource.RLIM_INFINITY else f"{limit / 2**20:.0f} MiB"
            hint = (f"; the locked-memory limit (RLIMIT_MEMLOCK) is {shown}: raise it ('ulimit -l unlimited', "
                    "memlock in /etc/security/limits.conf) or give the process CAP_IPC_LOCK"
                    if code in (errno.EPERM, errno.ENOMEM, errno.EAGAIN) else "")
            raise Gemma3nError(f"could not lock {total / 2**20:.0f} MiB of decoder weights in memory: "
                               f"{os.strerror(code)}{hint}")
        done.append(m)
    return sum(m.size for m in done)
