"""TMPD and MMPS against azula 0.11.1's ``TMPDenoiser`` / ``MMPSDenoiser`` on identical inputs
(tests/fixtures/ref_tmpd_mmps.pt, written by tests/fixtures/make_ref_tmpd_mmps.py): a small random
ADM UNet and the embedded prior, Gaussian blur / ×4 super-resolution / random inpainting, t = 900,
500, 50. The posterior-mean correction (1−ᾱ)/√ᾱ · g of ours equals azula's E[x_0 | x_t, y] − x0_hat
to 1e-5 relative (float64 outside the network on both sides)."""
from __future__ import annotations

import importlib.util
import os

import pytest
import torch

from solvers import get_solver

pytestmark = pytest.mark.usefixtures("one_torch_thread")

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURE = os.path.join(HERE, "fixtures", "ref_tmpd_mmps.pt")
_spec = importlib.util.spec_from_file_location("make_ref_tmpd_mmps", os.path.join(HERE, "fixtures",
                                                                                 "make_ref_tmpd_mmps.py"))
ref = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ref)

CASES = torch.load(FIXTURE, weights_only=True)["cases"]
_NETS: dict = {}


def _net(name: str) -> torch.nn.Module:
    if name not in _NETS:
        _NETS[name] = ref.tiny_unet() if name == "tiny" else ref.prior_unet()
    return _NETS[name]


def _ours(case: dict, method: str, **params) -> torch.Tensor:
    physics, x_t, y = ref.case_inputs(case["task"], case["t"], case["index"])
    torch.testing.assert_close(x_t, case["x_t"].double(), rtol=0, atol=0)       # same inputs rebuilt
    torch.testing.assert_close(y, case["y"].double(), rtol=0, atol=0)
    x_t = x_t.clone().requires_grad_(True)
    x0_hat = ref.x0_hat_fn(_net(case["net"]), case["t"])(x_t)
    assert abs(float(x0_hat.detach().norm()) - case["x0_hat_norm"]) <= 1e-9 * case["x0_hat_norm"]
    ab = torch.tensor([case["alpha_bar"]], dtype=torch.float64)
    g, _ = get_solver(method, **params).guidance(x_t, x0_hat, y, ab, physics)
    return ((1 - ab) / ab.sqrt()).reshape(1, 1, 1, 1) * g


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c['net']}-{c['task']}-t{c['t']}")
def test_tmpd_and_mmps_match_azula(case):
    assert _rel(_ours(case, "TMPD"), case["tmpd"].double()) < 1e-5
    for k in ref.MMPS_ITERATIONS:
        assert _rel(_ours(case, "MMPS", iterations=k), case[f"mmps{k}"].double()) < 1e-5, k


def test_the_fixture_is_not_trivial():
    """The cases differ between the methods (so each comparison checks something of its own)."""
    for case in CASES:
        assert _rel(case["tmpd"].double(), case["mmps3"].double()) > 1e-3 or case["task"] == "inpainting"
        assert _rel(case["mmps1"].double(), case["mmps3"].double()) > 1e-4
