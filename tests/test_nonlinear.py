"""Tests of the nonlinear physics (issue 23): the phase-retrieval and HDR operators against their
formulas (numpy FFT, numpy clip), their exact JVP / VJP against finite differences and autograd,
the capability split (no "SVD" of a nonlinear map; methods that need a linear A refuse with one
line), and linearised CoDPS / CoDPS+ against a dense solve (nonlinear A) and against today's
CoDPS / CoDPS+ on every linear operator (to 1e-6)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import operators
from operators import Operator, Physics, LinearPhysics, get_noise, get_operator, list_operators, make_physics
from sampling import make_step
from solvers import get_solver, list_methods
from util.seeding import numpy_rngs, torch_generators

NONLINEAR = list_operators(linear=False)
SIGMA = 0.05
#: small settings of the linear operators for 8 x 8 images
LINEAR_KWARGS = {
    "gaussian_blur": {"kernel_size": 5, "intensity": 1.0},
    "motion_blur": {"kernel_size": 5, "intensity": 0.5},
    "super_resolution": {"scale_factor": 2},
    "inpainting": {},
    "noise": {},
    "dense": {"rows": 40, "seed": 1},
}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def rand_x(shape=(2, 2, 8, 8), seed=0, dtype=torch.float64):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype) * 2 - 1


def test_both_operators_are_registered_nonlinear():
    assert {"phase_retrieval", "hdr"} <= set(NONLINEAR)
    for name in NONLINEAR:
        phys = make_physics(get_operator(name))
        assert type(phys) is Physics and not phys.is_linear
        assert not hasattr(phys, "A_T") and phys.spectral is None and not phys.has_exact_cov_solve


# ---- measure() against the formula -------------------------------------------------------------

@pytest.mark.parametrize("input_range", ["unit", "signed"])
def test_phase_retrieval_measure_is_the_formula(input_range):
    x = rand_x((2, 3, 12, 12))
    phys = Physics(get_operator("phase_retrieval", oversample=2.0, input_range=input_range),
                   get_noise("gaussian", sigma=SIGMA))
    gens = torch_generators(3, [0, 1], 1)
    y = phys.measure(x, None, gens)
    u = x.numpy() * 0.5 + 0.5 if input_range == "unit" else x.numpy()
    p = int(2.0 / 8 * 12)                                       # 3 zero rows / columns per side
    padded = np.pad(u, ((0, 0), (0, 0), (p, p), (p, p)))
    ref = np.abs(np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(padded, axes=(-2, -1)), norm="ortho"), axes=(-2, -1)))
    noise = get_noise("gaussian", sigma=SIGMA)(torch.zeros(y.shape, dtype=y.dtype), torch_generators(3, [0, 1], 1))
    assert y.shape == (2, 3, 18, 18)
    np.testing.assert_allclose(y.numpy(), ref + noise.numpy(), atol=1e-12)
    # 256-pixel images get the reference codes' 64-pixel padding
    assert phys.y_shape((1, 3, 256, 256)) == (1, 3, 384, 384)


def test_hdr_measure_is_the_formula():
    x = rand_x((2, 3, 8, 8))
    phys = Physics(get_operator("hdr", scale=2.0), get_noise("gaussian", sigma=SIGMA))
    y = phys.measure(x, None, torch_generators(4, [0, 1], 1))
    noise = get_noise("gaussian", sigma=SIGMA)(torch.zeros_like(x), torch_generators(4, [0, 1], 1))
    np.testing.assert_allclose(y.numpy(), np.clip(2.0 * x.numpy(), -1, 1) + noise.numpy(), atol=1e-15)


# ---- derivatives --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NONLINEAR)
def test_exact_vjp_jvp_match_autograd_and_finite_differences(name):
    op = get_operator(name)
    phys = Physics(op)
    x = rand_x(seed=1)
    u = rand_x(seed=2)
    y = op.forward(x)
    v = torch.randn(y.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    xx = x.clone().requires_grad_(True)
    (g_auto,) = torch.autograd.grad(op.forward(xx), xx, v)
    _, j_auto = torch.func.jvp(op.forward, (x,), (u,))
    np.testing.assert_allclose(op.vjp(x, v).numpy(), g_auto.numpy(), atol=1e-12)
    np.testing.assert_allclose(op.jvp(x, u).numpy(), j_auto.numpy(), atol=1e-12)
    # central finite differences (HDR: away from the kinks, which a 1e-6 step does not cross here)
    h = 1e-6
    fd = (op.forward(x + h * u) - op.forward(x - h * u)) / (2 * h)
    np.testing.assert_allclose(phys.A_jvp(x, u).numpy(), fd.numpy(), atol=1e-6)
    # adjointness of the two exact products, <J u, v> = <u, Jᵀ v>
    assert abs(float((phys.A_jvp(x, u) * v).sum() - (u * phys.A_vjp(x, v)).sum())) < 1e-10


class _ClipNoDerivatives(Operator):
    """clip(2x) with only a forward: the autograd route of Physics."""
    name = "clip_autograd"
    is_linear = False

    def forward(self, x):
        return torch.clamp(2.0 * x, -1.0, 1.0)


def test_autograd_route_matches_the_exact_products_inside_inference_mode():
    x, u = rand_x(seed=4), rand_x(seed=5)
    v = rand_x(seed=6)
    exact, auto = Physics(get_operator("hdr", scale=2.0)), Physics(_ClipNoDerivatives())
    with torch.inference_mode():                  # the loop runs these methods in inference mode
        np.testing.assert_allclose(auto.A_vjp(x, v).numpy(), exact.A_vjp(x, v).numpy(), atol=1e-15)
        np.testing.assert_allclose(auto.A_jvp(x, u).numpy(), exact.A_jvp(x, u).numpy(), atol=1e-15)


class _ClipWithMadeUpAdjoint(Operator):
    """The issue's contributor operator: clip(2x) with a made-up adjoint 2I, declared nonlinear."""
    name = "clip_fake_adjoint"
    is_linear = False

    def forward(self, x):
        return torch.clamp(2.0 * x, -1.0, 1.0)

    def adjoint(self, y):
        return 2.0 * y


