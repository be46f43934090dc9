"""The per-image loop of the command-line job: measure each test image (or, in measurement
mode, read its measurement y and kernel or mask from a folder), sample its posterior, save the
input / label / reconstruction / measurement (and the kernel or mask), score it and draw
``grid.png``, resuming where an earlier run into the same folder stopped.

Image i (its position in the sorted dataset) draws its kernel or mask, its measurement noise and
its sampler noise from generators seeded by (seed, i, stream) (``util.seeding``), so our code's
results do not depend on the batch size or on which images share a batch (the network's batched
kernels may change the last bits, which DPS / ΠGDM amplify: docs/cli.md, "Batch size"). An image
is finished when its row is in ``metrics.csv`` and its reconstruction is on disk (or its row
records a divergence); finished images are skipped unless ``overwrite``.

Under ``torchrun`` (several processes, :mod:`util.distributed`) process r of K takes the images
i with i mod K = r and writes their outputs and its rows to ``metrics.rank<r>.csv``; rank 0
prepares the folder, waits for every rank, then merges the rows into ``metrics.csv`` and writes
``summary.json``. Since every image has its own random streams, the outputs are the same as
those of one process.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from data.dataloader import ImageDataset, UnreadableImageError
from operators.physics import Physics
from restore import measure, restore
from util.distributed import SINGLE, DistContext, PeerFailed, shard
from util.grid import strip_steps, write_run_grid, write_strip
from util.image_io import read_csv, save_json, save_npy, save_png, to_uint8_image, write_csv
from util.measurement_io import set_params
from util.metrics import LPIPSMetric, data_fit_residual, to_unit
from util.progress import RunProgress
from util.outdir import clear_owned
from util.set_metrics import format_set_metrics, run_features, run_score

log = logging.getLogger(__name__)

#: ``residual``: the data fit ‖y − A x̂‖ / (σ_n √m) (:func:`util.metrics.data_fit_residual`).
CSV_FIELDS = ("image", "psnr", "ssim", "lpips", "residual", "seconds", "nfe", "status")
#: ``measurement/<name>.npy``: y in its own geometry, float32 on the [-1, 1] scale, as
#: ``--measurement_dir`` reads it back (with ``params/<name>.npy``).
OUTPUT_DIRS = ("input", "label", "recon", "params", "measurement")
STATUS_OK = "ok"
STATUS_UNREADABLE = "unreadable"
METRICS_CSV = "metrics.csv"
#: What ``--overwrite`` deletes before a run: the folders and files a run writes (anything else
#: in the folder stays).
OWNED_DIRS = OUTPUT_DIRS + ("progress",)
OWNED_FILES = (METRICS_CSV, "summary.json", "grid.png")
OWNED_PATTERNS = ("metrics.rank*.csv",)
#: Rows of process r of a multi-process run, merged into metrics.csv by rank 0 at the end (or by
#: the next run, when the run was interrupted).
RANK_CSV = "metrics.rank{rank}.csv"


class RunConflict(ValueError):
    """The output folder holds results of a different configuration."""


@dataclass
class RunOptions:
    """Options of one run (numbers, not configs)."""
    seed: int = 22
    batch_size: int = 1
    num_images: int | None = None
    record: bool = False
    overwrite: bool = False
    metric_norm: str = "clip"
    progress: bool = True
    checked: bool = False   # the caller ran check_compatible on this folder already (main.py, before the model loads)


@dataclass
class RunResult:
    """What a run did: the rows of the selected images and the summary written to summary.json."""
    rows: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    out_dir: str = ""


def image_name(index: int) -> str:
    """File stem of dataset image ``index``: zero-padded to 5 digits (``00007``)."""
    return f"{index:05d}"


def record_step(i: int) -> bool:
    """Whether ``--record`` saves x0_hat at 0-based step ``i``: every step below 10, then every 10th."""
    return i < 10 or i % 10 == 0


def _fingerprint(summary: dict) -> dict:
    return {k: summary.get(k) for k in ("configs", "seed", "metric_norm", "measurement_dir")}


def _differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            out += _differences(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else str(k))
        return out
    return [] if a == b else [prefix or "(root)"]


def check_compatible(out_dir: str, fingerprint: dict) -> None:
    """Raise RunConflict when ``out_dir/summary.json`` records other configs, seed or metric
    normalisation than ``fingerprint`` (a JSON-like dict), naming the first differing keys."""
    import json
    path = os.path.join(out_dir, "summary.json")
    if not os.path.isfile(path):
        return
    try:
        with open(path, encoding="utf-8") as f:
            old = json.load(f)
    except (OSError, ValueError):
        log.warning("could not read %s; not checking that it holds the same configuration", path)
        return
    diff = _differences(_fingerprint(old), fingerprint)
    if diff:
        raise RunConflict(f"{out_dir} holds results of a different run (differs in: {', '.join(diff[:5])}); "
                          f"use --overwrite to replace them or another --save_dir")


def _float(text: Any) -> float | None:
    if text in (None, ""):
        return None
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value


def _stats(values: Sequence[float | None]) -> dict:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return {"mean": None, "std": None, "n": 0}
    arr = np.asarray(vals, dtype=np.float64)
    finite = arr[np.isfinite(arr)]
    return {"mean": float(finite.mean()) if finite.size else float(arr.mean()),
            "std": float(finite.std()) if finite.size else None, "n": int(arr.size)}


def summarize(rows: Sequence[dict]) -> dict:
    """Counts and mean / std (over finished images) of psnr, ssim, lpips, residual, seconds and nfe.

    ``rows``: metrics rows (values as numbers or CSV text). Infinite PSNR (a perfect
    reconstruction) is left out of the mean and std but counted in n."""
    ok = [r for r in rows if r.get("status") == STATUS_OK]
    counts = {"ok": len(ok),
              "diverged": sum(str(r.get("status", "")).startswith("diverged") for r in rows),
              "unreadable": sum(r.get("status") == STATUS_UNREADABLE for r in rows)}
    metrics = {k: _stats([_float(r.get(k)) for r in ok])
               for k in ("psnr", "ssim", "lpips", "residual", "seconds", "nfe")}
    return {"counts": counts, "metrics": metrics}


def run_label(summary: dict) -> str:
    """What ran, for the final line and the logs: ``"<operator>, <method> (<respacing>)"``, e.g.
    ``"motion_blur, CoDPS+ (ddim100)"``; a run without respacing gives its sampler and step count
    (``"motion_blur, CoDPS (ddpm, 1000 steps)"``). Read from summary.json's ``configs`` (the
    method and time grid as they ran) and ``resolved``; parts it lacks are left out."""
    configs = summary.get("configs") or {}
    method = ((configs.get("task") or {}).get("conditioning") or {}).get("method")
    diffusion = configs.get("diffusion") or {}
    respacing = diffusion.get("timestep_respacing")
    steps = ((summary.get("resolved") or {}).get("diffusion") or {}).get("num_steps")
    if respacing not in (None, ""):
        grid = str(respacing)
    elif steps:
        grid = f"{diffusion.get('sampler', 'ddpm')}, {steps} steps"
    else:
        grid = ""
    what = f"{method}{f' ({grid})' if grid else ''}" if method else ""
    return ", ".join(p for p in (summary.get("operator", ""), what) if p)


def final_line(summary: dict) -> str:
    """One line: what ran (:func:`run_label`: operator, method, respacing), mean PSNR / SSIM /
    LPIPS, data-fit residual and seconds per image, with the counts (restore mode,
    ``measurement_dir`` set and no ground truth: the restored count instead of n/a metrics), and
    the set-level metrics of ``summary["set_metrics"]`` when there are any
    (:func:`util.set_metrics.format_set_metrics`)."""
    m, c = summary["metrics"], summary["counts"]

    def fmt(key: str, spec: str) -> str:
        v = m.get(key, {}).get("mean")
        return "n/a" if v is None else format(v, spec)
    extra = "".join(f", {c[k]} {k}" for k in ("diverged", "unreadable") if c.get(k))
    label = run_label(summary)
    sets = format_set_metrics(summary.get("set_metrics"), count=False)
    sets = f"; {sets}" if sets else ""
    if summary.get("measurement_dir") and all(fmt(k, "") == "n/a" for k in ("psnr", "ssim", "lpips")):
        return (f"{label}: restored {c['ok']} images (no ground truth: no PSNR / SSIM / LPIPS), "
                f"residual {fmt('residual', '.3f')}, {fmt('seconds', '.2f')} s per image{extra}")
    return (f"{label}: mean PSNR {fmt('psnr', '.2f')} dB / SSIM {fmt('ssim', '.4f')} / "
            f"LPIPS {fmt('lpips', '.4f')} ({summary.get('metric_norm', 'clip')}), residual {fmt('residual', '.3f')}, "
            f"{fmt('seconds', '.2f')} s per image over {c['ok']} images{extra}{sets}")


def rank_csv_files(out_dir: str) -> list[str]:
    """Paths of the per-process ``metrics.rank<r>.csv`` files in ``out_dir``, sorted by rank."""
    if not os.path.isdir(out_dir):
        return []
    found = []
    for name in os.listdir(out_dir):
        stem = name[len("metrics.rank"):-len(".csv")] if name.startswith("metrics.rank") and name.endswith(".csv") \
            else ""
        if stem.isdigit():
            found.append((int(stem), os.path.join(out_dir, name)))
    return [path for _, path in sorted(found)]


def read_all_rows(out_dir: str) -> dict[str, dict]:
    """{image: row} of ``metrics.csv`` updated with the rows of every ``metrics.rank<r>.csv``
    (rows of the per-process files are newer, so they win)."""
    rows = {r["image"]: r for r in read_csv(os.path.join(out_dir, METRICS_CSV)) if r.get("image")}
    for path in rank_csv_files(out_dir):
        rows.update({r["image"]: r for r in read_csv(path) if r.get("image")})
    return rows


def remove_stale_temporaries(out_dir: str) -> int:
    """Delete temporary files (``.<name>.<random>.tmp``, see ``util.image_io``) that a killed run
    left under ``out_dir``; returns how many were removed."""
    removed = 0
    for folder, _, files in os.walk(out_dir):
        for f in files:
            if f.startswith(".") and f.endswith(".tmp"):
                os.remove(os.path.join(folder, f))
                removed += 1
    if removed:
        log.info("removed %d temporary files left by an interrupted run in %s", removed, out_dir)
    return removed


class Runner:
    """Runs the inverse problem over a dataset and writes every output under ``out_dir``.

    Args:
        model: the ε-network (eval mode, on ``device``).
        sampler: the DDPM / DDIM sampler that :func:`sampling.sample` runs.
        operator, noiser, solver: the measurement model (wrapped in an ``operators.Physics``,
            which makes y) and the posterior-sampling method.
        dataset: test images, ``load(i)`` -> (C, H, W) in [-1, 1]; or, in measurement mode
            (``dataset.has_labels`` False, a :class:`util.measurement_io.MeasurementFolder`),
            measurements ``load(i)`` -> y and ``params(i)`` -> kernel / mask.
        out_dir: ``<save_dir>/<task>`` (:func:`util.layout.run_dir`).
        options: :class:`RunOptions`.
        info: extra entries of summary.json (configs, overrides, versions, device, ...); its
            ``configs`` with ``options.seed`` and ``metric_norm`` identify the run for resuming.
        device: where tensors go.
        lpips_metric: an :class:`util.metrics.LPIPSMetric` (None: the LPIPS column stays empty).
        dist: this process's :class:`util.distributed.DistContext` (default: a single process).
        fixed_params: a kernel or mask given in the task config for every image (instead of
            the operator's random draws), or None.
        physics: the ``operators.Physics`` of ``operator`` and ``noiser`` as the builder made it
            (None: made here).
    """

    def __init__(self, model: torch.nn.Module, sampler: Any, operator: Any, noiser: Any, solver: Any,
                 dataset: ImageDataset, out_dir: str, options: RunOptions, info: dict,
                 device: str | torch.device = "cpu", lpips_metric: LPIPSMetric | None = None,
                 dist: DistContext = SINGLE, fixed_params: np.ndarray | None = None, physics: Physics | None = None):
        self.model, self.sampler, self.operator, self.noiser, self.solver = model, sampler, operator, noiser, solver
        self.physics = physics if physics is not None else Physics(operator, noiser)
        self.dataset, self.out_dir, self.opt, self.info = dataset, out_dir, options, dict(info)
        self.info.update(getattr(model, "speed_settings", {}))   # precision, layout, compile and why
        self.device = torch.device(device)
        self.lpips = lpips_metric
        self.dist = dist
        self.fixed_params = fixed_params
        self.measured = not getattr(dataset, "has_labels", True)
        self.progress: RunProgress | None = None
        self.rows: dict[str, dict] = {}
        self.new_rows: dict[str, dict] = {}   # rows this process wrote in this run
        self.set_metrics: dict | None = None   # util.set_metrics.run_score at the end of the run

    # ---- bookkeeping -------------------------------------------------------------------------
    def selection(self) -> list[int]:
        """Dataset indices of this run: the first ``num_images`` (all when None)."""
        n = len(self.dataset) if self.opt.num_images is None else min(self.opt.num_images, len(self.dataset))
        return list(range(n))

    def finished(self, index: int) -> bool:
        """True when image ``index`` has a metrics row and its reconstruction (or a divergence row)."""
        row = self.rows.get(image_name(index))
        if row is None:
            return False
        status = str(row.get("status", ""))
        if status.startswith("diverged"):
            return True
        return status == STATUS_OK and os.path.isfile(os.path.join(self.out_dir, "recon", image_name(index) + ".png"))

    def _write_rows(self) -> None:
        """One process: all rows to metrics.csv. Several: this process's new rows to its
        metrics.rank<r>.csv (rank 0 merges them at the end)."""
        if self.dist.enabled:
            rows = sorted(self.new_rows.values(), key=lambda r: r["image"])
            write_csv(os.path.join(self.out_dir, RANK_CSV.format(rank=self.dist.rank)), CSV_FIELDS, rows)
            return
        rows = sorted(self.rows.values(), key=lambda r: r["image"])
        write_csv(os.path.join(self.out_dir, METRICS_CSV), CSV_FIELDS, rows)

    def _merge_rows(self) -> None:
        """Rank 0 (or a single process): read metrics.csv and every metrics.rank<r>.csv into
        ``self.rows``, write them to metrics.csv and delete the per-process files."""
        self.rows = read_all_rows(self.out_dir)
        write_csv(os.path.join(self.out_dir, METRICS_CSV), CSV_FIELDS, sorted(self.rows.values(),
                                                                           key=lambda r: r["image"]))
        for path in rank_csv_files(self.out_dir):
            os.remove(path)

    def _summary(self, selection: Sequence[int], status: str) -> dict:
        if self.dist.enabled:   # rank 0's view of the other processes' progress
            self.rows.update(read_all_rows(self.out_dir))
        rows = [self.rows[image_name(i)] for i in selection if image_name(i) in self.rows]
        summary = {"status": status, "operator": getattr(self.operator, "name", ""),
                   "num_images": len(selection), **summarize(rows)}
        summary["counts"]["pending"] = len(selection) - sum(
            self.finished(i) or self.rows.get(image_name(i), {}).get("status") == STATUS_UNREADABLE for i in selection)
        summary.update({"metric_norm": self.opt.metric_norm, "seed": self.opt.seed,
                        "batch_size": self.opt.batch_size, "processes": self.dist.world_size,
                        "noise_sigma": getattr(self.noiser, "sigma", None),
                        "lpips_net": getattr(self.lpips, "net_name", None)})
        if self.set_metrics is not None:
            summary["set_metrics"] = self.set_metrics
        summary.update(self.info)
        summary["unreadable"] = [r["image"] for r in rows if r.get("status") == STATUS_UNREADABLE]
        summary["diverged"] = {r["image"]: r["status"] for r in rows if str(r.get("status", "")).startswith("diverged")}
        summary["images"] = {image_name(i): self.dataset.names[i] for i in selection}
        return summary

    def _write_summary(self, selection: Sequence[int], status: str) -> dict:
        summary = self._summary(selection, status)
        save_json(os.path.join(self.out_dir, "summary.json"), summary)
        return summary

    # ---- the loop ----------------------------------------------------------------------------
    def _prepare(self, selection: Sequence[int]) -> None:
        """Rank 0 (or a single process), before any image: create the folders, remove debris of
        a killed run, refuse a folder of another configuration (RunConflict), merge the rows of
        an interrupted multi-process run into metrics.csv (with ``overwrite``: delete every
        file and folder a run owns, :data:`OWNED_DIRS` / :data:`OWNED_FILES`, so that no old
        output stays next to the new summary) and write summary.json with status ``running``."""
        opt = self.opt
        for sub in OUTPUT_DIRS + (("progress",) if opt.record else ()):
            if sub == "label" and self.measured and not getattr(self.dataset, "has_references", False):
                continue
            os.makedirs(os.path.join(self.out_dir, sub), exist_ok=True)
        remove_stale_temporaries(self.out_dir)
        if not opt.overwrite:
            if not opt.checked:
                check_compatible(self.out_dir, _fingerprint({**self.info, "seed": opt.seed,
                                                             "metric_norm": opt.metric_norm}))
            if rank_csv_files(self.out_dir):
                self._merge_rows()
            self.rows = read_all_rows(self.out_dir)
        else:   # the new run owns the folder: no old PNG may stay next to the new summary
            self.rows = {}
            clear_owned(self.out_dir, OWNED_DIRS, OWNED_FILES, OWNED_PATTERNS)
            for sub in OUTPUT_DIRS + (("progress",) if opt.record else ()):
                os.makedirs(os.path.join(self.out_dir, sub), exist_ok=True)
            if self.dist.enabled:
                write_csv(os.path.join(self.out_dir, METRICS_CSV), CSV_FIELDS, [])
        self._write_summary(selection, "running")

    def _start(self, selection: Sequence[int]) -> None:
        """Rank 0 prepares the folder while the others wait; a failure there (RunConflict,
        OSError) is raised on every rank, so that all of them stop."""
        error: BaseException | None = None
        if self.dist.is_main:
            try:
                self._prepare(selection)
            except (RunConflict, OSError) as exc:
                error = exc
        failed = self.dist.agree(None if error is None else " ".join(str(error).split()))
        if error is not None:
            raise error
        if failed:
            raise PeerFailed(f"process {failed[0][0]} could not prepare {self.out_dir}: {failed[0][1]}")
        if not self.dist.is_main:
            self.rows = {} if self.opt.overwrite else read_all_rows(self.out_dir)

    def run(self) -> RunResult:
        """Process every pending image of the selection (of this process's share under
        torchrun) in batches; returns the rows and summary (rank 0: of the whole selection;
        other ranks: their own rows and an empty summary).

        KeyboardInterrupt propagates after the rows are written and the summary is marked
        ``interrupted``; every file written so far is complete (atomic writes), so a re-run
        resumes. Raises RunConflict (another configuration's folder, or a failed rank 0),
        OSError (an unwritable folder), util.distributed.PeerFailed (on the other ranks when rank 0
        could not prepare the folder), util.distributed.DistributedError (another process died)."""
        opt = self.opt
        selection = self.selection()
        if opt.num_images is not None and opt.num_images > len(self.dataset) and self.dist.is_main:
            log.warning("--num_images %d but the data holds %d images: running %d", opt.num_images,
                        len(self.dataset), len(self.dataset))
        self._start(selection)
        mine = shard(selection, self.dist.rank, self.dist.world_size)
        pending = [i for i in mine if not self.finished(i)]
        if len(pending) < len(mine):
            log.info("%d of %d images already done in %s (skipped; --overwrite redoes them)",
                     len(mine) - len(pending), len(mine), self.out_dir)
        if self.dist.enabled:
            log.info("process %d of %d: %d of the %d images to do", self.dist.rank, self.dist.world_size,
                     len(pending), len(selection))
        batches = [pending[k:k + opt.batch_size] for k in range(0, len(pending), opt.batch_size)]
        self.progress = RunProgress(len(pending), self.sampler.num_timesteps, enabled=opt.progress)
        try:
            for b, batch in enumerate(batches):
                self._run_batch(batch, desc=f"batch {b + 1}/{len(batches)}")
                self.progress.images_done(len(batch))
                self._write_rows()
                if self.dist.is_main:
                    self._write_summary(selection, "running")
        except KeyboardInterrupt:
            self.progress.close()
            self._write_rows()
            if self.dist.is_main:
                self._write_summary(selection, "interrupted")
                self._write_grid(selection)
            raise
        except OSError:   # e.g. a full disk: say so in summary.json if it can still be written
            if self.dist.is_main:
                try:
                    self._write_summary(selection, "failed")
                except OSError:
                    pass
            raise
        self.progress.close()
        self._write_rows()
        self.dist.wait_for_all()
        gathered = self.dist.gather(self._set_features(mine))   # FID / KID / FD-digits, util.set_metrics
        if not self.dist.is_main:
            return RunResult(rows=list(self.new_rows.values()), summary={}, out_dir=self.out_dir)
        if self.dist.enabled:
            self._merge_rows()
        self._write_grid(selection)
        self.set_metrics = run_score(gathered)
        summary = self._write_summary(selection, "complete")
        rows = [self.rows[image_name(i)] for i in selection if image_name(i) in self.rows]
        return RunResult(rows=rows, summary=summary, out_dir=self.out_dir)

    def _set_features(self, mine: Sequence[int]) -> dict | None:
        """This process's part of the set metrics: features of its finished images that have a
        ground truth, from their PNGs (:func:`util.set_metrics.run_features`); None without any."""
        if self.measured and not getattr(self.dataset, "has_references", False):
            return None
        names = [image_name(i) for i in mine if self.finished(i)
                 and self.rows.get(image_name(i), {}).get("status") == STATUS_OK]
        shape = (self.dataset.channels, self.dataset.image_size, self.dataset.image_size)
        return run_features(self.out_dir, names, shape, self.device)

    def _write_grid(self, selection: Sequence[int]) -> None:
        """grid.png of the first images of the selection (a failure is only a warning)."""
        try:
            path = write_run_grid(self.out_dir, [image_name(i) for i in selection])
        except (OSError, ValueError) as exc:
            log.warning("could not write grid.png in %s: %s", self.out_dir, exc)
            return
        if path:
            log.info("picture of the run: %s", path)

    def _load(self, indices: Sequence[int]) -> tuple[list[int], list[torch.Tensor]]:
        kept, images = [], []
        for i in indices:
            try:
                images.append(self.dataset.load(i))
                kept.append(i)
            except UnreadableImageError as exc:
                log.warning("skipping image %s: %s", image_name(i), exc)
                self.rows[image_name(i)] = self.new_rows[image_name(i)] = {"image": image_name(i),
                                                                            "status": STATUS_UNREADABLE}
        return kept, images

    def _png(self, sub: str, name: str, img: torch.Tensor) -> None:
        save_png(os.path.join(self.out_dir, sub, name + ".png"), to_unit(img, self.opt.metric_norm))

    def _callback(self, names: Sequence[str], frames: dict[str, list]) -> Callable:
        """The per-step callback: advances the run's progress and, with ``--record``, saves
        x0_hat (``progress/<image>/x_<step>.png``) and keeps the frames of the strip
        (``progress/<image>.png``, :func:`util.grid.strip_steps`) in ``frames``."""
        record, progress = self.opt.record, self.progress
        shown = set(strip_steps(self.sampler.num_timesteps)) if record else set()

        def callback(i: int, t: int, x0_hat: torch.Tensor, residual: torch.Tensor) -> None:
            if progress is not None:
                progress.advance(len(names))
            if record and (record_step(i) or i in shown):
                unit = to_unit(x0_hat, self.opt.metric_norm)
                for n, name in enumerate(names):
                    if record_step(i):
                        save_png(os.path.join(self.out_dir, "progress", name, f"x_{i:04d}.png"), unit[n])
                    if i in shown:
                        frames.setdefault(name, []).append((i, to_uint8_image(unit[n])))
        return callback

    def _measurement(self, indices: Sequence[int], images: Sequence[torch.Tensor]
                     ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(x (N, C, H, W), y) of a batch, with the physics set up for it. Normal runs measure the
        clean images (``Physics.measure``): image i's kernel or mask is drawn from (seed, i) (or
        is the config's fixed one), its noise from (seed, i). Measurement mode takes y
        (``images``) and the kernels or masks from the folder, and restricts y to what A can
        produce (inpainting: zeros at the missing pixels); x is the folder's ground truth
        (``label/``) or None without one."""
        seed, n = self.opt.seed, len(indices)
        if self.measured:
            set_params(self.physics, [self.dataset.params(i) for i in indices], (n, *self.dataset.image_shape))
            refs = [self.dataset.reference(i) for i in indices] if getattr(self.dataset, "has_references", False) \
                else None
            with torch.no_grad():
                return (None if refs is None else torch.stack(refs).to(self.device),
                        self.operator.project_measurement(torch.stack(images).to(self.device)))
        x = torch.stack(images).to(self.device)
        return x, measure(self.physics, x, indices, seed, self.fixed_params)

    def _residuals(self, y: torch.Tensor, x0: torch.Tensor, ok: Sequence[int]) -> dict[int, float | None]:
        """{n: ‖y_n − A x̂_n‖ / (σ_n √m_n)} for the images ``ok`` of the batch; m_n counts the
        entries of y that A measures (``physics.observed``: the nonzeros of A Aᵀ 1 for a linear A, all
        of them but inpainting's holes; all of them for a nonlinear A)."""
        if not ok:
            return {}
        with torch.no_grad():
            ax = self.physics.A(torch.where(torch.isfinite(x0), x0, torch.zeros_like(x0)))
            observed = self.physics.observed(y)
            values = data_fit_residual(y, ax, self.physics.sigma_n, observed)
        return {n: values[n] for n in ok}

    def _run_batch(self, indices: Sequence[int], desc: str) -> None:
        indices, images = self._load(indices)
        if not indices:
            return
        names = [image_name(i) for i in indices]
        x, y = self._measurement(indices, images)
        frames: dict[str, list] = {}
        result = restore(self.model, self.sampler, self.physics, self.solver, indices, self.opt.seed, x=x, y=y,
                         image_shape=self.dataset.image_shape if self.measured else None,
                         metric_norm=self.opt.metric_norm, callback=self._callback(names, frames),
                         desc=f"{desc} [{names[0]}..{names[-1]}]")
        seconds, x0, ok = result.seconds, result.x0, result.ok
        with torch.no_grad():
            shown = self.operator.display(y)
        scores: dict[int, tuple] = {}
        if x is not None and ok:
            p, s = result.psnr, result.ssim
            lp = self.lpips(x0[ok], x[ok], self.opt.metric_norm) if self.lpips else [None] * len(ok)
            scores = {n: (p[k], s[k], lp[k]) for k, n in enumerate(ok)}
        residuals = self._residuals(y, x0, ok)
        for n, name in enumerate(names):
            self._png("input", name, shown[n])
            if x is not None:
                self._png("label", name, x[n])
            save_npy(os.path.join(self.out_dir, "measurement", name + ".npy"),
                     y[n].detach().float().cpu().numpy())
            params = self.operator.params(n)
            if params is not None:
                save_npy(os.path.join(self.out_dir, "params", name + ".npy"), params)
            if frames.get(name):
                write_strip(os.path.join(self.out_dir, "progress", name + ".png"), frames[name])
            row = {"image": name, "seconds": f"{seconds:.3f}", "nfe": result.nfe}
            if n in residuals:
                self._png("recon", name, x0[n])
                rv = residuals[n]
                row.update(residual="" if rv is None else f"{rv:.4f}", status=STATUS_OK)
                if n in scores:
                    pv, sv, lv = scores[n]
                    row.update(psnr=f"{pv:.4f}", ssim=f"{sv:.6f}", lpips="" if lv is None else f"{lv:.6f}")
            else:
                k = result.diverged_at[n]
                row["status"] = f"diverged at step {k if k is not None else result.nfe}"
                log.warning("image %s diverged at step %s; no reconstruction saved", name, row["status"].split()[-1])
            self.rows[name] = self.new_rows[name] = row
            if n in residuals:
                fit = "" if residuals[n] is None else f"residual {residuals[n]:.3f}, "
                if n in scores:
                    log.info("image %s: PSNR %.2f dB, SSIM %.4f%s, %s%.2f s", name, scores[n][0], scores[n][1],
                             "" if scores[n][2] is None else f", LPIPS {scores[n][2]:.4f}", fit, seconds)
                else:
                    log.info("image %s: %s%.2f s", name, fit, seconds)

