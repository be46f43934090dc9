"""The prior interface (priors/): the guided-diffusion prior is the bare UNet to the bit; a tiny
random diffusers ``UNet2DModel`` saved with ``save_pretrained`` (ε- and v-prediction) run through
``main.py`` equals calling diffusers directly (the ε at the same x_t, t; one whole DDIM step
against ``DDIMScheduler.step``; a whole CoDPS+ / DDRM run); class-conditional, latent and missing
checkpoints are refused with one line; ``model.kind: gmm`` through ``main.py`` equals
``benchmarks.gmm.sample_method`` on the same problem; every method runs on every prior kind."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import priors
from cli_helpers import REPO, make_images, run_inproc
from operators import Physics, get_noise, get_operator
from sampling import sample
from solvers import get_solver, list_methods
from util.config import ConfigError
from util.seeding import STREAM_SAMPLER, randn, torch_generators

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CELEBAHQ = "configs/CELEBAHQ/DDIM"
GMM = "configs/GMM/DDIM"


class Net(torch.nn.Module):
    """A tiny fixed ε-network (a non-trivial Jacobian) for the guided-diffusion kind."""

    def __init__(self, channels: int = 1):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w1 = torch.nn.Parameter(torch.randn(4, channels, 3, 3, generator=g) * 0.3)
        self.w2 = torch.nn.Parameter(torch.randn(channels, 4, 3, 3, generator=g) * 0.3)

    def forward(self, x, t):
        h = torch.tanh(torch.nn.functional.conv2d(x, self.w1, padding=1) + t.float().reshape(-1, 1, 1, 1) / 1000)
        return 0.5 * x + torch.nn.functional.conv2d(h, self.w2, padding=1)


# ---------------------------------------------------------------------------------------------
# guided-diffusion: the bare network, to the bit
# ---------------------------------------------------------------------------------------------

def test_guided_diffusion_prior_is_the_bare_network_to_the_bit():
    from guided_diffusion.gaussian_diffusion import create_sampler
    net = Net()
    prior = priors.guided.GuidedDiffusionPrior(net, (1, 8, 8))
    diffusion = create_sampler(sampler="ddim", timestep_respacing="ddim5", model_var_type="fixedlarge", eta=0.5)
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    ts = torch.tensor([3, 700])
    assert torch.equal(prior(x, ts), net(x, ts))
    t = torch.tensor([4, 4])
    out = prior.denoise(diffusion, x, t)
    ref = diffusion.p_mean_variance(net, x, t)
    assert torch.equal(out["x0_hat"], ref["pred_xstart"]) and torch.equal(out["eps"], ref["eps"])
    physics = Physics(get_operator("dense", rows=20, seed=3), get_noise("gaussian", sigma=0.1))
    physics.draw(None, (2, 1, 8, 8))
    y = physics.A(torch.zeros(2, 1, 8, 8)) + 0.3
    runs = []
    for model in (net, prior):
        gens = torch_generators(5, range(2), STREAM_SAMPLER)
        runs.append(sample(model, diffusion, randn((1, 8, 8), gens), y, get_solver("DPS", scale=0.4), physics,
                           gens, progress=False).x0)
    assert torch.equal(runs[0], runs[1]) and runs[0].abs().sum() > 0


def test_unknown_kind_is_one_line():
    with pytest.raises(ConfigError, match="unknown kind 'nope'; valid kinds: diffusers, gmm, guided_diffusion"):
        priors.prior_class({"kind": "nope"})


# ---------------------------------------------------------------------------------------------
# diffusers
# ---------------------------------------------------------------------------------------------

def save_tiny_diffusers(folder: Path, prediction_type: str = "epsilon", size: int = 16, **unet_kwargs) -> Path:
    """A random tiny ``UNet2DModel`` (seeded) and a ``DDPMScheduler`` config, saved with
    ``save_pretrained`` into ``folder`` in the published layout (side by side)."""
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=size, in_channels=3, out_channels=3, layers_per_block=1,
                                 block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4, **unet_kwargs)
    unet.save_pretrained(str(folder))
    diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear",
                            prediction_type=prediction_type).save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module", params=["epsilon", "v_prediction", "sample"])
def tiny_folder(request, tmp_path_factory):
    return save_tiny_diffusers(tmp_path_factory.mktemp(f"diffusers_{request.param}"), request.param), request.param


def direct_eps(unet, scheduler, x, t, prediction_type):
    """ε of the model as diffusers' DDIMScheduler.step converts its output (pred_epsilon)."""
    out = unet(x, t).sample
    if prediction_type == "epsilon":
        return out
    ab = scheduler.alphas_cumprod[t].reshape(-1, 1, 1, 1)
    if prediction_type == "sample":
        return (x - ab ** 0.5 * out) / (1 - ab) ** 0.5
    return ab ** 0.5 * out + (1 - ab) ** 0.5 * x


