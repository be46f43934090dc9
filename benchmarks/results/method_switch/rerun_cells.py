"""Re-run 3 cached leaderboard cells on the first 4 test digits (issue 22): their cache keys are unchanged by the
config recomposition and restore(), and the PSNRs must equal the cached lists (leaderboard_cells_rerun.json)."""
import json, sys
from benchmarks import evaluate, leaderboard
recs = {}
for l in open("benchmarks/results/leaderboard_cache.jsonl"):
    r = json.loads(l); recs[r["key"]] = r
specs = evaluate.discover()
out = []
for method, task, budget in (("DDRM", "motion_deblur", 20), ("CoDPS+", "inpainting", 20), ("DiffPIR", "super_resolution_x4", 20)):
    spec = specs[method]
    cands = [r for r in recs.values() if r["method"] == method and r["task"] == task and r["budget"] == budget]
    r = next(c for c in cands if leaderboard.cell_key(spec, task, budget, len(c["psnr"]), 22) == c["key"])
    s = evaluate.run_method(spec, task, r["params"], r["respacing"], "test", 4, 22)
    out.append({"method": method, "task": task, "budget": budget, "respacing": r["respacing"], "cached_psnr_first4": r["psnr"][:4],
                "rerun_psnr": s.psnr, "max_abs_diff_db": max(abs(a - b) for a, b in zip(s.psnr, r["psnr"][:4]))})
    print(out[-1], flush=True)
json.dump({"about": "3 cached leaderboard cells (benchmarks/results/leaderboard_cache.jsonl, keys unchanged) re-run on the first 4 test digits with benchmarks.evaluate.run_method on restore.restore (branch pipeline); command: PYTHONPATH=. python benchmarks/results/method_switch/rerun_cells.py", "cells": out},
          open("benchmarks/results/method_switch/leaderboard_cells_rerun.json", "w"), indent=1)
