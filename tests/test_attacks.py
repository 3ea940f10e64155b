"""Each attack's defining property, framework round trips and argument errors."""

import math

import numpy as np
import pytest

from flagcore import attacks
from flagcore.attacks import ATTACKS, alie_z, attack


@pytest.fixture
def honest():
    return np.random.default_rng(0).standard_normal((12, 400)).astype(np.float32)


@pytest.mark.parametrize("name", ATTACKS)
def test_shape_dtype_and_seed(name, honest):
    out = attack(name, honest, 3, seed=5)
    assert out.shape == (3, 400) and out.dtype == np.float32
    np.testing.assert_array_equal(out, attack(name, honest, 3, seed=5))
    assert attack(name, honest, 0).shape == (0, 400)


def test_random(honest):
    out = attack("random", honest, 4, seed=1)
    assert out.min() >= 0.0 and out.max() < 1.0 and abs(out.mean() - 0.5) < 0.02
    assert not np.array_equal(out, attack("random", honest, 4, seed=2))


def test_sign_flip_and_ipm(honest):
    mean = honest.astype(np.float64).mean(axis=0)
    np.testing.assert_allclose(
        attack("sign_flip", honest, 2), np.stack([-mean, -mean]), rtol=1e-6, atol=1e-7
    )
    np.testing.assert_allclose(
        attack("sign_flip", honest, 1, scale=3.0)[0], -3.0 * mean, rtol=1e-6, atol=1e-6
    )
    ipm = attack("ipm", honest, 2, eps=0.5)
    np.testing.assert_allclose(ipm[0], -0.5 * mean, rtol=1e-6, atol=1e-7)
    assert ipm[0].astype(np.float64) @ mean < 0  # the defining property: negative inner product
    np.testing.assert_allclose(attack("ipm", honest, 1)[0], -0.1 * mean, rtol=1e-6, atol=1e-7)


def test_gaussian(honest):
    out = attack("gaussian", honest, 5, seed=3, mu=2.0, sigma=0.5).astype(np.float64)
    assert abs(out.mean() - 2.0) < 0.02 and abs(out.std() - 0.5) < 0.02


@pytest.mark.parametrize("name", ["zero", "drop"])
@pytest.mark.parametrize("fraction", [0.0, 0.25, 1.0])
def test_drop_zeroes_exactly_a_fraction(name, honest, fraction):
    out = attack(name, honest, 3, seed=4, fraction=fraction)
    for j in range(3):
        zeroed = out[j] == 0
        assert zeroed.sum() == round(fraction * 400)
        np.testing.assert_array_equal(out[j][~zeroed], honest[j][~zeroed])  # the rest unchanged
    if 0 < fraction < 1:
        assert not np.array_equal(out[0] == 0, out[1] == 0)  # each attacker its own coordinates


def test_nan_inf(honest):
    assert np.isnan(attack("nan", honest, 2)).all()
    assert np.isposinf(attack("inf", honest, 2)).all()