def test_diffusers_eps_equals_diffusers(tiny_folder):
    diffusers = pytest.importorskip("diffusers")
    folder, pred = tiny_folder
    prior = priors.build_prior({"kind": "diffusers", "model_path": str(folder)}, "cpu")
    assert prior.shape == (3, 16, 16) and prior.prediction_type == pred
    unet = diffusers.UNet2DModel.from_pretrained(str(folder), local_files_only=True, low_cpu_mem_usage=False).eval()
    scheduler = diffusers.DDIMScheduler.from_pretrained(str(folder), local_files_only=True)
    np.testing.assert_allclose(np.cumprod(1 - prior.schedule_betas({"model_path": str(folder)})),
                               scheduler.alphas_cumprod.double().numpy(), rtol=1e-6)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([17, 901])
    with torch.no_grad():
        got, want = prior(x, t), direct_eps(unet, scheduler, x, t, pred)
    # x_0-prediction divides by √(1 − ᾱ) (0.07 at t = 17): float32 rounding of ᾱ shows at 1e-5 relative
    torch.testing.assert_close(got, want, rtol=1e-4 if pred == "sample" else 1e-5, atol=1e-5)
    if pred == "epsilon":
        assert torch.equal(got, want)


def test_diffusers_ddim_step_equals_ddim_scheduler(tiny_folder):
    """One whole DDIM step (η = 0, no clipping) from 900 to 800 and the last, from 0 to x_0, as
    ``DDIMScheduler.step`` (``leading`` spacing, ᾱ_prev = 1 at the end) gives them."""
    diffusers = pytest.importorskip("diffusers")
    folder, pred = tiny_folder
    model_cfg = {"kind": "diffusers", "model_path": str(folder)}
    prior = priors.build_prior(model_cfg, "cpu")
    diffusion = priors.build_sampler(model_cfg, dict(sampler="ddim", model_var_type="fixedsmall", clip_denoised=False,
                                                     timestep_respacing="ddim10", eta=0.0))
    scheduler = diffusers.DDIMScheduler.from_pretrained(str(folder), local_files_only=True, clip_sample=False,
                                                        set_alpha_to_one=True, timestep_spacing="leading")
    scheduler.set_timesteps(10)
    assert list(scheduler.timesteps.numpy()) == list(diffusion.timestep_map)[::-1]
    unet = diffusers.UNet2DModel.from_pretrained(str(folder), local_files_only=True, low_cpu_mem_usage=False).eval()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    for i, timestep in ((9, 900), (0, 0)):
        tb = torch.full((2,), i, dtype=torch.long)
        with torch.no_grad():
            out = prior.denoise(diffusion, x, tb)
            ours = diffusion.proposal(out, x, tb, torch.zeros_like(x))
            ref = scheduler.step(unet(x, torch.full((2,), timestep)).sample, timestep, x, eta=0.0).prev_sample
        # x_0-prediction goes through ε̂ and back, x0_hat = (x_t − √(1 − ᾱ) ε̂) / √ᾱ: a float32
        # cancellation amplified by 1/√ᾱ (≈ 61 at t = 900), so 1e-3 there
        torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-3 if pred == "sample" else 1e-5)


def capture_sample(monkeypatch) -> list:
    """Patch restore.sample (the one caller of sampling.sample in a main.py run) to record
    (args, kwargs, result) of every call."""
    import restore as runner
    calls = []
    real = runner.sample

    def spy(*args, **kwargs):
        result = real(*args, **kwargs)
        calls.append((args, kwargs, result))
        return result

    monkeypatch.setattr(runner, "sample", spy)
    return calls


