"""Noise schedules and timestep respacing (Ho et al. 2020; Nichol & Dhariwal 2021, §3.2 and
§4; guided-diffusion ``respace.py``)."""
from __future__ import annotations

import math
import re

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


#: ``sigma<N>max<S>``: the low-noise time grid (see :func:`sigma_timesteps`), e.g. ``sigma100max2``.
SIGMA_GRID = re.compile(r"^sigma([0-9]+)max([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)$")

#: Values of a task config's ``conditioning.time_grid`` besides a ``{sigma_max: S}`` mapping.
UNIFORM_GRID = "uniform"
#: The valid forms of a timestep_respacing, as error messages name them.
RESPACING_FORMS = "'ddimN', 'sigma<N>max<S>', an integer N or a comma list like '10,20,30'"


def sigma_timesteps(betas: np.ndarray, num_steps: int, sigma_max: float) -> list[int]:
    """The low-noise time grid ``sigma<N>max<S>``: N timesteps at noise levels linear in σ from
    σ_max down to σ_max / N, sorted ascending.

    σ_t = √((1 − ᾱ_t) / ᾱ_t) is the noise level of x_t / √ᾱ_t (on the [-1, 1] image scale). Level
    k = N, N−1, …, 1 asks for σ = σ_max · k / N and takes the timestep t whose σ_t is nearest
    (ties: the smaller t); where two levels fall on one t (only possible at the dense low end),
    the higher one moves up to the next free t, so that the grid has exactly N distinct timesteps
    (N network calls); with many steps (e.g. 250 below σ_max = 2 on the 1000-step linear
    schedule) the top of the grid then lies a few timesteps above t(σ_max). This is deepinv's grid for its DDRM / DiffPIR samplers
    (``sigmas = np.linspace(1, 0, 100)`` on the [0, 1] image scale = σ from 2 to 0 on ours,
    converted to t through ᾱ; deepinv 0.5 ``deepinv/sampling/diffusion.py``), written as a family
    that scales with the step count: it spends the whole budget below σ_max instead of DDIM's
    uniform stride over all of [0, T) (``ddimN``), and the sampler starts from pure noise at
    t_N ≈ t(σ_max) (the DDIM update treats x_T ~ N(0, I) there; a prior sample at σ_max would
    have variance ᾱ(1 + σ_max²), ≈ 1 for σ_max ≥ 2).

    Args:
        betas: (T,) β of the original process (float64).
        num_steps: N >= 1.
        sigma_max: S > 0 (e.g. 2.0).

    Returns:
        N distinct timesteps in [0, T), ascending.

    Raises:
        ValueError: N < 1, S <= 0, or N distinct timesteps cannot fit below σ_max.

    Example:
        >>> from guided_diffusion.respace import get_named_beta_schedule
        >>> sigma_timesteps(get_named_beta_schedule("linear", 1000), 4, 2.0)
        [144, 258, 338, 396]
    """
    if num_steps < 1 or not sigma_max > 0:
        raise ValueError(f"diffusion config: timestep_respacing sigma{num_steps}max{sigma_max:g} needs >= 1 step "
                         "and sigma_max > 0")
    ab = np.cumprod(1.0 - np.asarray(betas, dtype=np.float64))
    sig = np.sqrt((1.0 - ab) / ab)
    kept, last = [], -1
    for k in range(1, num_steps + 1):                       # ascending in σ, so ascending in t
        t = max(int(np.argmin(np.abs(sig - sigma_max * k / num_steps))), last + 1)
        kept.append(t)
        last = t
    if last >= len(ab):
        raise ValueError(f"diffusion config: timestep_respacing sigma{num_steps}max{sigma_max:g}: {num_steps} "
                         f"distinct timesteps do not fit in the {len(ab)} of the process; take fewer steps "
                         "or a larger sigma_max")
    return kept


def grid_respacing(respacing, time_grid) -> str:
    """The ``timestep_respacing`` that a task config's ``conditioning.time_grid`` makes of the
    diffusion config's one: the same number of steps (network calls) on that grid.

    Args:
        respacing: the diffusion config's ``timestep_respacing``. Only the uniform forms
            (``ddimN``, ``N`` or the int N) are rewritten; an explicit grid (``"97,1,1,1"``,
            ``sigma100max2``, "") is kept as it is.
        time_grid: None or ``"uniform"`` (keep the respacing: ``ddimN`` / ``N``), or a mapping
            ``{sigma_max: S}`` (the low-noise family ``sigma<N>max<S>``, :func:`sigma_timesteps`).

    Returns:
        The respacing string (``respacing`` itself, as given, when nothing changes).

    Raises:
        ValueError: (one line) a time_grid that is none of the above.

    Example:
        >>> grid_respacing("ddim100", {"sigma_max": 2.0}), grid_respacing("ddim100", "uniform")
        ('sigma100max2', 'ddim100')
    """
    sigma_max = check_time_grid(time_grid)
    if sigma_max is None:
        return respacing
    s = str(respacing).strip() if respacing is not None else ""
    if isinstance(respacing, bool) or not re.fullmatch(r"(ddim)?[0-9]+", s):
        return respacing
    return f"sigma{int(s[4:] if s.startswith('ddim') else s)}max{sigma_max:g}"


