"""The method framework: parity of the ported methods with the pre-framework loop (a frozen
fixture), the sampling loop's contract (Step fields, NFE, extra network calls, grad mode), and a
toy method registered in this file and run end to end (a new method is one file)."""
import math

import pytest
import torch

from guided_diffusion.gaussian_diffusion import create_sampler
from operators import LinearOperator, Physics, get_noise, get_operator
from sampling import sample
from solvers import Param, Solver, get_solver, list_solvers, register_solver
from solvers.base import _REGISTRY
from util.seeding import STREAM_NOISE, STREAM_OPERATOR, STREAM_SAMPLER, numpy_rngs, randn, torch_generators

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FIXTURE = "tests/fixtures/parity_v1.pt"
SHAPE = (2, 1, 8, 8)
# The cases of tests/fixtures/make_parity.py (which ran the old loop at commit 23ac6ca).
OPERATORS = {
    "gaussian_blur": dict(kernel_size=5, intensity=1.0),
    "motion_blur": dict(kernel_size=5, intensity=0.5),
    "super_resolution": dict(scale_factor=2, degradation="bicubic"),
    "inpainting": dict(mask_type="random", mask_prob_range=(0.5, 0.6)),
    "noise": {},
    "dense": dict(rows=20, seed=3),
}
METHODS = {
    "codps": ("CoDPS", dict(scale=0.3, t_div=2, div_ratio=3, inv_var=0.5)),
    "codps_diag": ("CoDPS", dict(scale=0.3, inv_var=0.5, use_A_AT=False)),
    "codps_auto": ("CoDPS", dict(scale="auto", inv_var=1.0)),
    "codps+": ("CoDPS+", dict(scale=0.2, t_div=2, div_ratio=4, inv_var=1.0)),
    "codps+_diag": ("CoDPS+", dict(scale=0.2, use_A_AT=False)),
    "codps+_auto": ("CoDPS+", dict(scale="auto", inv_var=0.0)),
    "dps": ("DPS", dict(scale=0.4)),
    "pigdm": ("PiGDM", dict(scale=0.7)),
    "none": ("none", {}),
}
SAMPLERS = {"ddpm": dict(sampler="ddpm", timestep_respacing="4", model_var_type="fixedlarge"),
            "ddim": dict(sampler="ddim", timestep_respacing="ddim4", model_var_type="fixedlarge", eta=0.7)}


