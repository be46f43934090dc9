"""Evaluation as the papers do it: LPIPS-VGG for the FFHQ / IMAGENET configs, set-level metrics
(FD-digits on the embedded classifier's features, FID / KID by torch-fidelity) over a run and over
two folders, and a final line that names the method."""
from __future__ import annotations

import glob
import json
import logging
import subprocess
from unittest import mock
import sys

import numpy as np
import pytest
import scipy.linalg
import torch

from cli_helpers import REPO, cli_env, run_main
from runner import final_line, run_label
from util import set_metrics
from util.config import load_yaml
from util.metrics import LPIPSMetric, lpips_weights_path, metrics_options

MNIST = ["--model_config", "configs/MNIST/DDIM/model_config.yaml",
         "--diffusion_config", "configs/MNIST/DDIM/diffusion_config.yaml",
         "--task_config", "configs/MNIST/DDIM/motion_deblur_config.yaml", "diffusion.timestep_respacing=ddim3"]
OUT = "MNIST/DDIM/motion_deblur"


# ---- LPIPS backbone --------------------------------------------------------------------------

def test_lpips_vgg_offline_names_the_vgg16_file(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert lpips_weights_path("vgg") == str(tmp_path / "hub" / "checkpoints" / "vgg16-397923af.pth")
    with caplog.at_level(logging.WARNING):
        metric = LPIPSMetric(net="vgg")
    assert not metric.available and metric.net_name == "vgg"
    assert metric(torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 8, 8)) == [None, None]
    lines = [r.message for r in caplog.records if "LPIPS" in r.message]
    assert len(lines) == 1 and "vgg16-397923af.pth" in lines[0] and "torchvision.models.vgg16" in lines[0]


def test_metrics_section_checked_and_the_paper_configs_use_vgg():
    assert metrics_options(None) == {"lpips_net": "alex"}
    assert metrics_options({"lpips_net": "vgg"}) == {"lpips_net": "vgg"}
    with pytest.raises(ValueError, match="metrics.lpips_net 'squeeze' is not valid; valid: vgg, alex"):
        metrics_options({"lpips_net": "squeeze"}, "t.yaml")
    with pytest.raises(ValueError, match="unknown key.*metrics.lpip"):
        metrics_options({"lpip": "vgg"})
    paper = [f for f in glob.glob(str(REPO / "configs/*/*/*_config.yaml"))
             if ("/FFHQ/" in f or "/IMAGENET/" in f) and not f.endswith(("model_config.yaml", "diffusion_config.yaml"))]
    assert len(paper) > 50
    for f in paper:
        assert metrics_options(load_yaml(f).get("metrics"), f)["lpips_net"] == "vgg", f


# ---- formulas --------------------------------------------------------------------------------

def _exact_moments(rng, n: int, mean: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """n rows whose sample mean and (N − 1) covariance are exactly ``mean`` and ``cov``."""
    z = rng.standard_normal((n, len(mean)))
    z -= z.mean(0)
    u, s, vt = np.linalg.svd(z, full_matrices=False)
    white = u * np.sqrt(n - 1)                       # sample covariance I, mean 0
    return white @ np.linalg.cholesky(cov).T + mean


def _closed_form(mu1, s1, mu2, s2) -> float:
    """W2² of two Gaussians: ‖Δμ‖² + Tr S1 + Tr S2 − 2 Tr (S1^½ S2 S1^½)^½ (symmetric path)."""
    r1 = scipy.linalg.sqrtm(s1).real
    inner = np.linalg.eigvalsh(r1 @ s2 @ r1)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.sum(np.sqrt(np.clip(inner, 0, None))))


