"""A run's figures as a small, machine-independent JSON file to commit next to the docs that quote
them (the docs' figures must come from a committed results file; tests/test_docs_figures.py
checks that README.md and docs/ agree with it)::

    bash run_commands.sh --save_dir /tmp/main
    python -m util.results_record /tmp/main/MNIST/DDIM/motion_deblur samples/mnist_motion_deblur_summary.json \\
        --command "bash run_commands.sh"

The record keeps what identifies the run and its results (method, respacing, operator, noise,
seed, counts, mean / std of every per-image metric, the set metrics, versions, the final line
without its timing) and drops paths, the device and timings of the machine it ran on.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from util.image_io import save_json

#: summary.json entries a record keeps as they are.
KEPT = ("operator", "num_images", "counts", "metric_norm", "seed", "batch_size", "noise_sigma", "lpips_net",
        "set_metrics", "versions")


def record(summary: dict, command: str) -> dict:
    """The record of a run from its summary.json dict: :data:`KEPT` entries, the method and
    respacing, the metric means / stds (``seconds`` left out: it is the machine's), and
    ``final_line`` (runner.final_line with the seconds per image replaced by ``…``).

    >>> record({"operator": "op", "metrics": {"psnr": {"mean": 1.0, "std": 0.0, "n": 1}, "seconds": {}},
    ...         "counts": {"ok": 1}}, "cmd")["metrics"]
    {'psnr': {'mean': 1.0, 'std': 0.0, 'n': 1}}
    """
    import re

    from runner import final_line, run_label
    out = {"command": command, "label": run_label(summary)}
    out.update({k: summary[k] for k in KEPT if k in summary})
    out["metrics"] = {k: v for k, v in (summary.get("metrics") or {}).items() if k != "seconds"}
    line = final_line({**summary, "metrics": {**summary.get("metrics", {}), "seconds": {"mean": None}}})
    out["final_line"] = re.sub(r"n/a s per image", "… s per image", line)
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m util.results_record RUN_DIR OUT.json [--command CMD]``; exit 2 with one
    ``error:`` line when RUN_DIR has no readable summary.json or the run is not complete."""
    parser = argparse.ArgumentParser(prog="python -m util.results_record", description=__doc__.split("::")[0])
    parser.add_argument("run_dir", help="a run's output folder (holding summary.json)")
    parser.add_argument("out", help="the JSON record to write")
    parser.add_argument("--command", default="", help="the command that made the run, recorded as given")
    args = parser.parse_args(argv)
    path = os.path.join(args.run_dir, "summary.json")
    try:
        with open(path, encoding="utf-8") as f:
            summary = json.load(f)
    except (OSError, ValueError) as exc:
        print(f"error: cannot read {path}: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    if summary.get("status") != "complete":
        print(f"error: {path} records a run with status {summary.get('status')!r}, not complete", file=sys.stderr)
        return 2
    save_json(args.out, record(summary, args.command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