class Net(torch.nn.Module):
    """The tiny fixed ε-network of the fixture (a non-trivial Jacobian)."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w1 = torch.nn.Parameter(torch.randn(4, 1, 3, 3, generator=g) * 0.3)
        self.w2 = torch.nn.Parameter(torch.randn(1, 4, 3, 3, generator=g) * 0.3)
        self.calls = 0

    def forward(self, x, t):
        self.calls += 1
        h = torch.tanh(torch.nn.functional.conv2d(x, self.w1, padding=1) + t.float().reshape(-1, 1, 1, 1) / 1000)
        return 0.5 * x + torch.nn.functional.conv2d(h, self.w2, padding=1)


def make_physics(op_name, fixture=None):
    """The fixture's operator; a random operator whose generator has changed since the fixture
    was made (motion blur: the paper's kernel distribution, issue 10) gets the old draws back
    from the fixture's ``operator_state|<name>`` entry."""
    phys = Physics(get_operator(op_name, **OPERATORS[op_name]), get_noise("gaussian", sigma=0.05))
    phys.draw(numpy_rngs(5, [0, 1], STREAM_OPERATOR), SHAPE)
    if fixture is not None and f"operator_state|{op_name}" in fixture:
        phys.load_state_dict(fixture[f"operator_state|{op_name}"])
    return phys


@pytest.fixture(scope="module")
def fixture():
    return torch.load(FIXTURE, weights_only=True)


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("op_name", OPERATORS)
@pytest.mark.parametrize("key", METHODS)
def test_parity_with_the_old_loop(fixture, key, op_name, sampler):
    """Every shipped method, operator and sampler: the same x0 and per-step residuals (to 1e-6)
    as the old ``GaussianDiffusion.sample`` + ``solver(x_t, x_prev, x0_hat, y, t, alpha_bar)``,
    given the old measurement y."""
    ref = fixture[f"{key}|{op_name}|{sampler}"]
    name, params = METHODS[key]
    phys = make_physics(op_name, fixture)
    gens = torch_generators(9, [0, 1], STREAM_SAMPLER)
    res = []
    out = sample(Net(), create_sampler(**SAMPLERS[sampler]), randn(SHAPE[1:], gens), ref["y"],
                 get_solver(name, **params), phys, gens, progress=False,
                 callback=lambda i, t, x0, r: res.append(r.clone()))
    torch.testing.assert_close(out.x0, ref["x0"], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(torch.stack(res), ref["residual"], rtol=1e-5, atol=1e-6)
    assert out.nfe == 4 and out.diverged_at == [None, None]


# ---------------------------------------------------------------------------------------------
# Every registered method (registry-driven: a new method is tested with no edit here)

METHOD_NAMES = sorted({cls.names[0] for cls in _REGISTRY.values()})


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("name", METHOD_NAMES)
def test_every_method_runs_end_to_end_on_every_operator_it_accepts(name, sampler):
    """Default parameters, 4 steps on every registered operator the method's ``check`` accepts:
    finite samples of the right shape, no divergence, NFE >= 1 per step, the callback once per
    step, and the method accepts at least one operator."""
    from operators import list_operators
    method = get_solver(name)
    ran = 0
    for op_name in list_operators():
        phys = Physics(get_operator(op_name, **OPERATORS.get(op_name, {})), get_noise("gaussian", sigma=0.05))
        x = torch.rand(SHAPE, generator=torch.Generator().manual_seed(2)) * 2 - 1
        try:
            y = phys.measure(x, numpy_rngs(5, [0, 1], STREAM_OPERATOR), torch_generators(5, [0, 1], STREAM_NOISE))
            method.check(phys)
        except ValueError:
            continue
        gens = torch_generators(9, [0, 1], STREAM_SAMPLER)
        seen = []
        out = sample(Net(), create_sampler(**SAMPLERS[sampler]), randn(SHAPE[1:], gens), y, method, phys, gens,
                     progress=False, callback=lambda i, t, x0, r: seen.append((i, t, tuple(r.shape))))
        assert out.x0.shape == SHAPE and torch.isfinite(out.x0).all(), (name, op_name)
        assert out.diverged_at == [None, None] and out.nfe >= 4
        assert seen == [(i, 3 - i, (2,)) for i in range(4)]
        ran += 1
    assert ran > 0, f"{name} accepted no registered operator"


# ---------------------------------------------------------------------------------------------
# The loop's contract: Step fields, grad mode, extra network calls


class Recorder(Solver):
    """Returns the proposal and records the Step it was given (not registered)."""

    needs_grad = False
    params = {}

    def __init__(self, **params):
        super().__init__(**params)
        self.steps = []

    def check(self, physics):
        pass

    def step(self, step, y, physics):
        self.steps.append(dict(i=step.i, t=step.t, t_prev=step.t_prev, ab=step.alpha_bar.clone(),
                               ab_prev=step.alpha_bar_prev.clone(), x_t=step.x_t.clone(), eps=step.eps.clone(),
                               x0=step.x0_hat.clone(), prop=step.proposal.clone(), z=step.noise.clone(),
                               sigma=torch.as_tensor(step.sigma_t).clone(), w=step.weight.clone(),
                               grad=step.x_t.requires_grad, inference=torch.is_inference_mode_enabled(),
                               eta=step.eta))
        return step.proposal


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_step_record_fields(sampler):
    """t counts down, t_prev = t − 1, ᾱ_{t-1} = 1 at the end, x_t = √ᾱ x0_hat + √(1−ᾱ) ε̂, the
    proposal is the sampler's formula with the recorded noise z (zeros at t = 0) and σ_t, w_t is
    the sampler's weight, and a method without needs_grad runs in inference mode."""
    diff = create_sampler(**SAMPLERS[sampler])
    rec = Recorder()
    gens = torch_generators(1, [0, 1], STREAM_SAMPLER)
    sample(Net(), diff, randn(SHAPE[1:], gens), None, rec, None, gens, progress=False)
    assert [s["t"] for s in rec.steps] == [3, 2, 1, 0] and [s["t_prev"] for s in rec.steps] == [2, 1, 0, -1]
    assert [s["i"] for s in rec.steps] == [0, 1, 2, 3]
    for s in rec.steps:
        a = float(diff.alphas_cumprod[s["t"]])
        a_prev = float(diff.alphas_cumprod_prev[s["t"]])
        assert torch.allclose(s["ab"], torch.full((2,), a)) and torch.allclose(s["ab_prev"], torch.full((2,), a_prev))
        torch.testing.assert_close(s["x_t"], math.sqrt(a) * s["x0"] + math.sqrt(1 - a) * s["eps"], rtol=1e-5, atol=1e-5)
        if sampler == "ddim":
            sigma = 0.7 * math.sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev))
            want = math.sqrt(a_prev) * s["x0"] + math.sqrt(1 - a_prev - sigma ** 2) * s["eps"] + sigma * s["z"]
            torch.testing.assert_close(s["prop"], want, rtol=1e-5, atol=1e-5)
            assert s["eta"] == 0.7 and torch.allclose(s["sigma"].flatten(), torch.full((2,), sigma), rtol=1e-4)
        torch.testing.assert_close(s["w"], diff.score_weight(torch.full((2,), s["t"])))
        assert not s["grad"] and s["inference"]
    assert rec.steps[-1]["ab_prev"].eq(1).all() and rec.steps[-1]["z"].eq(0).all()
    assert not rec.steps[0]["z"].eq(0).all()


class GradProbe(Recorder):
    needs_grad = True