def test_frechet_distance_against_the_closed_form_of_two_gaussians():
    rng = np.random.default_rng(0)
    d = 5
    a1, a2 = rng.standard_normal((d, d)), rng.standard_normal((d, d))
    s1, s2 = a1 @ a1.T + 0.5 * np.eye(d), a2 @ a2.T + 0.1 * np.eye(d)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    fa, fb = _exact_moments(rng, 40, mu1, s1), _exact_moments(rng, 60, mu2, s2)
    want = _closed_form(mu1, s1, mu2, s2)
    assert set_metrics.frechet_distance(fa, fb) == pytest.approx(want, rel=1e-8)
    assert set_metrics.frechet_distance(fa, fa) == pytest.approx(0.0, abs=1e-8)
    # 1-D check by hand: (μ1 − μ2)² + (σ1 − σ2)²
    x, y = _exact_moments(rng, 10, np.array([1.0]), np.array([[4.0]])), _exact_moments(rng, 10, np.array([-2.0]),
                                                                                         np.array([[1.0]]))
    assert set_metrics.frechet_distance(x, y) == pytest.approx(9.0 + 1.0, rel=1e-10)
    with pytest.raises(ValueError, match="N >= 2"):
        set_metrics.frechet_distance(fa[:1], fb)


def test_torch_fidelity_fid_against_the_closed_form():
    pytest.importorskip("torch_fidelity")
    rng = np.random.default_rng(2)
    d = 4
    a1, a2 = rng.standard_normal((d, d)), rng.standard_normal((d, d))
    s1, s2 = a1 @ a1.T + 0.5 * np.eye(d), a2 @ a2.T + 0.1 * np.eye(d)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    fa, fb = _exact_moments(rng, 30, mu1, s1), _exact_moments(rng, 50, mu2, s2)
    assert set_metrics.fid(fa, fb) == pytest.approx(_closed_form(mu1, s1, mu2, s2), rel=1e-8)


