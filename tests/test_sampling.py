import dataclasses

import numpy as np
import pytest

from gemma3n_rt.sampling import TOP_K_ROW, Sampler, SamplingParams, top_k_ids

VOCAB = 262400


@pytest.fixture(scope="module")
def logits():
    return np.random.default_rng(0).normal(0, 3, VOCAB).astype(np.float32)


def draws(params, logits, n):
    sampler = Sampler(params)
    return [sampler.sample(logits) for _ in range(n)]


def test_defaults_are_greedy():
    params = SamplingParams()
    assert (params.temperature, params.top_k, params.top_p, params.seed) == (0.0, 0, 1.0, None)
    assert params.greedy
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.temperature = 1.0


def test_greedy_is_argmax(logits):
    assert draws(SamplingParams(), logits, 3) == [int(np.argmax(logits))] * 3
    # temperature 0 ignores top_k/top_p
    assert draws(SamplingParams(top_k=5, top_p=0.5), logits, 1) == [int(np.argmax(logits))]


def test_same_seed_same_sequence(logits):
    params = SamplingParams(temperature=1.0, top_k=64, top_p=0.95, seed=1234)
    first = draws(params, logits, 50)
    assert first == draws(params, logits, 50)
    assert len(set(first)) > 1  # it does sample, not argmax
    assert first != draws(dataclasses.replace(params, seed=1235), logits, 50)


def test_unseeded_samplers_differ(logits):
    params = SamplingParams(temperature=1.0)
    assert draws(params, logits, 20) != draws(params, logits, 20)


def test_top_k_one_and_tiny_top_p_are_greedy(logits):
    best = int(np.argmax(logits))
    assert set(draws(SamplingParams(temperature=2.0, top_k=1, seed=0), logits, 20)) == {best}
    assert set(draws(SamplingParams(temperature=2.0, top_p=1e-9, seed=0), logits, 20)) == {best}


def test_tiny_temperature_is_greedy(logits):
    """A temperature near 0 (down to the smallest float) picks the argmax, with no nan on the way."""
    best = int(np.argmax(logits))
    with np.errstate(invalid="raise", divide="raise"):
        for t in (1e-3, 1e-30, 1e-300, 5e-324):
            assert set(draws(SamplingParams(temperature=t, seed=0), logits, 5)) == {best}
            assert set(draws(SamplingParams(temperature=t, top_k=40, top_p=0.9, seed=0), logits, 5)) == {best}


def test_top_k_stays_within_top_k():
    small = np.array([3.0, -1.0, 2.5, 0.0, 2.9, 1.0, 2.8, -2.0], dtype=np.float32)
    counts = np.bincount(draws(SamplingParams(temperature=5.0, top_k=3, seed=7), small, 3000),
                         minlength=small.size)
    assert set(np.flatnonzero(counts)) == {0, 4, 6}  # the 3 largest, each drawn


@pytest.mark.parametrize("n", [1, 5, 4 * TOP_K_ROW, 4 * TOP_K_ROW + 3, 262144])
@pytest.mark.parametrize("k", [1, 2, 64, 300])
@pytest.mark.parametrize("values", ["spread", "ties"])
def test_top_k_ids_is_argpartitions_set(n, k, values):
    """The row-maxima shortcut picks the same values as a full argpartition: on a vocabulary of
    Gemma's size, on sizes that don't divide into rows, with k above the size, and with ties
    (where either may pick any of the tied ids, so the values are compared)."""
    rng = np.random.default_rng(n * 1000 + k)
    for _ in range(5):
        x = rng.standard_normal(n).astype(np.float32) * 4
        if values == "ties":
            x = np.round(x)
        ids = top_k_ids(x, k)
        want = np.argpartition(x, n - k)[n - k:] if k < n else np.arange(n)
        assert len(ids) == len(set(ids.tolist())) == min(k, n)
        assert np.array_equal(np.sort(x[ids]), np.sort(x[want]))
        if values == "spread":
            assert set(ids.tolist()) == set(want.tolist())


def test_top_p_keeps_smallest_nucleus():
    # probs 0.5, 0.3, 0.15, 0.05: 0.5 < top_p <= 0.5 + 0.3, so the nucleus is {1, 3}.
    small = np.log(np.array([0.15, 0.5, 0.05, 0.3]))
    counts = np.bincount(draws(SamplingParams(temperature=1.0, top_p=0.75, seed=3), small, 3000),
                         minlength=4)
    assert set(np.flatnonzero(counts)) == {1, 3}
    assert abs(counts[1] / counts.sum() - 0.5 / 0.8) < 0.05  # renormalized within the nucleus


def test_temperature_follows_softmax():
    small = np.array([1.0, 0.0, -1.0])
    counts = np.bincount(draws(SamplingParams(temperature=0.5, seed=11), small, 20000),
                         minlength=3)
    expected = np.exp(small / 0.5) / np.exp(small / 0.5).sum()
    assert np.allclose(counts / counts.sum(), expected, atol=0.02)


@pytest.mark.parametrize("kwargs, match", [
    ({"temperature": -0.1}, "temperature must be"),
    ({"temperature": float("nan")}, "temperature must be"),
    ({"top_k": -1}, "top_k must be"),
    ({"top_k": 2.5}, "top_k must be"),
    ({"top_p": 0.0}, r"top_p must be in \(0, 1\], got 0.0"),
    ({"top_p": 1.5}, r"top_p must be in \(0, 1\], got 1.5"),
    ({"seed": -3}, "seed must be"),
])
def test_invalid_params(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamplingParams(**kwargs)


def test_rejects_bad_logits_shape():
    with pytest.raises(ValueError, match="logits"):
        Sampler(SamplingParams()).sample(np.zeros((2, 3), dtype=np.float32))
