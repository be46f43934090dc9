"""benchmarks.prior_quality: border measure, the figures of a smoke run on a tiny random prior,
--keep, and bad input."""
import json

import numpy as np
import pytest
import torch
import yaml

from benchmarks.prior_quality import border_mean, main
from guided_diffusion.unet import create_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY1 = dict(image_size=32, in_channels=1, num_channels=32, num_res_blocks=1, channel_mult="1,2",
             learn_sigma=True, attention_resolutions="", num_head_channels=-1, num_heads=1,
             use_scale_shift_norm=True, resblock_updown=False, model_path="")


def test_border_mean():
    x = -torch.ones(3, 1, 32, 32)
    x[1, 0, 0, :] = 1.0                              # one white border row: 32 of 240 frame pixels
    x[2, 0, 2:30, 2:30] = 1.0                        # white inside the frame only
    np.testing.assert_allclose(border_mean(x), [0.0, 255.0 * 32 / 240, 0.0])


@pytest.fixture()
def tiny(tmp_path):
    cfg = tmp_path / "model.yaml"
    cfg.write_text(yaml.safe_dump(TINY1))
    paths = []
    for s in (0, 1):
        with torch.random.fork_rng():
            torch.manual_seed(s)
            p = tmp_path / f"m{s}.pt"
            torch.save(create_model(**TINY1).state_dict(), p)
        paths.append(str(p))
    return str(cfg), paths


def test_quick_run_and_keep(tmp_path, tiny):
    pytest.importorskip("mlxtend")
    cfg, (m0, m1) = tiny
    out = str(tmp_path / "res" / "pq.md")
    common = ["--model-config", cfg, "--steps", "ddim2", "--out", out, "--num", "4", "--batch", "3"]
    assert main(common + ["--ckpt", m0, "--label", "zero"]) == 0
    res = json.load(open(tmp_path / "res" / "pq.json"))
    col, ref = res["columns"][0], res["reference"]
    assert col["num"] == 4 and sum(col["class_counts"]) == 4 and 0 <= col["confident"] <= 1
    assert ref["num"] == 250 and ref["black_background"] == 1.0 and ref["accuracy"] >= 0.95
    assert ref["fd_test"] == pytest.approx(0.0, abs=1e-6) and res["fd_floor_all"] > 0 and col["fd_test"] > 0
    assert (tmp_path / "res" / "pq_0.png").is_file()
    md = open(out).read()
    assert "| zero | test digits (reference) |" in md and "FD floor" in md
    # --keep adds a column and keeps the earlier one without re-sampling it
    assert main(common + ["--ckpt", m1, "--label", "one", "--keep"]) == 0
    res2 = json.load(open(tmp_path / "res" / "pq.json"))
    assert [c["label"] for c in res2["columns"]] == ["zero", "one"]
    assert res2["columns"][0] == col and res2["columns"][1]["sha256"] != col["sha256"]
    # an existing folder as --out means <folder>/prior_quality.md (it once crashed after sampling)
    folder = tmp_path / "dir"
    folder.mkdir()
    assert main(["--model-config", cfg, "--steps", "ddim2", "--out", str(folder), "--num", "2", "--ckpt", m0]) == 0
    assert (folder / "prior_quality.md").is_file() and (folder / "prior_quality.json").is_file()


def test_bad_input_exits_2(tmp_path, tiny, capsys):
    cfg, (m0, _) = tiny
    out = tmp_path / "pq.md"
    assert main(["--ckpt", str(tmp_path / "missing.pt"), "--out", str(out), "--model-config", cfg]) == 2
    assert main(["--ckpt", m0, "--label", "a", "--label", "b", "--out", str(out), "--model-config", cfg]) == 2
    err = capsys.readouterr().err
    assert err.count("error: ") == 2 and "missing.pt" in err and "--label" in err
    assert not out.exists()