def _kid_direct(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD² with k(a, b) = (aᵀb / d + 1)³, by explicit sums (Bińkowski et al. 2018, eq. 4)."""
    m, d = len(x), x.shape[1]
    k = lambda a, b: (a @ b / d + 1.0) ** 3   # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_kid_against_the_direct_formula():
    pytest.importorskip("torch_fidelity")
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((12, 4)), rng.standard_normal((12, 4)) + 0.7
    mean, std = set_metrics.kid(x, y, subsets=1, subset_size=12)   # one subset = the whole sets (permuted)
    assert mean == pytest.approx(_kid_direct(x, y), rel=1e-10) and std == 0.0
    assert set_metrics.kid(x, y) == set_metrics.kid(x, y)          # seeded subsets


# ---- over folders and runs -------------------------------------------------------------------

def _digits(folder, n: int, seed: int):
    from util.image_io import save_png
    rng = np.random.default_rng(seed)
    for i in range(n):
        img = np.zeros((1, 32, 32), np.float32)
        img[0, 8 + rng.integers(0, 4):24, 12 + rng.integers(0, 4):18] = 1.0
        save_png(str(folder / f"{i:05d}.png"), img)


def test_folders_from_the_command_line(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    _digits(a, 5, 0)
    _digits(b, 6, 1)
    res = set_metrics.compare_folders(str(a), str(b))
    clf = set_metrics.DigitFeatures()
    fa = clf(np.stack([set_metrics.read_uint8(str(p)) for p in sorted(a.iterdir())]))
    fb = clf(np.stack([set_metrics.read_uint8(str(p)) for p in sorted(b.iterdir())]))
    assert res["fd_digits"] == pytest.approx(set_metrics.frechet_distance(fa, fb), rel=1e-12) and res["n"] == 5
    proc = subprocess.run([sys.executable, "-m", "util.set_metrics", str(a), str(b), "--json", str(tmp_path / "r.json")],
                          cwd=REPO, env=cli_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"FD-digits {res['fd_digits']:.3f} over 5 images" in proc.stdout
    assert json.loads((tmp_path / "r.json").read_text())["fd_digits"] == pytest.approx(res["fd_digits"])
    notes = [line for line in proc.stderr.splitlines() if line.startswith("note: FID / KID not computed")]
    assert len(notes) == 1 and ("torch-fidelity" in notes[0] or set_metrics.INCEPTION_WEIGHTS in notes[0])
    bad = subprocess.run([sys.executable, "-m", "util.set_metrics", str(a / "00000.png"), str(b)], cwd=REPO,
                         env=cli_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == \
        [f"error: folder {a / '00000.png'} is a file; give a folder of png/jpg images"]


def test_inception_weights_missing_is_a_note(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    extractors, notes = set_metrics.make_extractors((3, 16, 16))
    assert extractors == [] and len(notes) == 1 and notes[0].startswith("FID / KID not computed")
    assert "torch-fidelity" in notes[0] or str(tmp_path) in notes[0]


def test_mnist_run_reports_fd_digits_also_when_resumed(tmp_path):
    """Every MNIST run of >= 2 images reports FD-digits; a resumed run (2 images done, then 4)
    reports what a fresh 4-image run does, and it is the FD of its recon/ against label/."""
    fresh = run_main(MNIST + ["--save_dir", str(tmp_path / "fresh"), "--num_images", "4"], tmp_path)
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    s1 = json.loads((tmp_path / "fresh" / OUT / "summary.json").read_text())
    fd = s1["set_metrics"]["fd_digits"]
    assert fd is not None and fd > 0 and s1["set_metrics"]["n"] == 4 and s1["lpips_net"] == "alex"
    last = fresh.stdout.strip().splitlines()[-1]
    assert last.startswith("motion_blur, CoDPS+ (ddim3): mean PSNR") and f"FD-digits {fd:.3f}" in last
    folders = set_metrics.compare_folders(str(tmp_path / "fresh" / OUT / "recon"), str(tmp_path / "fresh" / OUT / "label"))
    assert folders["fd_digits"] == pytest.approx(fd, rel=1e-12)
    for n in ("2", "4"):
        again = run_main(MNIST + ["--save_dir", str(tmp_path / "resumed"), "--num_images", n], tmp_path)
        assert again.returncode == 0, again.stderr[-3000:]
    assert "2 of 4 images already done" in again.stderr
    s2 = json.loads((tmp_path / "resumed" / OUT / "summary.json").read_text())
    assert s2["set_metrics"]["fd_digits"] == pytest.approx(fd, rel=1e-12)
    one = run_main(MNIST + ["--save_dir", str(tmp_path / "one"), "--num_images", "1",
                            "task.metrics.lpips_net=vgg"], tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]
    s3 = json.loads((tmp_path / "one" / OUT / "summary.json").read_text())
    assert s3["set_metrics"]["fd_digits"] is None and "at least 2 images" in " ".join(s3["set_metrics"]["notes"])
    assert s3["lpips_net"] == "vgg" and "vgg16-397923af.pth" in one.stderr


def test_torchrun_gathers_the_features_of_every_rank(tmp_path):
    from test_distributed import torchrun
    ref = run_main(MNIST + ["--save_dir", str(tmp_path / "one"), "--num_images", "3"], tmp_path)
    assert ref.returncode == 0, ref.stderr[-3000:]
    proc = torchrun(MNIST + ["--save_dir", str(tmp_path / "two"), "--num_images", "3"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    s1, s2 = (json.loads((tmp_path / d / OUT / "summary.json").read_text()) for d in ("one", "two"))
    assert s2["processes"] == 2 and s2["set_metrics"]["n"] == 3
    # the same PNGs; the classifier ran on batches of 2 + 1 instead of 3 (last bits of the features)
    assert s2["set_metrics"]["fd_digits"] == pytest.approx(s1["set_metrics"]["fd_digits"], rel=1e-6)


# ---- the final line --------------------------------------------------------------------------

def test_final_line_names_method_and_respacing():
    base = {"operator": "motion_blur", "metric_norm": "clip", "counts": {"ok": 16},
            "metrics": {k: {"mean": 1.0} for k in ("psnr", "ssim", "lpips", "residual", "seconds")}}
    lines = set()
    for method, respacing in [("CoDPS+", "ddim100"), ("DPS", "ddim100"), ("PiGDM", "ddim100"), ("DAPS", "ddim100"),
                              ("CoDPS+", "ddim20")]:
        s = {**base, "configs": {"task": {"conditioning": {"method": method}},
                                 "diffusion": {"sampler": "ddim", "timestep_respacing": respacing}}}
        lines.add(final_line(s))
        assert final_line(s).startswith(f"motion_blur, {method} ({respacing}): mean PSNR 1.00 dB")
    assert len(lines) == 5
    ddpm = {**base, "configs": {"task": {"conditioning": {"method": "CoDPS"}}, "diffusion": {"sampler": "ddpm"}},
            "resolved": {"diffusion": {"num_steps": 1000}}}
    assert run_label(ddpm) == "motion_blur, CoDPS (ddpm, 1000 steps)"
    assert final_line({**base, "set_metrics": {"n": 16, "fd_digits": 1.23456, "fid": 7.0}}).endswith(
        "over 16 images; FD-digits 1.235, FID 7.00")


def test_an_ffhq_config_run_records_lpips_vgg(tmp_path, monkeypatch, capsys):
    """The shipped FFHQ task config (with the tiny model): lpips_net vgg in summary.json, and offline
    one warning naming the VGG-16 weights file; 3-channel images get no FD-digits, FID / KID a note."""
    from cli_helpers import make_images, run_dir, run_inproc, tiny_args
    make_images(tmp_path / "data", n=2)
    proc = run_inproc(tiny_args("gaussian_deblur", tmp_path / "data", tmp_path / "out") +
                      ["task.measurement.operator.kernel_size=9"], tmp_path, monkeypatch, capsys)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run_dir(tmp_path / "out", "gaussian_deblur") / "summary.json").read_text())
    assert summary["lpips_net"] == "vgg" and summary["configs"]["task"]["metrics"] == {"lpips_net": "vgg"}
    assert proc.stderr.count("vgg16-397923af.pth") == 1
    sets = summary["set_metrics"]
    assert sets["fd_digits"] is None and sets["fid"] is None and len(sets["notes"]) == 1
    assert sets["notes"][0].startswith("FID / KID not computed")


def test_fid_and_kid_with_cached_inception_weights(tmp_path, monkeypatch):
    """With (here random) Inception weights in the hub cache, FID / KID are computed from PNG folders
    (torch-fidelity's network, loaded weights-only), and agree with the formulas on its features."""
    pytest.importorskip("torch_fidelity")
    import torch.nn as nn
    import torch_fidelity.feature_extractor_inceptionv3 as inc
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    path = set_metrics.inception_weights_path()
    (tmp_path / "th" / "hub" / "checkpoints").mkdir(parents=True)
    with mock.patch.object(inc, "load_state_dict_from_url", lambda *a, **k: {}), \
            mock.patch.object(nn.Module, "load_state_dict", lambda self, sd, *a, **k: None):
        torch.manual_seed(0)
        net = inc.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    torch.save(net.state_dict(), path)
    from util.image_io import save_png
    rng = np.random.default_rng(0)
    paths = {"a": [], "b": []}
    for folder, n in (("a", 2), ("b", 3)):
        for i in range(n):
            paths[folder].append(str(tmp_path / folder / f"{i}.png"))
            save_png(paths[folder][-1], rng.random((3, 16, 16)))
    extractors, notes = set_metrics.make_extractors((3, 16, 16))
    assert notes == [] and [e.name for e in extractors] == ["inception"]
    fa, fb = (set_metrics.features(paths[k], extractors) for k in ("a", "b"))
    assert fa["inception"].shape == (2, 2048)
    res = set_metrics.score(fa, fb)
    assert res["fd_digits"] is None and res["fid"] > 0 and res["kid"] is not None and res["notes"] == []
    # torch-fidelity's FID (eigenvalues of Σ_a Σ_b) against ours (scipy sqrtm): one formula
    assert res["fid"] == pytest.approx(set_metrics.frechet_distance(fa["inception"], fb["inception"]), rel=1e-4)
