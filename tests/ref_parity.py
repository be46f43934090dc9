"""Identical inputs for the reference-parity tests (tests/test_ref_<method>.py) and the scripts
that ran the reference codes on them (tests/fixtures/make_ref_<method>.py): the networks, the
time grid, the operators, the measurement, x_T / x_t and the sampler noise, all from fixed seeds,
and one reverse step of ours built exactly as :func:`sampling.sample` builds it.

Everything is float32 on the CPU, images (N, C, H, W) in [-1, 1], N = 2. The scripts import this
module with the project root on ``sys.path``; the tests import it; it imports no reference code.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pytest
import torch
import yaml

from guided_diffusion.gaussian_diffusion import create_sampler
from guided_diffusion.unet import create_model
from operators import Physics, get_noise, get_operator
from sampling import NFECounter, Step
from util.seeding import STREAM_NOISE, STREAM_OPERATOR, STREAM_SAMPLER, numpy_rngs, randn, torch_generators

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"

#: One operator of each family, (registered name, arguments).
FAMILIES = {
    "blur": ("gaussian_blur", dict(kernel_size=5, intensity=0.6)),   # well conditioned: A⁺ in float32
    "sr": ("super_resolution", dict(scale_factor=2, degradation="bicubic")),
    "inpainting": ("inpainting", dict(mask_type="random", mask_prob_range=(0.5, 0.6))),
}
#: Operators used by one method's check only (not in :data:`FAMILIES`' loops).
EXTRA_FAMILIES = {"sr_avgpool": ("super_resolution", dict(scale_factor=2, degradation="avg_pool"))}
#: The networks: "tiny" (a random 16x16 ADM UNet) and "mnist" (the embedded prior, 32x32).
SHAPES = {"tiny": (2, 1, 16, 16), "mnist": (2, 1, 32, 32)}
#: Respaced grid of the one-step cases (the original timesteps 0, 50, ..., 950) and the indices
#: of high, middle and low noise on it (original t = 950, 500, 50).
STEP_GRID = "ddim20"
LEVELS = {"high": 19, "mid": 10, "low": 1}
#: The whole-loop cases: 10 DDIM steps (t = 900, 800, ..., 0).
LOOP_GRID = "ddim10"


def tiny_unet(seed: int = 0) -> torch.nn.Module:
    """A small random guided-diffusion UNet (16x16, 1 channel in, 2 out: ε̂ and the learned
    variance), with the zero-initialised output layers re-drawn (N(0, 0.05²), seeded) so that
    ε̂ and its Jacobian are not trivial. Eval mode, float32, no autocast. The initial weights come
    from torch's global generator, seeded here inside ``fork_rng`` (the caller's state is kept)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = create_model(image_size=16, num_channels=32, num_res_blocks=1, channel_mult="1,2", learn_sigma=True,
                           attention_resolutions="8", num_head_channels=32, use_scale_shift_norm=True,
                           resblock_updown=True, in_channels=1, use_fp16=False, channels_last=False, compile=False)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            if not bool(p.abs().sum() > 0):
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return net.eval()


def mnist_unet() -> torch.nn.Module:
    """The embedded prior (configs/MNIST/DDIM/model_config.yaml, ckpts/mnist32.pt), float32."""
    cfg = yaml.safe_load((ROOT / "configs/MNIST/DDIM/model_config.yaml").read_text())
    cfg.update(use_fp16=False, channels_last=False, compile=False, model_path=str(ROOT / cfg["model_path"]))
    return create_model(**cfg).eval()


def unet(name: str) -> torch.nn.Module:
    """:func:`tiny_unet` or :func:`mnist_unet` by name ("tiny", "mnist")."""
    return tiny_unet() if name == "tiny" else mnist_unet()


def eps_network(net: torch.nn.Module, channels: int = 1) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """ε̂(x, t): the first ``channels`` output channels of ``net`` at original timesteps t (N,)
    (the references' ``model(x, t)[:, :3]`` for our 1-channel images)."""
    return lambda x, t: net(x, t)[:, :channels]


def diffusion(respacing: str, eta: float = 1.0, clip: bool = False, sampler: str = "ddim") -> Any:
    """Our sampler on the 1000-step linear schedule with learned variances (the MNIST prior's),
    respaced by ``respacing``; ``clip``: clip x0_hat to [-1, 1] (our MNIST configs: true; the
    references: none)."""
    return create_sampler(sampler=sampler, steps=1000, noise_schedule="linear", model_mean_type="epsilon",
                          model_var_type="learned_range", clip_denoised=clip, timestep_respacing=respacing,
                          eta=eta)


