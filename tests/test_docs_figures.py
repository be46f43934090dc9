"""The main job's figures quoted in README.md and docs/ agree with each other and with the committed
record of the run (samples/mnist_motion_deblur_summary.json, written by util.results_record from
``bash run_commands.sh``'s summary.json)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from runner import final_line

REPO = Path(__file__).resolve().parents[1]
RECORD = REPO / "samples" / "mnist_motion_deblur_summary.json"
#: How each figure is quoted: regex -> (record key, format).
FIGURES = {r"PSNR (\d+\.\d+) dB": ("psnr", ".2f"), r"SSIM (0\.\d{4})": ("ssim", ".4f"),
           r"residual (\d\.\d{3})": ("residual", ".3f"),
           r"main job \(.*?\) gives a mean of (\d\.\d{3})": ("residual", ".3f"),
           r"FD-digits (\d+\.\d{3})": ("fd_digits", ".3f")}


def record() -> dict:
    return json.loads(RECORD.read_text(encoding="utf-8"))


def expected() -> dict[str, str]:
    rec = record()
    out = {k: format(rec["metrics"][k]["mean"], f) for k, f in (("psnr", ".2f"), ("ssim", ".4f"), ("residual", ".3f"))}
    out["fd_digits"] = format(rec["set_metrics"]["fd_digits"], ".3f")
    return out


def main_job_paragraphs() -> list[tuple[str, str]]:
    """(file, paragraph) of README.md and docs/*.md that quote the main job's figures: they
    mention the main job (or `bash run_commands.sh` with no variables) and a PSNR or residual
    figure; a paragraph about an earlier prior ("prior of that time") is history, not a quote."""
    found = []
    for path in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        text = path.read_text(encoding="utf-8")
        for para in re.split(r"\n\s*\n", text):
            flat = " ".join(para.split())
            if ("main job" in flat or "`bash run_commands.sh`" in flat) and re.search(r"PSNR \d|residual \d|a mean of \d", flat) \
                    and "prior of that time" not in flat:
                found.append((path.name, flat))
    return found


def test_the_record_is_the_main_job():
    rec = record()
    assert rec["command"] == "bash run_commands.sh" and rec["label"] == "motion_blur, CoDPS+ (ddim100)"
    assert rec["counts"]["ok"] == rec["num_images"] == 16 and rec["seed"] == 22 and rec["set_metrics"]["n"] == 16
    summary = {**rec, "configs": {"task": {"conditioning": {"method": "CoDPS+"}},
                                  "diffusion": {"timestep_respacing": "ddim100"}},
               "metrics": {**rec["metrics"], "seconds": {"mean": None}}}
    assert final_line(summary).replace("n/a s per image", "… s per image") == rec["final_line"]


def test_readme_and_docs_quote_the_main_job_as_recorded():
    want = expected()
    paragraphs = main_job_paragraphs()
    files = {f for f, _ in paragraphs}
    assert sorted(f for f, _ in paragraphs) == ["README.md", "restore.md", "restore.md"], files
    quoted = 0
    for name, para in paragraphs:
        for pattern, (key, _) in FIGURES.items():
            for value in re.findall(pattern, para):
                assert value == want[key], (name, key, value, want[key], para[:300])
                quoted += 1
    assert quoted >= 8
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    line = record()["final_line"].split(", … s per image")[0]
    assert " ".join(line.split()) in " ".join(readme.split()), "README must quote the main job's final line"


@pytest.mark.parametrize("stale", ["26.98 dB / SSIM 0.8368", "SSIM 0.8368", "residual 0.927"])
def test_no_stale_main_job_figures(stale):
    for path in [REPO / "README.md", *(REPO / "docs").glob("*.md")]:
        assert stale not in " ".join(path.read_text(encoding="utf-8").split()), path.name


def test_results_record_refuses_an_unfinished_run(tmp_path, capsys):
    from util.results_record import main
    assert main([str(tmp_path), str(tmp_path / "r.json")]) == 2
    assert capsys.readouterr().err.startswith(f"error: cannot read {tmp_path / 'summary.json'}")
    (tmp_path / "summary.json").write_text(json.dumps({"status": "running"}))
    assert main([str(tmp_path), str(tmp_path / "r.json")]) == 2
    assert "status 'running', not complete" in capsys.readouterr().err and not (tmp_path / "r.json").exists()