def check_time_grid(time_grid) -> float | None:
    """σ_max of a ``conditioning.time_grid`` value, or None for the uniform grid (None or
    ``"uniform"``). Raises ValueError (one line) naming the valid forms."""
    if time_grid is None or time_grid == UNIFORM_GRID:
        return None
    if isinstance(time_grid, dict) and set(time_grid) == {"sigma_max"}:
        value = time_grid["sigma_max"]
        if not isinstance(value, bool) and isinstance(value, (int, float)) and value > 0:
            return float(value)
    if isinstance(time_grid, dict) and len(time_grid) == 1:
        (key, value), = time_grid.items()
        if value is None and isinstance(key, str) and ":" in key:   # YAML read {sigma_max:2} as one key
            raise ValueError(f"task config: conditioning.time_grid {{{key}}} is read by YAML as a key without a value; "
                             f"put a space after the colon: {{{key.replace(':', ': ', 1)}}}")
    raise ValueError(f"task config: conditioning.time_grid {time_grid!r} is not valid; use 'uniform' (default, "
                     "the diffusion config's ddimN) or a mapping {sigma_max: S} with S > 0 (the low-noise grid "
                     "sigma<N>max<S>)")


def respacing_steps(respacing) -> int | None:
    """Steps of a respacing string without building it (``ddim50`` -> 50, ``"250"`` -> 250,
    ``"10,10"`` -> 20, ``sigma100max2`` -> 100), or None for "" (all steps). Raises ValueError
    for a string of none of these forms."""
    s = "" if respacing is None else str(respacing).strip()
    if s == "":
        return None
    m = SIGMA_GRID.match(s)
    if m:
        return int(m.group(1))
    try:
        return int(s[4:]) if s.startswith("ddim") else sum(int(v) for v in s.split(","))
    except ValueError:
        raise ValueError(f"timestep_respacing {respacing!r} is not {RESPACING_FORMS}") from None


def space_timesteps(num_timesteps: int, section_counts, betas: np.ndarray | None = None) -> list[int]:
    """The original timesteps kept by a respacing, sorted ascending.

    ``section_counts``: an int or "250" (that many evenly strided steps), "ddimN" (the DDIM
    stride: range(0, T, s) with exactly N entries), "sigma<N>max<S>" (N steps linear in σ below
    σ_max = S, :func:`sigma_timesteps`; needs ``betas``, (T,) of the original process; without
    them, the linear schedule of T steps), or "10,20,30" (the process cut into equal sections,
    each given that many evenly spaced steps), or a list of timesteps (the grid itself, as a run
    specification holds it). "" keeps all T steps.
    Raises ValueError when a count is impossible."""
    if isinstance(section_counts, (list, tuple)):   # the grid itself (a run specification's timesteps)
        kept = sorted({int(t) for t in section_counts})
        if not kept or kept[0] < 0 or kept[-1] >= num_timesteps or any(isinstance(t, bool) for t in section_counts):
            raise ValueError(f"diffusion config: timesteps must be integers in [0, {num_timesteps}), got "
                             f"{list(section_counts)[:8]}")
        return kept
    if section_counts in ("", None):
        return list(range(num_timesteps))
    if isinstance(section_counts, int):
        section_counts = str(section_counts)
    m = SIGMA_GRID.match(section_counts.strip()) if isinstance(section_counts, str) else None
    if m:
        if betas is None:
            betas = get_named_beta_schedule("linear", num_timesteps)
        if len(betas) != num_timesteps:
            raise ValueError(f"space_timesteps: {len(betas)} betas for a process of {num_timesteps} steps")
        return sigma_timesteps(betas, int(m.group(1)), float(m.group(2)))
    if isinstance(section_counts, str) and section_counts.startswith("ddim"):
        try:
            desired = int(section_counts[len("ddim"):])
        except ValueError:
            raise ValueError(f"diffusion config: timestep_respacing {section_counts!r} is not {RESPACING_FORMS}") from None
        for stride in range(1, num_timesteps + 1):
            if len(range(0, num_timesteps, stride)) == desired:
                return list(range(0, num_timesteps, stride))
        raise ValueError(f"diffusion config: cannot make exactly {desired} DDIM steps with a fixed stride "
                         f"out of {num_timesteps}; pick a divisor-friendly count (e.g. ddim50, ddim100)")
    try:
        counts = [int(x) for x in str(section_counts).split(",")]
    except ValueError:
        raise ValueError(f"diffusion config: timestep_respacing {section_counts!r} is not {RESPACING_FORMS}") from None
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