def alpha_bar_original() -> torch.Tensor:
    """(1000,) float64 ᾱ_t of the original linear schedule, t = 0 … 999 (the values our respaced
    samplers take at their kept timesteps; the references' ``alpha(t)`` is given these)."""
    return torch.from_numpy(diffusion("").alphas_cumprod.copy())


def physics(family: str, shape: Sequence[int], sigma: float = 0.05, seed: int = 5,
            indices: Sequence[int] | None = None) -> Physics:
    """One operator of ``family`` (:data:`FAMILIES`) drawn for images of ``shape`` (random mask:
    seeded per image; ``indices``: the images' indices, default 0 … N−1, so that image k alone is
    ``indices=[k]`` with N = 1), with Gaussian noise σ_n = ``sigma`` (None, i.e. clean, for 0)."""
    name, kwargs = FAMILIES[family] if family in FAMILIES else EXTRA_FAMILIES[family]
    op = get_operator(name, **kwargs)
    phys = Physics(op, get_noise("gaussian", sigma=sigma) if sigma > 0 else None)
    idx = list(range(shape[0])) if indices is None else list(indices)
    phys.draw(numpy_rngs(seed, idx, STREAM_OPERATOR), tuple(shape))
    return phys


def ground_truth(shape: Sequence[int], seed: int = 1) -> torch.Tensor:
    """A smooth test image in [-1, 1], (N, C, H, W): seeded uniform noise, box-blurred twice."""
    x = torch.rand(tuple(shape), generator=torch.Generator().manual_seed(seed)) * 2 - 1
    k = torch.ones(shape[1], 1, 3, 3) / 9
    for _ in range(2):
        x = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (1, 1, 1, 1), mode="reflect"), k,
                                       groups=shape[1])
    return (x / x.abs().amax()).clamp(-1, 1)


def measurement(phys: Physics, x0: torch.Tensor, sigma_y: float = 0.05, seed: int = 7) -> torch.Tensor:
    """y = A x0 + σ_y n, n ~ N(0, I) seeded per image (independent of ``phys``'s own σ_n)."""
    ax = phys.A(x0)
    return ax + sigma_y * randn(ax.shape[1:], torch_generators(seed, list(range(x0.shape[0])), STREAM_NOISE))


def generators(n: int, seed: int = 9) -> list[torch.Generator]:
    """The N per-image sampler generators of a run (stream STREAM_SAMPLER)."""
    return torch_generators(seed, list(range(n)), STREAM_SAMPLER)


def x_T(shape: Sequence[int], seed: int = 9) -> torch.Tensor:
    """x_T of a run: the first draw of :func:`generators` (as the runner draws it)."""
    return randn(tuple(shape[1:]), generators(shape[0], seed))


def x_t_at(x0: torch.Tensor, alpha_bar: float, seed: int = 11) -> torch.Tensor:
    """x_t = √ᾱ x0 + √(1−ᾱ) z with z seeded (the state of a one-step case)."""
    z = randn(tuple(x0.shape[1:]), torch_generators(seed, list(range(x0.shape[0])), STREAM_SAMPLER))
    return alpha_bar ** 0.5 * x0 + (1 - alpha_bar) ** 0.5 * z


def step_noise(shape: Sequence[int], seed: int = 13, k: int = 0) -> torch.Tensor:
    """The k-th extra noise tensor of a one-step case (sampler noise z, a method's own draws)."""
    return randn(tuple(shape[1:]), torch_generators(seed + 1000 * k, list(range(shape[0])), STREAM_SAMPLER))