@pytest.mark.parametrize("task", ["motion_deblur", "ddrm_super_resolution"])
def test_diffusers_through_main_equals_diffusers_directly(task, tiny_folder, tmp_path, monkeypatch, capsys):
    """main.py with ``model.kind: diffusers`` (the shipped CELEBAHQ configs, fitted to the tiny
    16-pixel model) gives the samples of the loop run on diffusers' own UNet call and a sampler
    built by hand on diffusers' own betas, from the same x_T, y and noise."""
    diffusers = pytest.importorskip("diffusers")
    folder, pred = tiny_folder
    data = tmp_path / "data"
    make_images(data, n=2, size=16)
    calls = capture_sample(monkeypatch)
    fit = ["task.measurement.operator.kernel_size=5"] if "deblur" in task else \
        ["task.measurement.operator.in_shape=[1, 3, 16, 16]"]
    args = ["--model_config", f"{CELEBAHQ}/model_config.yaml", "--diffusion_config", f"{CELEBAHQ}/diffusion_config.yaml",
            "--task_config", f"{CELEBAHQ}/{task}_config.yaml", "--save_dir", str(tmp_path / "out"), "--batch_size", "2",
            f"model.model_path={folder}", "model.image_size=16", f"task.data.root={data}",
            "diffusion.timestep_respacing=ddim5", *fit]
    proc = run_inproc(args, tmp_path, monkeypatch, capsys)
    assert proc.returncode == 0, proc.stderr
    assert len(calls) == 1
    (model, sampler, x_T, y, solver, physics, _), kwargs, result = calls[0]
    assert isinstance(model, priors.diffusers_unet.DiffusersPrior) and model.prediction_type == pred
    gens = torch_generators(22, [0, 1], STREAM_SAMPLER)
    assert torch.equal(x_T, randn((3, 16, 16), gens))
    # by hand: diffusers' UNet and scheduler betas, guided-diffusion's DDIM sampler class
    from guided_diffusion.gaussian_diffusion import DDIMSampler
    unet = diffusers.UNet2DModel.from_pretrained(str(folder), local_files_only=True, low_cpu_mem_usage=False).eval()
    scheduler = diffusers.DDPMScheduler.from_pretrained(str(folder), local_files_only=True)
    by_hand = DDIMSampler(scheduler.betas.double().numpy(), model_var_type="fixedsmall", timestep_respacing="ddim5",
                          clip_denoised=True, eta=1.0)
    assert list(by_hand.timestep_map) == list(sampler.timestep_map) == [0, 200, 400, 600, 800]
    gens = torch_generators(22, [0, 1], STREAM_SAMPLER)
    ref = sample(lambda x, t: direct_eps(unet, scheduler, x, t, pred), by_hand, randn((3, 16, 16), gens), y,
                 get_solver(solver.names[0], **{k: getattr(solver, k) for k in type(solver).params}), physics,
                 gens, progress=False)
    torch.testing.assert_close(result.x0, ref.x0, rtol=1e-5, atol=1e-5)
    assert result.x0.abs().sum() > 0
    summary = json.loads((tmp_path / "out" / "CELEBAHQ" / "DDIM" / task / "summary.json").read_text())
    assert summary["resolved"]["model"]["prediction_type"] == pred


def one_line_error(proc) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    return lines[0]


def diffusers_args(folder, tmp_path) -> list[str]:
    return ["--model_config", f"{CELEBAHQ}/model_config.yaml", "--diffusion_config", f"{CELEBAHQ}/diffusion_config.yaml",
            "--task_config", f"{CELEBAHQ}/motion_deblur_config.yaml", "--save_dir", str(tmp_path / "out"),
            f"model.model_path={folder}", "model.image_size=16", f"task.data.root={tmp_path}"]