def test_no_dense_svd_of_a_map_declared_nonlinear():
    phys = make_physics(_ClipWithMadeUpAdjoint())
    phys.measure(torch.zeros(1, 1, 4, 4))
    assert not phys.is_linear and phys.spectral is None
    from operators.spectral import dense_fallback
    assert dense_fallback(phys.operator, (1, 1, 4, 4)) is None
    with pytest.raises(ValueError, match="needs a linear operator"):
        get_solver("DDRM").check(phys)


def test_observed_mask_all_entries_for_nonlinear_and_a_at1_for_linear():
    pr = Physics(get_operator("phase_retrieval"))
    y = pr.measure(rand_x((1, 1, 8, 8)))
    assert bool(pr.observed(y).all())
    inp = Physics(get_operator("inpainting"), get_noise("gaussian", sigma=SIGMA))
    y2 = inp.measure(rand_x((1, 1, 8, 8)), numpy_rngs(0, [0], 0), torch_generators(0, [0], 1))
    mask = torch.from_numpy(inp.params(0)).bool()
    assert torch.equal(inp.observed(y2)[0, 0], mask)


def test_pinv_init_inverts_the_unclipped_pixels_and_a_real_fourier_magnitude():
    x = rand_x((1, 1, 8, 8), seed=7) * 0.4                      # |2x| < 1: nothing saturated
    hdr = Physics(get_operator("hdr"))
    np.testing.assert_allclose(hdr.pinv_init(hdr.A(x)).numpy(), x.numpy(), atol=1e-15)
    pr = Physics(get_operator("phase_retrieval"))
    assert pr.pinv_init(pr.A(x)).shape == x.shape


# ---- every method runs or refuses with one line ------------------------------------------------

RUN_ON_NONLINEAR = {"none", "DPS", "DAPS", "RED-diff", "PiGDM", "CoDPS", "CoDPS+", "TMPD", "TMPD-exact", "MMPS"}


@pytest.mark.parametrize("name", NONLINEAR)
def test_every_method_accepts_or_refuses_in_one_line(name):
    phys = Physics(get_operator(name), get_noise("gaussian", sigma=SIGMA))
    phys.measure(rand_x((2, 1, 8, 8)), None, torch_generators(0, [0, 1], 1))
    accepted = set()
    for cls in list_methods():
        method = get_solver(cls.names[0])
        try:
            method.check(phys)
        except ValueError as exc:
            msg = str(exc)
            assert "\n" not in msg and "nonlinear" in msg, (cls.names[0], msg)
            continue
        accepted.add(cls.names[0])
    # exactly these: a new method inheriting needs_linear = False without using A_vjp / linearize shows here
    assert accepted == RUN_ON_NONLINEAR, accepted ^ RUN_ON_NONLINEAR
    with pytest.raises(ValueError, match="langevin: true"):
        get_solver("DAPS", langevin=False).check(phys)


# ---- linearised CoDPS / CoDPS+ -----------------------------------------------------------------

