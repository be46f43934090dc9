"""Noise schedules and timestep respacing (Ho et al. 2020; Nichol & Dhariwal 2021, §3.2 and
§4; guided-diffusion ``respace.py``)."""
from __future__ import annotations

import math

import numpy as np


def betas_for_alpha_bar(num_diffusion_timesteps: int, alpha_bar, max_beta: float = 0.999) -> np.ndarray:
    """β_t = min(1 − ᾱ(t+1/T) / ᾱ(t/T), max_beta) for a continuous ᾱ: [0, 1] -> [0, 1]."""
    betas = []
    for i in range(num_diffusion_timesteps):
        t1, t2 = i / num_diffusion_timesteps, (i + 1) / num_diffusion_timesteps
        betas.append(min(1 - alpha_bar(t2) / alpha_bar(t1), max_beta))
    return np.array(betas, dtype=np.float64)


def get_named_beta_schedule(schedule_name: str, num_diffusion_timesteps: int) -> np.ndarray:
    """The β_t of a named schedule, (T,) float64.

    ``linear``: Ho et al. 2020, β from 1e-4 to 0.02 scaled by 1000 / T so that any T gives
    the same process. ``cosine``: Nichol & Dhariwal 2021, eq. 17, ᾱ(t) = cos²((t + 0.008) / 1.008 · π/2).
    Raises ValueError for another name or a non-positive T."""
    if not isinstance(num_diffusion_timesteps, int) or num_diffusion_timesteps <= 0:
        raise ValueError(f"diffusion config: steps must be a positive integer, got {num_diffusion_timesteps!r}")
    if schedule_name == "linear":
        scale = 1000 / num_diffusion_timesteps
        return np.linspace(scale * 0.0001, scale * 0.02, num_diffusion_timesteps, dtype=np.float64)
    if schedule_name == "cosine":
        return betas_for_alpha_bar(num_diffusion_timesteps,
                                   lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2)
    raise ValueError(f"diffusion config: unknown noise_schedule {schedule_name!r}; valid: linear, cosine")


def space_timesteps(num_timesteps: int, section_counts) -> list[int]:
    """The original timesteps kept by a respacing, sorted ascending.

    ``section_counts``: an int or "250" (that many evenly strided steps), "ddimN" (the DDIM
    stride: range(0, T, s) with exactly N entries), or "10,20,30" (the process cut into equal
    sections, each given that many evenly spaced steps). "" keeps all T steps.
    Raises ValueError when a count is impossible."""
    if section_counts in ("", None):
        return list(range(num_timesteps))
    if isinstance(section_counts, int):
        section_counts = str(section_counts)
    if isinstance(section_counts, str) and section_counts.startswith("ddim"):
        try:
            desired = int(section_counts[len("ddim"):])
        except ValueError:
            raise ValueError(f"diffusion config: timestep_respacing {section_counts!r} is not 'ddimN'") from None
        for stride in range(1, num_timesteps + 1):
            if len(range(0, num_timesteps, stride)) == desired:
                return list(range(0, num_timesteps, stride))
        raise ValueError(f"diffusion config: cannot make exactly {desired} DDIM steps with a fixed stride "
                         f"out of {num_timesteps}; pick a divisor-friendly count (e.g. ddim50, ddim100)")
    try:
        counts = [int(x) for x in str(section_counts).split(",")]
    except ValueError:
        raise ValueError(f"diffusion config: timestep_respacing {section_counts!r} is not an integer, "
                         f"'ddimN' or a comma list like '10,20,30'") from None
    size_per, extra = divmod(num_timesteps, len(counts))
    start, kept = 0, []
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if count <= 0 or size < count:
            raise ValueError(f"diffusion config: timestep_respacing section {i} has {size} steps, cannot take {count}")
        frac_stride = 1 if count <= 1 else (size - 1) / (count - 1)
        cur = 0.0
        for _ in range(count):
            kept.append(start + round(cur))
            cur += frac_stride
        start += size
    return sorted(set(kept))


def respaced_betas(betas: np.ndarray, use_timesteps: list[int]) -> np.ndarray:
    """β of the process that visits only ``use_timesteps``: 1 − ᾱ_{k} / ᾱ_{k_prev} (same ᾱ at kept steps)."""
    alphas_cumprod = np.cumprod(1.0 - betas)
    new_betas, last = [], 1.0
    for t in use_timesteps:
        new_betas.append(1 - alphas_cumprod[t] / last)
        last = alphas_cumprod[t]
    return np.array(new_betas, dtype=np.float64)
