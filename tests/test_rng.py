import numpy as np
import pytest

from swarm.rng import KeyedRNG


def test_draws_are_pure_functions_of_their_key():
    rng = KeyedRNG(11)
    keys = np.arange(100_000)
    a = rng.uniform("s", keys, step=4)
    # The same keys in another order and in pieces give the same numbers.
    perm = np.random.default_rng(0).permutation(keys.size)
    b = rng.uniform("s", keys[perm], step=4)
    assert np.array_equal(a[perm], b)
    assert np.array_equal(a[:10], KeyedRNG(11).uniform("s", keys[:10], step=4))


def test_every_part_of_the_key_matters():
    keys = np.arange(1000)
    base = KeyedRNG(1).uniform("s", keys, step=0, draw=0)
    for other in (
        KeyedRNG(2).uniform("s", keys, step=0, draw=0),
        KeyedRNG(1).uniform("t", keys, step=0, draw=0),
        KeyedRNG(1).uniform("s", keys, step=1, draw=0),
        KeyedRNG(1).uniform("s", keys, step=0, draw=1),
        KeyedRNG(1).uniform("s", keys + 1, step=0, draw=0),
    ):
        assert np.mean(base == other) < 0.01


def test_uniform_is_uniform_and_uncorrelated():
    u = KeyedRNG(3).uniform("s", np.arange(400_000))
    counts = np.bincount((u * 20).astype(int), minlength=20)
    expected = u.size / 20
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 45  # 19 dof: p ~ 1e-3
    assert abs(np.corrcoef(u[:-1], u[1:])[0, 1]) < 0.01
    assert u.min() >= 0 and u.max() < 1


def test_bernoulli_matches_uniform_threshold():
    rng = KeyedRNG(9)
    keys = np.arange(200_000)
    for p in (0.0, 0.05, 0.5, 1.0):
        b = rng.bernoulli("x", keys, p=p, step=2)
        assert np.array_equal(b, rng.uniform("x", keys, step=2) < p)
    assert abs(rng.bernoulli("x", keys, p=0.3).mean() - 0.3) < 0.005


def test_two_keys_and_scalars():
    rng = KeyedRNG(0)
    a, b = np.arange(50), np.arange(50)[::-1]
    h = rng.bits("pair", a, b)
    assert not np.array_equal(h, rng.bits("pair", b, a))
    assert rng.uniform("s", np.int64(7)).shape == (1,)


def test_rejects_bad_seed_and_p():
    with pytest.raises(ValueError, match="seed"):
        KeyedRNG(-1)
    with pytest.raises(ValueError, match="p must be"):
        KeyedRNG(0).bernoulli("x", np.arange(3), p=1.5)