def test_needs_grad_gives_a_graph_to_x0_hat():
    probe = GradProbe()
    seen = []

    def step(step, y, physics):
        (g,) = torch.autograd.grad(step.x0_hat.sum(), step.x_t)
        seen.append((step.x_t.requires_grad, torch.is_inference_mode_enabled(), g.abs().sum().item()))
        return step.proposal

    probe.step = step
    diff = create_sampler(**SAMPLERS["ddim"])
    gens = torch_generators(1, [0, 1], STREAM_SAMPLER)
    sample(Net(), diff, randn(SHAPE[1:], gens), None, probe, None, gens, progress=False)
    assert all(r and not inf and g > 0 for r, inf, g in seen) and len(seen) == 4


# ---------------------------------------------------------------------------------------------
# A new method is one file: this one is defined and registered here and runs through sample


@register_solver("toy_ddnm_test")
class ToyRangeNullSpace(Solver):
    """DDNM-like toy (Wang et al. 2023, eq. 13 without noise handling): x0 = x0_hat + A⁺(y − A x0_hat),
    then the DDIM update from (x0, ε̂) with the sampler's σ_t and noise z; ``extra_calls`` more
    network evaluations per step through ``step.denoise`` (as DAPS would)."""

    needs_grad = False
    params = {"extra_calls": Param(0.0, "nonneg", "extra network calls per step (tests NFE counting)")}

    def check(self, physics):
        super().check(physics)
        if physics.spectral is None:
            raise ValueError("toy_ddnm_test needs a spectral view (A⁺)")

    def step(self, step, y, physics):
        eps = step.eps
        for _ in range(int(self.extra_calls)):
            _, eps = step.denoise(step.x_t)
        x0 = step.x0_hat + physics.A_pinv(y - physics.A(step.x0_hat)).to(step.x0_hat.dtype)
        a_prev, sigma = step.bc(step.alpha_bar_prev), step.sigma_t
        return a_prev.sqrt() * x0 + (1 - a_prev - sigma ** 2).clamp(min=0).sqrt() * eps + sigma * step.noise


@pytest.mark.parametrize("extra", [0, 2])
def test_toy_method_defined_in_this_file_runs_end_to_end(extra):
    """Registered by name from this file alone; noiseless inpainting: the final sample satisfies
    A x = y exactly (range-null-space), and NFE counts the extra calls."""
    assert "toy_ddnm_test" in list_solvers()
    phys = Physics(get_operator("inpainting", **OPERATORS["inpainting"]), get_noise("clean"))
    x = torch.rand(SHAPE, generator=torch.Generator().manual_seed(3)) * 2 - 1
    y = phys.measure(x, numpy_rngs(5, [0, 1], STREAM_OPERATOR))
    net = Net()
    gens = torch_generators(9, [0, 1], STREAM_SAMPLER)
    out = sample(net, create_sampler(**SAMPLERS["ddim"]), randn(SHAPE[1:], gens), y,
                 get_solver("toy_ddnm_test", extra_calls=extra), phys, gens, progress=False)
    assert out.nfe == 4 * (1 + extra) == net.calls
    torch.testing.assert_close(phys.A(out.x0), y, rtol=1e-5, atol=1e-5)

    class Pool(LinearOperator):          # only A and Aᵀ: no view of its own
        def forward(self, x):
            return torch.nn.functional.avg_pool2d(x, 2)

        def adjoint(self, y):
            return torch.nn.functional.interpolate(y, scale_factor=2, mode="nearest") / 4

    big = Physics(Pool(), get_noise("clean"))
    big.draw(None, (1, 3, 64, 64))               # 12288 values: too large for the dense fallback
    with pytest.raises(ValueError, match="spectral view"):
        sample(net, create_sampler(**SAMPLERS["ddim"]), torch.zeros(1, 3, 64, 64), torch.zeros(1, 3, 32, 32),
               get_solver("toy_ddnm_test"), big, torch_generators(0, [0], STREAM_SAMPLER), progress=False)


# ---------------------------------------------------------------------------------------------
# The measurement is zero at missing pixels now; the closed-form methods do not notice


@pytest.mark.parametrize("key", ["codps", "codps_diag", "codps+", "codps+_diag", "pigdm"])
def test_zeroed_inpainting_measurement_leaves_the_methods_unchanged(fixture, key):
    """The old y had noise at missing pixels; Physics.measure zeroes them. CoDPS, CoDPS+ and ΠGDM
    only see y through Aᵀ C⁻¹ (C diagonal, Aᵀ masks), so their samples are unchanged (DPS's
    step, ∇||y − A x0_hat||, is rescaled by the norm, and does change)."""
    ref = fixture[f"{key}|inpainting|ddim"]
    name, params = METHODS[key]
    phys = make_physics("inpainting")
    y0 = phys.operator.project_measurement(ref["y"])
    assert not torch.equal(y0, ref["y"])
    gens = torch_generators(9, [0, 1], STREAM_SAMPLER)
    out = sample(Net(), create_sampler(**SAMPLERS["ddim"]), randn(SHAPE[1:], gens), y0,
                 get_solver(name, **params), phys, gens, progress=False)
    torch.testing.assert_close(out.x0, ref["x0"], rtol=1e-6, atol=1e-6)
