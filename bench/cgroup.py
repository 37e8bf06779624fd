"""Run a process inside a memory cgroup (page cache counts against the limit), where the machine
allows it: root and a cgroup v1 memory controller or a cgroup v2 hierarchy with `memory` enabled.

A cached page is charged to the cgroup that first read it, and stays charged there: a process put in
a fresh cgroup while its files are still cached from earlier runs reads them free of the limit.
`drop_page_cache` evicts them first, so that the capped process pays for every page it reads."""
from __future__ import annotations

import os

V1 = "/sys/fs/cgroup/memory"
V2_ROOTS = ("/sys/fs/cgroup", "/sys/fs/cgroup/unified")


def _v2_root() -> str | None:
    for root in V2_ROOTS:
        try:
            with open(os.path.join(root, "cgroup.subtree_control")) as f:
                if "memory" in f.read().split():
                    return root
        except OSError:
            pass
    return None


class MemoryCap:
    """A fresh cgroup limited to `limit` bytes; `enter` (a preexec_fn) moves the calling process in."""

    def __init__(self, name: str, limit: int):
        if os.geteuid() != 0:
            raise RuntimeError("--cap needs root (it creates a memory cgroup)")
        v2 = _v2_root()
        if os.path.isdir(V1) and os.access(V1, os.W_OK):
            self.dir, files = os.path.join(V1, name), ("memory.limit_in_bytes",)
        elif v2:
            self.dir, files = os.path.join(v2, name), ("memory.max", "memory.swap.max")
        else:
            raise RuntimeError("--cap: no writable memory cgroup controller (v1 or v2) on this machine")
        os.makedirs(self.dir, exist_ok=True)
        self.kind = "v1" if files[0] == "memory.limit_in_bytes" else "v2"
        for f, value in zip(files, (limit, 0)):
            with open(os.path.join(self.dir, f), "w") as fh:
                fh.write(str(value))

    def enter(self) -> None:
        with open(os.path.join(self.dir, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))

    def close(self) -> None:
        try:
            os.rmdir(self.dir)
        except OSError:
            pass


def drop_page_cache(path: str) -> None:
    """Evict the file `path`, or every file under the folder `path`, from the page cache."""
    names = [path] if os.path.isfile(path) else [os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs]
    for name in names:
        fd = os.open(name, os.O_RDONLY)
        try:
            os.fsync(fd)           # a dirty page is not evicted
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
