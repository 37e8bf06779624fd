"""A row table read whole into memory, as other runtimes hold the PLE table (bench-only: it shows
what reading rows from the file saves)."""
from __future__ import annotations

import numpy as np

from gemma3n_rt.rowtable import RowTable


class InRamRowTable(RowTable):
    def __init__(self, path: str):
        super().__init__(path)
        with open(path, "rb") as f:
            self.data = bytearray(f.read())     # anonymous memory, as a loaded tensor would be

    def _read(self, offset: int, nbytes: int, dtype, shape) -> np.ndarray:
        return np.frombuffer(self.data, dtype, count=nbytes // np.dtype(dtype).itemsize, offset=offset).reshape(shape)