def test_alie_matches_paper(honest):
    # p = 50, f = 24 -> s = floor(26) - 24 = 2, z = Phi^-1(48/50) = Phi^-1(0.96)
    assert math.isclose(alie_z(50, 24), 1.7506860712521692, rel_tol=1e-12)
    h = honest.astype(np.float64)
    z = alie_z(15, 3)  # s = 8 - 3 = 5, Phi^-1(10/15)
    assert math.isclose(z, 0.4307272992954576, rel_tol=1e-12)
    out = attack("alie", honest, 3)
    np.testing.assert_allclose(out[0], h.mean(0) - z * h.std(0, ddof=1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        attack("alie", honest, 1, z=2.0)[0],
        h.mean(0) - 2.0 * h.std(0, ddof=1),
        rtol=1e-5,
        atol=1e-6,
    )
    assert np.isfinite(out).all()  # the FA code's ALIE sent NaN
    with pytest.raises(ValueError, match=r"attack: attack 'alie' needs at least 2 honest"):
        attack("alie", honest[:1], 2)


def test_alie_f_zero_and_f_too_large_for_z_max(honest):
    # f = 0 sends nothing, as every attack does, even where z_max is undefined (p = 2, f = 0)
    assert attack("alie", honest[:2], 0).shape == (0, 400)
    assert attack("alie", honest[:2], 0, z=1.0).shape == (0, 400)
    assert attack("alie", honest[:1], 0).shape == (0, 400)  # one honest row: no std needed
    assert attack("optimal_alie", honest[:1], 0, rule="median").shape == (0, 400)
    with pytest.raises(ValueError, match="needs at least 2 honest gradients"):
        attack("alie", honest[:1], 1)
    # z_max needs f < floor(p / 2 + 1): p = 82, f = 70; the error names the caller and the attack
    with pytest.raises(
        ValueError,
        match=r"^attack: attack 'alie': f is too large for ALIE's z_max, which needs "
        r"f < floor\(p / 2 \+ 1\) = 42; got p = 82 \(honest \+ f\), f = 70; pass z explicitly$",
    ):
        attack("alie", honest, 70)
    out = attack("alie", honest, 70, z=1.5)  # an explicit z needs no z_max
    assert out.shape == (70, 400) and np.isfinite(out).all()
    # alie_z itself keeps its own message
    with pytest.raises(ValueError, match=r"alie_z: \(p - s\) / p must be in \(0, 1\)"):
        alie_z(2, 0)
    with pytest.raises(ValueError, match=r"alie_z: \(p - s\) / p must be in \(0, 1\)"):
        alie_z(82, 70)


def test_mimic(honest):
    np.testing.assert_array_equal(attack("mimic", honest, 3, target=4), np.stack([honest[4]] * 3))
    with pytest.raises(ValueError, match=r"attack: target must be in \[0, 11\], got 12"):
        attack("mimic", honest, 1, target=12)


def test_torch_round_trip(honest):
    torch = pytest.importorskip("torch")
    t = torch.from_numpy(honest).to(torch.float16)
    for name in ATTACKS:
        out = attack(name, t, 2, seed=1)
        assert (
            isinstance(out, torch.Tensor)
            and out.dtype == torch.float16
            and tuple(out.shape) == (2, 400)
        )
    np.testing.assert_allclose(
        attack("ipm", t, 1).float().numpy()[0],
        -0.1 * t.double().numpy().mean(0),
        rtol=1e-2,
        atol=1e-3,
    )


def test_errors(honest):
    with pytest.raises(ValueError, match=r"attack: name must be one of .*got 'lie'"):
        attack("lie", honest, 1)
    with pytest.raises(TypeError, match=r"attack: attack 'random' takes no parameter 'scale'"):
        attack("random", honest, 1, scale=2.0)
    with pytest.raises(ValueError, match=r"attack: honest must be \(h, n\)"):
        attack("random", honest[0], 1)
    with pytest.raises(ValueError, match=r"attack: f must be in \[0, inf\], got -1"):
        attack("random", honest, -1)
    with pytest.raises(ValueError, match=r"attack: fraction must be in \[0, 1\], got 1.5"):
        attack("drop", honest, 1, fraction=1.5)
    assert attacks.ATTACKS == ATTACKS


@pytest.mark.parametrize("scale", [1e200, 0.5 * np.finfo(np.float64).max])
def test_statistics_of_huge_honest_gradients_do_not_overflow(scale):
    # Squares (std) overflow beyond ~1e154 and sums near DBL_MAX; the statistics themselves do not.
    h = np.random.default_rng(3).uniform(0.5, 1.0, (6, 20)) * scale
    small = h / scale
    z = 0.5
    np.testing.assert_allclose(
        attack("alie", h, 2, z=z)[0] / scale, small.mean(0) - z * small.std(0, ddof=1), rtol=1e-12
    )
    np.testing.assert_allclose(attack("sign_flip", h, 1)[0] / scale, -small.mean(0), rtol=1e-12)
    np.testing.assert_allclose(attack("ipm", h, 1)[0] / scale, -0.1 * small.mean(0), rtol=1e-12)


def test_non_finite_honest_gradients_give_non_finite_attacks_without_warnings():
    h = np.ones((4, 5))
    h[1, 2] = np.inf
    out = attack("alie", h, 2)  # warnings are errors in this test suite
    assert not np.isfinite(out[:, 2]).any() and np.isfinite(np.delete(out, 2, axis=1)).all()