def our_step(diff: Any, model: Callable, x_t: torch.Tensor, t: int, noise: torch.Tensor, needs_grad: bool,
             gens: Sequence[torch.Generator] = ()) -> Step:
    """The :class:`sampling.Step` that :func:`sampling.sample` hands a method at respaced index
    ``t`` for state x_t and sampler noise ``noise`` (same construction, one network call)."""
    n = x_t.shape[0]
    tb = torch.full((n,), t, dtype=torch.long)
    x = x_t.detach().float()
    xg = x.detach().requires_grad_(True) if needs_grad else x
    ctx = torch.enable_grad() if needs_grad else torch.no_grad()
    with ctx:
        out = diff.p_mean_variance(model, xg, tb)
    plain = {k: v.detach() for k, v in out.items()}
    return Step(i=0, t=t, t_prev=t - 1, x_t=xg, alpha_bar=diff.alpha_bar(tb), alpha_bar_prev=diff.alpha_bar_prev(tb),
                eps=out["eps"], x0_hat=out["pred_xstart"], proposal=diff.proposal(plain, x, tb, noise), noise=noise,
                eta=diff.eta, sigma_t=diff.proposal_std(plain, tb), diffusion=diff, generators=list(gens),
                model=model, nfe=NFECounter())


#: Seeds of the perturbations whose largest effect is a loop's stored ``sensitivity``.
SENSITIVITY_SEEDS = (0, 1, 2)


def perturbed(x: torch.Tensor, rel: float = 3e-7, seed: int = 0) -> torch.Tensor:
    """x · (1 + rel · n), n ~ N(0, I) seeded: a change of a loop's x_T of the size of the float32
    round-off by which one step of ours and of a reference differ (1e-7 – 1e-6). The fixtures
    store the largest relative change of the reference's own output under the perturbations of
    :data:`SENSITIVITY_SEEDS` (``sensitivity``): a loop that amplifies round-off cannot agree to
    better than that, whoever computes it."""
    return x * (1 + rel * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed)))


def loop_tolerance(sensitivity: float, tol: float = 1e-5) -> float:
    """The tolerance of a loop case: ``tol``, or 4× the reference's own round-off sensitivity
    (:func:`perturbed`) where that is larger (chaotic loops: blur with A⁺ at σ_n = 0, ...)."""
    return max(tol, 4.0 * float(sensitivity))


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a − b|| / ||b|| (float64)."""
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def checksum(*tensors: torch.Tensor) -> torch.Tensor:
    """(k, 2) float64 sums and sums of squares of the inputs of a case: stored in the fixtures so
    that a test notices when these helpers no longer build the inputs the reference was run on."""
    return torch.stack([torch.stack([t.double().sum(), (t.double() ** 2).sum()]) for t in tensors])


def family_cases() -> list[tuple[str, str, str]]:
    """(network, family, level) of the one-step cases."""
    return [(net, fam, lev) for net in SHAPES for fam in FAMILIES for lev in LEVELS]


def fixture_info(commit: str, repo: str) -> dict[str, str]:
    """Provenance entry stored in every fixture."""
    return {"repository": repo, "commit": commit, "numpy": np.__version__, "torch": str(torch.__version__)}


def _nets() -> dict[str, torch.nn.Module]:
    return {name: unet(name) for name in SHAPES}


#: The module-scoped ``nets`` fixture of the test files ({"tiny": ..., "mnist": ...}); a test module
#: takes it with ``nets = RP.nets``.
nets = pytest.fixture(scope="module", name="nets")(_nets)


@dataclass
class StepCase:
    """The identical inputs of one single-step case: shape (N, C, H, W), the step-grid sampler,
    the ground truth x0, the physics, y, the respaced index t, x_t and the sampler noise z."""
    shape: tuple
    diff: Any
    x0: torch.Tensor
    phys: Physics
    y: torch.Tensor
    t: int
    x_t: torch.Tensor
    z: torch.Tensor


def step_case(net_name: str, family: str, level: str, sigma: float, sigma_y: float = 0.05,
              eta: float = 1.0) -> StepCase:
    """The single-step case (net, operator family, noise level) that every make_ref_* script
    builds: x0 = :func:`ground_truth`, the physics with σ_n = ``sigma``, y with σ_y = ``sigma_y``,
    x_t = √ᾱ_t x0 + √(1−ᾱ_t) z at t = :data:`LEVELS`[level] of :data:`STEP_GRID`, z = :func:`step_noise`."""
    shape = SHAPES[net_name]
    diff = diffusion(STEP_GRID, eta=eta)
    x0 = ground_truth(shape)
    phys = physics(family, shape, sigma=sigma)
    y = measurement(phys, x0, sigma_y=sigma_y)
    t = LEVELS[level]
    return StepCase(shape, diff, x0, phys, y, t, x_t_at(x0, float(diff.alphas_cumprod[t])), step_noise(shape))
