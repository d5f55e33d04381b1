"""Hadamard transforms: orthogonality, inverse, Kronecker sizes, fast == dense, rotation invariance."""

from __future__ import annotations

import pytest
import torch

from ptq3d.errors import ConfigError
from ptq3d.quant.hadamard import (
    fwht,
    hadamard_matrix,
    hadamard_transform,
    kronecker_factor,
    paley_hadamard,
    random_hadamard_matrix,
    random_signs,
)
from ptq3d.quant.qlinear import QuantLinear
from ptq3d.quant.spec import QuantSpec, fake_quantize
from ptq3d.quant.transforms import HadamardRotation


@pytest.mark.parametrize("m", [12, 20, 24, 44, 48])
def test_paley_matrices_are_hadamard(m):
    H = paley_hadamard(m)
    assert set(H.unique().tolist()) == {-1.0, 1.0}
    torch.testing.assert_close(H @ H.t(), m * torch.eye(m))


@pytest.mark.parametrize("n", [1, 2, 16, 64, 384, 1536, 96, 1024])
def test_hadamard_matrix_orthogonal(n):
    H = hadamard_matrix(n)
    torch.testing.assert_close(H @ H.t(), n * torch.eye(n), rtol=0, atol=1e-3)
    assert set(H.unique().tolist()) <= {-1.0, 1.0}


def test_kronecker_sizes():
    assert kronecker_factor(1024) == 1 and kronecker_factor(4096) == 1
    assert kronecker_factor(384) == 12 and kronecker_factor(1536) == 12
    assert kronecker_factor(768) == 12
    with pytest.raises(ConfigError, match="no Hadamard construction"):
        kronecker_factor(6)
    with pytest.raises(ConfigError):
        fwht(torch.zeros(3, 6))


def test_fwht_equals_sylvester_matmul():
    x = torch.randn(5, 7, 64, dtype=torch.float64)
    # Sylvester by doubling
    H = torch.ones(1, 1, dtype=torch.float64)
    while H.shape[0] < 64:
        H = torch.cat([torch.cat([H, H], 1), torch.cat([H, -H], 1)], 0)
    torch.testing.assert_close(fwht(x), x @ H)
    torch.testing.assert_close(fwht(fwht(x, normalize=True), normalize=True), x)


@pytest.mark.parametrize("n", [64, 384, 1536])
def test_random_hadamard_rotation_orthonormal_and_inverse(n):
    R = random_hadamard_matrix(n, seed=3)
    torch.testing.assert_close(R @ R.t(), torch.eye(n), rtol=0, atol=1e-5)
    x = torch.randn(4, 9, n)
    signs = random_signs(n, 3)
    y = hadamard_transform(x, signs)
    torch.testing.assert_close(y, x @ R, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(hadamard_transform(y, signs, inverse=True), x, rtol=1e-5, atol=1e-5)
    # norms preserved, different seeds give different rotations
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(R, random_hadamard_matrix(n, seed=4))


def test_rotation_spreads_outliers():
    x = torch.randn(256, 64)
    x[:, 3] *= 100
    y = HadamardRotation(64, seed=0)(x)
    ratio_before = (x.abs().amax(0).max() / x.abs().amax(0).median()).item()
    ratio_after = (y.abs().amax(0).max() / y.abs().amax(0).median()).item()
    assert ratio_after < ratio_before / 10


@pytest.mark.parametrize("n", [64, 384])
def test_rotated_fake_quant_16bit_equals_fp(n):
    torch.manual_seed(0)
    lin = torch.nn.Linear(n, 32)
    x = torch.randn(3, 10, n)
    x[..., 5] *= 30
    rot = HadamardRotation(n, seed=1)
    spec = QuantSpec(16, "channel")
    act = QuantSpec(16, "token", dynamic=True)
    ql = QuantLinear.from_linear(lin, spec, act, rot)
    with torch.no_grad():
        ref = lin(x)
        out = ql(x)
        # the transform itself is exact: rotated input times pre-rotated weight == FP to 1e-5
        exact = torch.nn.functional.linear(rot(x), rot.transform_weight(lin.weight), lin.bias)
    assert ((exact - ref).abs().max() / ref.abs().max()).item() < 1e-5
    # 16-bit quantization noise itself is ~ step / sqrt(12) ~ 2e-5 relative (measured 2.3e-5 / 4.0e-5)
    assert ((out - ref).norm() / ref.norm()).item() < 1e-4
    # and the rotated activations themselves survive 16-bit fake quantization
    xr = rot(x)
    assert ((fake_quantize(xr, act) - xr).abs().max() / xr.abs().max()).item() < 1e-4
