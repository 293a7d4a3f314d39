"""Split a layer dimension into tensor-train modes.

A TT layer reshapes a vector of length `dim` into a K-way tensor (m_1, ..., m_K) with
prod m_k == dim. Compression and speed come from the modes being of similar size: one
huge mode makes its core nearly as large as a dense matrix along that axis, and the
ranks needed for a given accuracy become lopsided. So we only accept balanced splits.

Usability rule: the best split (the one with the smallest largest/smallest mode ratio,
ties broken by the smaller largest mode) is usable when that ratio is at most
MAX_MODE_RATIO. A prime dim > MAX_MODE_RATIO has only the split (1, ..., 1, dim) and is
never usable; 2 and 3 are (their ratio is small), which keeps tiny test layers possible.
"""

import math

MAX_MODE_RATIO = 4


def _splits(dim: int, n_factors: int, smallest: int = 1):
    """Yield every ascending tuple of `n_factors` integers >= `smallest` whose product is `dim`."""
    if n_factors == 1:
        if dim >= smallest:
            yield (dim,)
        return
    factor = smallest
    # The first factor of an ascending split is at most the n-th root of what is left.
    while factor ** n_factors <= dim:
        if dim % factor == 0:
            for rest in _splits(dim // factor, n_factors - 1, factor):
                yield (factor, *rest)
        factor += 1


def _best_split(dim: int, n_factors: int) -> tuple[int, ...]:
    return min(_splits(dim, n_factors), key=lambda s: (s[-1] / s[0], s[-1]))


def _is_usable(dim: int, n_factors: int) -> bool:
    split = _best_split(dim, n_factors)
    return split[-1] / split[0] <= MAX_MODE_RATIO


def _nearest_usable(dim: int, n_factors: int, step: int) -> int:
    """Closest usable dimension going in direction `step` (+1 or -1).

    Terminates: powers of two are always usable going up, and 1 is usable going down.
    """
    candidate = dim + step
    while not _is_usable(candidate, n_factors):
        candidate += step
    return candidate


def _is_prime(n: int) -> bool:
    return n >= 2 and all(n % p for p in range(2, math.isqrt(n) + 1))


def factorize_dim(dim: int, n_factors: int) -> tuple[int, ...]:
    """Balanced factorisation of `dim` into `n_factors` ascending modes with product `dim`.

    Example: factorize_dim(768, 3) == (8, 8, 12). Raises ValueError (naming the
    nearest usable dimensions above and below) when the best split is unbalanced.
    """
    if not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be a positive integer, got {dim!r}")
    if not isinstance(n_factors, int) or n_factors < 1:
        raise ValueError(f"n_factors must be an integer >= 1, got {n_factors!r}")
    if n_factors == 1:
        return (dim,)
    split = _best_split(dim, n_factors)
    ratio = split[-1] / split[0]
    if ratio <= MAX_MODE_RATIO:
        return split
    reason = (
        "it is prime"
        if _is_prime(dim)
        else f"best split {split} has largest/smallest mode ratio {ratio:.1f} > {MAX_MODE_RATIO}"
    )
    above, below = _nearest_usable(dim, n_factors, +1), _nearest_usable(dim, n_factors, -1)
    raise ValueError(
        f"dimension {dim} cannot be split into {n_factors} balanced tensor-train modes ({reason}); "
        f"nearby usable: {above} or {below}"
    )
