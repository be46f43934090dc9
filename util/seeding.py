"""Per-image random streams: image i of a run with seed s draws everything (initial noise,
sampler noise, measurement noise, kernels and masks) from generators seeded by (s, i, stream),
so results do not depend on the batch size or on which images share a batch."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

#: Independent streams per image.
STREAM_OPERATOR = 0   # random kernel / mask of the operator (numpy)
STREAM_NOISE = 1      # measurement noise (torch)
STREAM_SAMPLER = 2    # x_T and the sampler's per-step noise (torch)


#: The seeds a run accepts: what torch.manual_seed and numpy's SeedSequence both take as given.
SEED_MAX = (1 << 63) - 1


def check_seed(seed: int, flag: str = "--seed") -> int:
    """Return ``seed`` when 0 <= seed <= :data:`SEED_MAX` (2^63 − 1). Raises ValueError (one
    line naming ``flag`` and the valid range) for a negative, too large or non-integer seed,
    before anything runs (a 20-digit seed would otherwise fail in torch.manual_seed)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= SEED_MAX:
        raise ValueError(f"{flag} must be an integer in [0, {SEED_MAX}] (0 to 2^63 - 1), got {seed}")
    return seed


def image_seed(seed: int, index: int, stream: int) -> int:
    """A 63-bit integer seed derived from (seed, image index, stream) by numpy's SeedSequence."""
    state = np.random.SeedSequence([int(seed), int(index), int(stream)]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


def numpy_rngs(seed: int, indices: Sequence[int], stream: int = STREAM_OPERATOR) -> list[np.random.Generator]:
    """One ``numpy.random.Generator`` per image index."""
    return [np.random.default_rng(image_seed(seed, i, stream)) for i in indices]


def torch_generators(seed: int, indices: Sequence[int], stream: int) -> list[torch.Generator]:
    """One CPU ``torch.Generator`` per image index (CPU so that a seed gives the same numbers on
    every device; draws are moved to the target device by :func:`randn`)."""
    gens = []
    for i in indices:
        g = torch.Generator(device="cpu")
        g.manual_seed(image_seed(seed, i, stream))
        gens.append(g)
    return gens


def randn(shape: Sequence[int], generators: Sequence[torch.Generator], device: str | torch.device = "cpu",
          dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard normal draws of per-sample ``shape`` (e.g. (C, H, W)) from each generator.

    Returns (N, *shape) on ``device`` with N = len(generators); sample n uses generators[n] only."""
    draws = [torch.randn(tuple(shape), generator=g, dtype=torch.float32) for g in generators]
    return torch.stack(draws).to(device=device, dtype=dtype)