def test_diffusers_refusals_are_one_line(tmp_path, monkeypatch, capsys):
    pytest.importorskip("diffusers")
    # a missing folder names what to download and where
    missing = tmp_path / "ddpm-cifar10-32"
    line = one_line_error(run_inproc(diffusers_args(missing, tmp_path), tmp_path, monkeypatch, capsys))
    assert "google/ddpm-cifar10-32" in line and f"--local-dir {missing}" in line and "not a folder" in line
    # class-conditional
    cond = save_tiny_diffusers(tmp_path / "cond", num_class_embeds=10)
    line = one_line_error(run_inproc(diffusers_args(cond, tmp_path), tmp_path, monkeypatch, capsys))
    assert "class-conditional" in line and "num_class_embeds 10" in line
    # UNet2DConditionModel (text-conditional): refused from its config alone
    text = tmp_path / "text"
    text.mkdir()
    (text / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel", "sample_size": 64}))
    (text / "scheduler_config.json").write_text(json.dumps({"_class_name": "DDPMScheduler"}))
    line = one_line_error(run_inproc(diffusers_args(text, tmp_path), tmp_path, monkeypatch, capsys))
    assert "UNet2DConditionModel" in line
    # latent: a pipeline folder with a VAE
    latent = tmp_path / "latent"
    save_tiny_diffusers(latent / "unet")
    (latent / "model_index.json").write_text(json.dumps({"_class_name": "LDMPipeline", "unet": ["diffusers", "UNet2DModel"],
                                                         "vqvae": ["diffusers", "VQModel"]}))
    line = one_line_error(run_inproc(diffusers_args(latent, tmp_path), tmp_path, monkeypatch, capsys))
    assert "latent diffusion checkpoint" in line and "vqvae" in line
    # learned variances and a diffusion config of another schedule length
    folder = save_tiny_diffusers(tmp_path / "plain")
    line = one_line_error(run_inproc(diffusers_args(folder, tmp_path) + ["diffusion.model_var_type=learned_range"],
                                     tmp_path, monkeypatch, capsys))
    assert "learned_range" in line and "fixedsmall" in line
    line = one_line_error(run_inproc(diffusers_args(folder, tmp_path) + ["diffusion.steps=500"], tmp_path,
                                     monkeypatch, capsys))
    assert "1000 timesteps" in line
    line = one_line_error(run_inproc(diffusers_args(folder, tmp_path) + ["model.num_channels=64"], tmp_path,
                                     monkeypatch, capsys))
    assert "unknown key(s) ['num_channels'] for kind diffusers" in line and "model_path" in line


def test_diffusers_pipeline_layout_and_absent_package(tmp_path, monkeypatch):
    pytest.importorskip("diffusers")
    folder = tmp_path / "pipe"
    save_tiny_diffusers(folder / "unet")
    (folder / "unet" / "scheduler_config.json").rename(tmp_path / "s.json")
    (folder / "scheduler").mkdir()
    (tmp_path / "s.json").rename(folder / "scheduler" / "scheduler_config.json")
    cfg = {"kind": "diffusers", "model_path": str(folder)}
    assert priors.image_shape(cfg) == (3, 16, 16)
    assert priors.build_prior(cfg, "cpu").unet.config.sample_size == 16
    monkeypatch.setitem(sys.modules, "diffusers", None)     # as if not installed
    with pytest.raises(ConfigError, match="needs the optional package diffusers; install it with pip install -r "
                                          "requirements-diffusers.txt"):
        priors.build_prior(cfg, "cpu")


# ---------------------------------------------------------------------------------------------
# the Gaussian mixture from the command line
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("task,method", [("dense", "CoDPS+ (auto)"), ("ddrm_dense", "DDRM")])
def test_gmm_through_main_equals_benchmarks_gmm(task, method, tmp_path, monkeypatch, capsys):
    """The shipped configs/GMM problem (d = 16, m = 4, σ_y = 0.1, seed 0) restored by main.py in
    measurement mode gives benchmarks.gmm.sample_method's samples of the same method, x_T and
    noise (images i of seed s = the benchmark's samples i of seed s), at DDIM 20, to the bit."""
    from benchmarks import gmm as bench
    from guided_diffusion.gaussian_diffusion import create_sampler
    from guided_diffusion.gmm import GMMEpsilon
    problem = bench.make_problem(16, 4, 0.1, seed=0)
    folder = tmp_path / "problem"
    (folder / "measurement").mkdir(parents=True)
    for name in ("a", "b"):      # the same y twice: images 0 and 1
        np.save(folder / "measurement" / f"{name}.npy", problem.y.float().numpy().reshape(-1, 1, 1))
    calls = capture_sample(monkeypatch)
    args = ["--model_config", f"{GMM}/model_config.yaml", "--diffusion_config", f"{GMM}/diffusion_config.yaml",
            "--task_config", f"{GMM}/{task}_config.yaml", "--save_dir", str(tmp_path / "out"),
            "--measurement_dir", str(folder), "--batch_size", "2", "--seed", "7", "diffusion.timestep_respacing=ddim20"]
    proc = run_inproc(args, tmp_path, monkeypatch, capsys)
    assert proc.returncode == 0, proc.stderr
    x_main = calls[0][2].x0.reshape(2, 16).double()
    spec = next(m for m in bench.METHODS if m.label == method)
    diffusion = create_sampler(**bench.DIFFUSION, sampler="ddim", timestep_respacing="ddim20", eta=1.0)
    x_bench, diverged = bench.sample_method(problem, diffusion, GMMEpsilon.from_schedule(problem.prior), spec, 2, 7)
    assert diverged == [None, None]
    assert torch.equal(x_main, x_bench)                      # to the bit
    assert not torch.allclose(x_main[0], x_main[1])          # different noise per image
    fit = (x_main @ torch.from_numpy(problem.A).T - problem.y).norm(dim=1) / (0.1 * 2)   # ‖Ax − y‖ / (σ_y √m)
    assert fit.max() < 3 and problem.y.norm() / (0.1 * 2) > 50    # the samples fit y to within the noise


def test_gmm_config_errors_are_one_line():
    with pytest.raises(ConfigError, match=r"shape must be \[C, H, W\] .* d = 16"):
        priors.image_shape({"kind": "gmm", "dim": 16, "shape": [1, 4, 5]})
    with pytest.raises(ConfigError, match="noise_schedule 'cosine' is set"):
        priors.build_sampler({"kind": "gmm", "dim": 16}, {"sampler": "ddim", "noise_schedule": "cosine",
                                                          "model_var_type": "fixedsmall"})
    assert priors.image_shape({"kind": "gmm", "dim": 8}) == (8, 1, 1)
    prior = priors.build_prior({"kind": "gmm", "mixture": "explicit", "weights": [1, 1], "means": [[0, 0], [4, 4]],
                                "covariances": [1, 1]}, "cpu")
    assert prior.shape == (2, 1, 1)


# ---------------------------------------------------------------------------------------------
# every method on every prior kind
# ---------------------------------------------------------------------------------------------

def tiny_priors(tmp_path_factory) -> dict:
    out = {"guided_diffusion": (priors.guided.GuidedDiffusionPrior(Net(3), (3, 8, 8)),
                                dict(sampler="ddim", model_var_type="fixedlarge", timestep_respacing="ddim3"), {}),
           "gmm": (None, dict(sampler="ddim", model_var_type="fixedsmall", clip_denoised=False,
                              timestep_respacing="ddim3"), {"kind": "gmm", "dim": 192, "shape": [3, 8, 8]})}
    try:
        import diffusers  # noqa: F401
        folder = save_tiny_diffusers(tmp_path_factory.mktemp("diffusers_all"), size=8)
        out["diffusers"] = (None, dict(sampler="ddim", model_var_type="fixedsmall", timestep_respacing="ddim3"),
                            {"kind": "diffusers", "model_path": str(folder)})
    except ImportError:
        pass
    return out


@pytest.fixture(scope="module")
def all_priors(tmp_path_factory):
    return tiny_priors(tmp_path_factory)


@pytest.mark.parametrize("sampler_name", ["ddim", "ddpm"])
@pytest.mark.parametrize("kind", priors.list_priors())
@pytest.mark.parametrize("method", [cls.names[0] for cls in list_methods()])
def test_every_method_runs_on_every_prior_kind(kind, method, sampler_name, all_priors):
    """Each registered method (defaults) × each registered prior kind × DDIM / DDPM, 3 steps on
    8 x 8 RGB (dense A, 40 rows): finite samples in the prior's shape, at least one NFE a step."""
    if kind not in all_priors:
        pytest.skip(f"kind {kind} needs its optional dependency")
    prior, diffusion_cfg, model_cfg = all_priors[kind]
    if prior is None:
        prior = priors.build_prior(model_cfg, "cpu")
    diffusion_cfg = {**diffusion_cfg, "sampler": sampler_name,
                     "timestep_respacing": "ddim3" if sampler_name == "ddim" else "3"}
    sampler = priors.build_sampler(model_cfg or {}, diffusion_cfg)
    assert sampler.num_timesteps == 3
    physics = Physics(get_operator("dense", rows=40, seed=1), get_noise("gaussian", sigma=0.1))
    physics.draw(None, (2, 3, 8, 8))
    y = physics.A(torch.full((2, 3, 8, 8), 0.2))
    gens = torch_generators(0, range(2), STREAM_SAMPLER)
    result = sample(prior, sampler, prior.draw_x_T(gens), y, get_solver(method), physics, gens, progress=False)
    assert result.x0.shape == (2, 3, 8, 8) and result.diverged_at == [None, None]
    assert torch.isfinite(result.x0).all() and result.nfe >= 3
