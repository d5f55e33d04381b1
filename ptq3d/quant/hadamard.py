"""Hadamard transforms in torch: fast Walsh-Hadamard (powers of two), Paley Hadamard matrices for the
non-power-of-two factor, their Kronecker product, and the randomized rotation R = D H / sqrt(n).

Conventions
- Vectors are rows: the transform of x [..., n] is x @ H (H the +-1 matrix, H H^T = n I), so an
  orthonormal rotation is x @ R with R = diag(signs) H / sqrt(n) (QuaRot / QuIP# construction).
- n = m * 2^k with m in `hadamard_orders_small()` (1, 12, 20, 24, ...): H_n = H_m kron H_{2^k}, flat index
  i = i_m * 2^k + i_2. VGGT-1B widths 1024 and 4096 are powers of two; the tiny widths use
  384 = 12 * 32 and 1536 = 12 * 128 (H_12 kron H_32, H_12 kron H_128).
- H_{2^k} is Sylvester's (symmetric); H_m (m > 1) is Paley's construction I (q = m - 1 prime, q = 3 mod 4),
  which is not symmetric, so the inverse uses H_m^T.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

from ptq3d.errors import ConfigError


def is_power_of_two(n: int) -> bool:
    return n >= 1 and (n & (n - 1)) == 0


def fwht(x: torch.Tensor, normalize: bool = False) -> torch.Tensor:
    """Fast Walsh-Hadamard transform over the last dim (a power of two): x @ H_n (Sylvester order),
    O(n log n). normalize=True divides by sqrt(n) (then it is orthonormal and its own inverse)."""
    n = x.shape[-1]
    if not is_power_of_two(n):
        raise ConfigError(f"fwht needs a power-of-two last dimension, got {n}")
    shape = x.shape
    y = x.reshape(-1, n)
    h = 1
    while h < n:
        y = y.reshape(-1, n // (2 * h), 2, h)
        a, b = y[:, :, 0, :], y[:, :, 1, :]
        y = torch.stack((a + b, a - b), dim=2)
        h *= 2
    y = y.reshape(shape)
    return y / math.sqrt(n) if normalize else y


def _is_prime(q: int) -> bool:
    return q >= 2 and all(q % d for d in range(2, int(math.isqrt(q)) + 1))


def paley_hadamard(m: int) -> torch.Tensor:
    """Hadamard matrix of order m = q + 1 (q prime, q = 3 mod 4) by Paley's construction I:
    Q_ij = legendre(j - i mod q) (skew-symmetric), S = [[0, 1^T], [-1, Q]], H = I + S. float32 [m, m]."""
    q = m - 1
    if not (_is_prime(q) and q % 4 == 3):
        raise ConfigError(f"no Paley-I Hadamard matrix of order {m} (needs m-1 prime and = 3 mod 4)")
    residues = {(k * k) % q for k in range(1, q)}
    chi = [0] + [1 if a in residues else -1 for a in range(1, q)]
    S = torch.zeros(m, m)
    S[0, 1:] = 1
    S[1:, 0] = -1
    for i in range(q):
        for j in range(q):
            S[1 + i, 1 + j] = chi[(j - i) % q]
    return torch.eye(m) + S


def hadamard_orders_small(limit: int = 200) -> list[int]:
    """Orders m > 1 available for the non-power-of-two Kronecker factor (Paley I), ascending."""
    return [q + 1 for q in range(3, limit) if _is_prime(q) and q % 4 == 3]


def kronecker_factor(n: int) -> int:
    """The small factor m (1 if n is a power of two) with n = m * 2^k, m a known Hadamard order (smallest
    such m). Raises ConfigError if none exists (e.g. n = 3 * 2^k)."""
    if n < 1:
        raise ConfigError(f"Hadamard size must be positive, got {n}")
    if is_power_of_two(n):
        return 1
    for m in hadamard_orders_small():
        if n % m == 0 and is_power_of_two(n // m):
            return m
    raise ConfigError(
        f"no Hadamard construction for size {n}: need n = m * 2^k with m a power of two or one of "
        f"{hadamard_orders_small()[:8]}..."
    )


@lru_cache(maxsize=16)
def _small_hadamard(m: int) -> torch.Tensor:
    return paley_hadamard(m)


def hadamard_matrix(n: int) -> torch.Tensor:
    """The +-1 Hadamard matrix H_n = H_m kron H_{2^k} (float32 [n, n]; H H^T = n I)."""
    return hadamard_transform(torch.eye(n), normalize=False)


def hadamard_transform(
    x: torch.Tensor,
    signs: torch.Tensor | None = None,
    normalize: bool = True,
    inverse: bool = False,
    factor: int | None = None,
) -> torch.Tensor:
    """x @ R over the last dim n, R = diag(signs) H_n (/ sqrt(n) if normalize); inverse=True applies R^T
    (for normalize=True that is R^-1). factor: the non-power-of-two Kronecker factor m (default: found by
    kronecker_factor). signs: [n] of +-1 or None (plain Hadamard)."""
    n = x.shape[-1]
    m = kronecker_factor(n) if factor is None else factor
    if n % m or not is_power_of_two(n // m):
        raise ConfigError(f"Hadamard factor {m} does not split size {n} into m * 2^k")
    if signs is not None and not inverse:
        x = x * signs.to(x.dtype)
    if m == 1:
        y = fwht(x)
    else:
        k = n // m
        hm = _small_hadamard(m).to(dtype=x.dtype, device=x.device)
        if inverse:
            hm = hm.t()
        y = fwht(x.reshape(*x.shape[:-1], m, k))  # H_{2^k} on the fast index
        # (x @ (A kron B))[j1, j2] = sum_i1 A[i1, j1] (X B)[i1, j2]
        y = torch.einsum("...ik,ij->...jk", y, hm).reshape(x.shape)
    if normalize:
        y = y / math.sqrt(n)
    if signs is not None and inverse:
        y = y * signs.to(y.dtype)
    return y


def random_signs(n: int, seed: int) -> torch.Tensor:
    """[n] float32 of +-1 from a seeded CPU generator (reproducible across machines)."""
    g = torch.Generator().manual_seed(int(seed))
    return torch.randint(0, 2, (n,), generator=g).float() * 2 - 1


def random_hadamard_matrix(n: int, seed: int) -> torch.Tensor:
    """Dense orthonormal R = diag(signs) H_n / sqrt(n) (float32 [n, n]); x @ R == hadamard_transform(x, signs)."""
    return hadamard_transform(torch.eye(n), random_signs(n, seed))