def codps_inputs(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    xp = torch.randn(shape, generator=g, dtype=torch.float64) * 0.5
    x0 = (torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1) * 0.9
    a = torch.tensor([0.3, 0.8], dtype=torch.float64)[: shape[0]]
    return xp, x0, a


@pytest.mark.parametrize("name", NONLINEAR)
def test_linearised_codps_plus_matches_a_dense_solve(name):
    shape = (2, 1, 6, 6)
    phys = Physics(get_operator(name), get_noise("gaussian", sigma=SIGMA), cg_tol=1e-13, cg_max_iter=2000)
    xp, x0, a = codps_inputs(shape)
    y = phys.measure(rand_x(shape, seed=9), None, torch_generators(1, [0, 1], 1))
    lam = 1.0
    out = get_solver("CoDPS+", scale=0.7, inv_var=lam).step(make_step(xp, x0, xp, 5, a), y, phys)
    for n in range(2):
        J = torch.autograd.functional.jacobian(lambda z: phys.operator.forward(z.reshape(1, *shape[1:])).flatten(),
                                               x0[n].flatten())                       # (m, d)
        r2 = 1.0 / (a[n] / (1 - a[n]) + lam)
        C = SIGMA ** 2 * torch.eye(J.shape[0], dtype=torch.float64) + r2 * J @ J.T
        resid = (y[n:n + 1] - phys.A(x0[n:n + 1])).flatten()
        g = J.T @ torch.linalg.solve(C, resid)
        jac = a[n].sqrt() / (lam * (1 - a[n]) + a[n])
        ref = xp[n].flatten() + 0.7 * jac * g
        np.testing.assert_allclose(out[n].flatten().numpy(), ref.numpy(), atol=1e-8)


class _DeclaredNonlinear(Operator):
    """A linear registered operator presented as a nonlinear map (forward only): the linearised
    route (autograd JVP / VJP + CG) must give the linear route's answer."""
    is_linear = False

    def __init__(self, inner):
        super().__init__()
        self.inner, self.name = inner, "as_nonlinear_" + inner.name
        self.is_random = inner.is_random

    def forward(self, x):
        return self.inner.forward(x)

    def y_shape(self, x_shape):
        return self.inner.y_shape(x_shape)

    def draw(self, rngs, x_shape):
        self.inner.draw(rngs, x_shape)


@pytest.mark.parametrize("method", ["CoDPS+", "CoDPS"])
@pytest.mark.parametrize("name", list_operators(linear=True))
def test_linearised_equals_the_linear_method_on_every_linear_operator(name, method):
    shape = (2, 1, 16, 16)
    inner = get_operator(name, **LINEAR_KWARGS.get(name, {}))
    lin = LinearPhysics(inner, get_noise("gaussian", sigma=SIGMA))
    y = lin.measure(rand_x(shape, seed=11), numpy_rngs(2, [0, 1], 0), torch_generators(2, [0, 1], 1))
    wrapped = Physics(_DeclaredNonlinear(inner), get_noise("gaussian", sigma=SIGMA), cg_tol=1e-14, cg_max_iter=5000)
    wrapped._x_shape = shape
    assert not wrapped.is_linear
    xp, x0, a = codps_inputs(shape, seed=3)
    params = dict(scale=0.4, inv_var=1.0, t_div=0.0)
    with torch.inference_mode():
        ref = get_solver(method, **params).step(make_step(xp, x0, xp, 5, a), y, lin)
        out = get_solver(method, **params).step(make_step(xp, x0, xp, 5, a), y, wrapped)
    assert float((out - ref).abs().max()) < 1e-6, (name, method, float((out - ref).abs().max()))


@pytest.mark.parametrize("method,params", [("TMPD", {}), ("TMPD", {"exact_cov": True}), ("MMPS", {"iterations": 4})])
@pytest.mark.parametrize("name", ["gaussian_blur", "inpainting"])
def test_linearised_tmpd_and_mmps_equal_the_linear_ones(name, method, params):
    """TMPD / MMPS on a linear A presented as a nonlinear map (J_A by autograd JVP / VJP through
    physics.linearize) give the likelihood score of the linear route."""
    shape = (2, 1, 8, 8)
    inner = get_operator(name, **LINEAR_KWARGS.get(name, {}))
    lin = LinearPhysics(inner, get_noise("gaussian", sigma=SIGMA))
    y = lin.measure(rand_x(shape, seed=11), numpy_rngs(2, [0, 1], 0), torch_generators(2, [0, 1], 1)).double()
    wrapped = Physics(_DeclaredNonlinear(inner), get_noise("gaussian", sigma=SIGMA))
    wrapped._x_shape = shape
    solver = get_solver(method, **params)
    solver.check(wrapped)
    ab = torch.tensor([0.3, 0.8], dtype=torch.float64)
    outs = []
    for phys in (lin, wrapped):
        x_t = (torch.randn(shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)).requires_grad_(True)
        x0_hat = torch.tanh(0.8 * x_t) + 0.1 * x_t.roll(1, dims=-1)      # a smooth, non-symmetric denoiser
        outs.append(solver.guidance(x_t, x0_hat, y, ab, phys)[0])
    assert float((outs[1] - outs[0]).abs().max()) < 1e-8 * float(outs[0].abs().max())


def test_linearize_of_a_linear_physics_is_itself():
    lin = Physics(get_operator("noise"))
    assert lin.linearize(torch.zeros(1, 1, 2, 2)) is lin


# ---- main.py: a method that needs a linear A refuses before anything is written ----------------

def test_main_refuses_a_linear_only_method_on_phase_retrieval_in_one_line(tmp_path, monkeypatch, capsys):
    from cli_helpers import TINY_DDIM, TINY_MODEL, make_images, run_inproc
    make_images(tmp_path / "data", n=1)
    save = tmp_path / "out"
    args = ["--model_config", TINY_MODEL, "--diffusion_config", TINY_DDIM,
            "--task_config", "configs/FFHQ/DDIM/phase_retrieval_config.yaml", "--save_dir", str(save),
            f"task.data.root={tmp_path / 'data'}", "task.conditioning.method=DDRM", "task.conditioning.params={}"]
    proc = run_inproc(args, tmp_path, monkeypatch, capsys)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    assert "needs a linear operator" in lines[0] and "'phase_retrieval' is nonlinear" in lines[0]
    assert not save.exists() or not any(save.rglob("*.png")) and not any(save.rglob("summary.json"))


@pytest.mark.parametrize("config", ["phase_retrieval", "daps_hdr"])
def test_main_runs_a_nonlinear_task_and_restores_its_own_output(config, tmp_path, monkeypatch, capsys):
    """A run on phase retrieval (CoDPS+ linearised) / HDR (DAPS): measurement .npy of y's own shape,
    an image-sized picture of y, finite residuals; fed back with --measurement_dir it gives the same
    reconstructions; an image file as a phase-retrieval measurement is refused in one line."""
    import json
    import shutil
    from PIL import Image
    from cli_helpers import TINY_DDIM, TINY_MODEL, make_images, read_rows, run_inproc
    make_images(tmp_path / "data", n=2)
    task_cfg = f"configs/FFHQ/DDIM/{config}_config.yaml"
    base = ["--model_config", TINY_MODEL, "--diffusion_config", TINY_DDIM, "--task_config", task_cfg,
            "--save_dir", str(tmp_path / "out"), "--batch_size", "2"]
    extra = ["task.conditioning.params.ode_steps=1", "task.conditioning.params.langevin_steps=5"] \
        if config.startswith("daps") else []
    proc = run_inproc(base + [f"task.data.root={tmp_path / 'data'}"] + extra, tmp_path, monkeypatch, capsys)
    assert proc.returncode == 0, proc.stderr
    first = tmp_path / "out" / "FFHQ" / "DDIM" / config
    y = np.load(first / "measurement" / "00000.npy")
    assert y.shape == ((3, 48, 48) if config == "phase_retrieval" else (3, 32, 32))
    assert Image.open(first / "input" / "00000.png").size == (32, 32) and (first / "grid.png").is_file()
    rows = read_rows(first / "metrics.csv")
    assert all(np.isfinite(float(r["residual"])) for r in rows)
    assert json.loads((first / "summary.json").read_text())["status"] != "running"
    again = run_inproc(base + [f"task.data.root={tmp_path / 'nowhere'}", "--measurement_dir", str(first)] + extra,
                       tmp_path, monkeypatch, capsys)
    assert again.returncode == 0, again.stderr
    second = tmp_path / "out" / "FFHQ" / "DDIM" / f"{config}_on_{config}"
    for name in ("00000", "00001"):
        np.testing.assert_array_equal(np.asarray(Image.open(second / "recon" / f"{name}.png")),
                                      np.asarray(Image.open(first / "recon" / f"{name}.png")))
    if config == "phase_retrieval":
        bad = tmp_path / "bad"
        shutil.copytree(first / "measurement", bad / "measurement")
        (bad / "measurement" / "00000.npy").unlink()
        shutil.copy(first / "input" / "00000.png", bad / "measurement" / "00000.png")
        refused = run_inproc(base + ["--measurement_dir", str(bad)], tmp_path, monkeypatch, capsys)
        lines = [ln for ln in refused.stderr.splitlines() if ln.strip()]
        assert refused.returncode == 2 and len(lines) == 1 and "are not images" in lines[0], refused.stderr
