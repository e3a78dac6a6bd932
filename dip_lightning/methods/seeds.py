"""Seeds of a run's training noise, per data-parallel rank."""

from __future__ import annotations

RANK_SEED_STRIDE = 1000
"""Training-noise seed of rank r is ``seed * RANK_SEED_STRIDE + r``: distinct for up to 1000 ranks."""


def rank_seed(seed: int, rank: int) -> int:
    """Seed of one data-parallel rank's training noise (input perturbation, dropout, weight samples).

    Every rank draws different noise, so that averaging their gradients averages over more Monte
    Carlo samples, and a run is still reproducible; rank 0 of a data-parallel run draws the same
    noise as a single-device run with the same seed.
    """
    return int(seed) * RANK_SEED_STRIDE + int(rank)
