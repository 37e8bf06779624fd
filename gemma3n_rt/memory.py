"""Memory as a device feels it: anonymous resident memory (RssAnon) and file-backed resident
pages (RssFile, reclaimable page cache such as mapped row tables), read from /proc."""
from __future__ import annotations

from dataclasses import dataclass


def rss() -> dict[str, int]:
    """Current RssAnon and RssFile of this process, in bytes (zeros where /proc is unavailable)."""
    out = {"anon": 0, "file": 0}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(("RssAnon:", "RssFile:")):
                    key = "anon" if line.startswith("RssAnon") else "file"
                    out[key] = int(line.split()[1]) * 1024
    except OSError:
        pass
    return out


@dataclass
class PeakRss:
    anon: int = 0
    file: int = 0

    def sample(self) -> None:
        now = rss()
        self.anon = max(self.anon, now["anon"])
        self.file = max(self.file, now["file"])


def parse_bytes(text: str | int | float, what: str = "memory budget") -> int:
    """'1.5GB', '800MB', '2GiB' or a plain number of bytes."""
    if isinstance(text, (int, float)):
        return int(text)
    s = text.strip().upper().replace(" ", "")
    units = {"KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30, "KB": 10**3, "MB": 10**6, "GB": 10**9,
             "K": 10**3, "M": 10**6, "G": 10**9, "B": 1}
    for unit, factor in units.items():
        if s.endswith(unit):
            number = s[: -len(unit)]
            break
    else:
        number, factor = s, 1
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"{what} must look like 1.5GB, 800MB or 2GiB, got {text!r}") from None
    if value <= 0:
        raise ValueError(f"{what} must be positive, got {text!r}")
    return int(value * factor)
