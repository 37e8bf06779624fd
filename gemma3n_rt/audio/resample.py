"""Rational resampling in numpy, block by block: a polyphase windowed-sinc FIR.

The method is the one scipy.signal.resample_poly uses by default: with up/down = rate_out/rate_in in
lowest terms, a low-pass FIR of 2*10*max(up, down)+1 taps, cut off at the lower Nyquist frequency,
Kaiser window (beta 5), gain `up`, centred so that the output is not delayed, and the signal taken
as zero outside the clip. Output sample n is sum_j h[j] * x_up[n*down + half - j], x_up being the
input with up-1 zeros after each sample; only the taps that meet a non-zero sample are computed.
For 44.1 -> 16 kHz the passband is flat to about 6.8 kHz and the stopband is below about -50 dB
from 9.2 kHz, above the 7.6 kHz top of the mel filters."""
from __future__ import annotations

from math import gcd

import numpy as np

HALF_LEN_PER_RATE = 10
KAISER_BETA = 5.0


def lowpass(up: int, down: int) -> np.ndarray:
    """The FIR filter h [2*half+1], float64, at the up-sampled rate."""
    max_rate = max(up, down)
    half = HALF_LEN_PER_RATE * max_rate
    n = np.arange(2 * half + 1) - half
    cutoff = 1.0 / max_rate                     # fraction of the up-sampled Nyquist frequency
    h = cutoff * np.sinc(cutoff * n) * np.kaiser(2 * half + 1, KAISER_BETA)
    return h / h.sum() * up                    # unit DC gain after zero-stuffing by `up`


class Resampler:
    """Streams a mono signal from rate_in to rate_out: feed() blocks, then finish(); the output
    equals resampling the whole signal at once, with memory bounded by the block size."""

    def __init__(self, rate_in: int, rate_out: int, block: int = 16384):
        g = gcd(rate_in, rate_out)
        self.up, self.down = rate_out // g, rate_in // g
        h = lowpass(self.up, self.down)
        self.half = (len(h) - 1) // 2
        self.taps = -(-len(h) // self.up)                      # input samples per output sample
        padded = np.zeros(self.taps * self.up)
        padded[:len(h)] = h
        self.phases = padded.reshape(self.taps, self.up).T     # [up, taps]: phase p, tap k = h[p + k*up]
        self.block = block
        self.buf = np.zeros(self.taps, np.float64)             # zeros before the signal start
        self.buf_start = -self.taps                            # absolute index of buf[0]
        self.n_in = 0                                          # input samples fed so far
        self.n_out = 0                                         # output samples produced so far

    def _outputs(self, stop: int) -> np.ndarray:
        """Output samples n_out .. stop-1 (their inputs must be in buf, zeros past the end)."""
        chunks = []
        while self.n_out < stop:
            n = np.arange(self.n_out, min(stop, self.n_out + self.block))
            t = n * self.down + self.half
            newest = t // self.up                              # newest input index each output uses
            phase = t - newest * self.up
            idx = newest[:, None] - np.arange(self.taps)[None, :] - self.buf_start
            chunks.append(np.einsum("ij,ij->i", self.buf[idx], self.phases[phase]))
            self.n_out = int(n[-1]) + 1
        return np.concatenate(chunks) if chunks else np.zeros(0)

    def _ready(self, available_in: int) -> int:
        """How many outputs can be made when inputs [0, available_in) are known."""
        # output n needs inputs up to (n*down + half) // up
        return max(0, (available_in * self.up - self.half - 1) // self.down + 1)

    def feed(self, x: np.ndarray) -> np.ndarray:
        self.buf = np.concatenate([self.buf, np.asarray(x, np.float64)])
        self.n_in += len(x)
        out = self._outputs(self._ready(self.n_in))
        # keep only the inputs that later outputs still need
        oldest = (self.n_out * self.down + self.half) // self.up - self.taps + 1
        drop = max(0, oldest - self.buf_start)
        self.buf, self.buf_start = self.buf[drop:], self.buf_start + drop
        return out

    def finish(self) -> np.ndarray:
        total = -(-self.n_in * self.up // self.down)
        last_needed = ((total - 1) * self.down + self.half) // self.up if total else 0
        pad = max(0, last_needed + 1 - (self.buf_start + len(self.buf)))
        self.buf = np.concatenate([self.buf, np.zeros(pad)])
        return self._outputs(total)


def resample(x: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """The whole mono signal x at rate_in -> float32 at rate_out, ceil(len(x) * rate_out / rate_in) samples."""
    if rate_in == rate_out:
        return np.asarray(x, np.float32)
    r = Resampler(rate_in, rate_out)
    return np.concatenate([r.feed(x), r.finish()]).astype(np.float32)
