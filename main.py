"""Solve an imaging inverse problem y = A x + n over a set of test images with a diffusion prior
(CoDPS / CoDPS+ / DPS), from a model, a diffusion and a task YAML config:

    python main.py --model_config configs/FFHQ/DDIM/model_config.yaml \\
        --diffusion_config configs/FFHQ/DDIM/diffusion_config.yaml \\
        --task_config configs/FFHQ/DDIM/motion_deblur_config.yaml --save_dir results/ffhq \\
        task.conditioning.params.scale=0.1 diffusion.timestep_respacing=ddim50

Trailing ``section.key=value`` pairs override config entries (sections: model, diffusion, task).
Outputs go to ``<save_dir>/<task>/`` named after the task config (``util.layout``), with a
``grid.png`` of the run. ``--measurement_dir DIR`` restores measurements that are already
degraded (``DIR/measurement/<name>.npy|png|jpg`` and, for per-image kernels or masks,
``DIR/params/<name>.npy``; a run's own output folder is such a DIR), see docs/restore.md.
Bad input (a missing config, an unknown name or key, a missing checkpoint, an empty data folder,
...) prints one line on stderr and exits with status 2, as does an output folder that another
run holds (a lock) or that cannot be written (a full disk, a read-only path); a run in which no
image succeeded exits with 1; an interrupted run exits with 130 (143 for SIGTERM) and resumes
when re-run.

Several processes (GPUs, or CPU processes with gloo) split the images, image i going to rank i mod K:

    torchrun --nproc_per_node=K main.py ...     (same arguments; --device cuda or auto on GPUs)
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
#: A run that finished with no successful image (all unreadable or all diverged).
EXIT_NO_IMAGE = 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line; ``args.overrides`` holds the trailing ``section.key=value`` pairs."""
    parser = argparse.ArgumentParser(
        description="Diffusion posterior sampling (CoDPS / CoDPS+ / DPS) for imaging inverse problems.",
        epilog="Overrides: trailing section.key=value pairs, e.g. task.conditioning.params.scale=0.1 "
               "diffusion.timestep_respacing=ddim50 model.model_path=ckpts/x.pt (values parse as YAML; "
               "1e3 is a number).")
    parser.add_argument("--model_config", required=True, help="model YAML (UNet architecture and model_path)")
    parser.add_argument("--diffusion_config", required=True, help="diffusion YAML (sampler, schedule, respacing)")
    parser.add_argument("--task_config", required=True, help="task YAML (conditioning, data, measurement)")
    parser.add_argument("--save_dir", default="./results",
                        help="outputs go to <save_dir>/<task>/, <task> = the task config's path below configs/ "
                             "without _config.yaml (e.g. MNIST/DDIM/super_resolution_x4)")
    parser.add_argument("--measurement_dir", default=None, metavar="DIR",
                        help="restore the measurements in DIR (measurement/<name>.npy or .png/.jpg, and "
                             "params/<name>.npy kernels or masks; a run's output folder works) instead of "
                             "degrading task.data; outputs go to <save_dir>/<task>_on_<DIR name>/")
    parser.add_argument("--seed", type=int, default=22, help="image i uses generators seeded by (seed, i)")
    parser.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda or cuda:N")
    parser.add_argument("--gpu", type=int, default=None, help="GPU index, as in the paper's code (= --device cuda:N)")
    parser.add_argument("--batch_size", type=int, default=1,
                        help="images sampled together (each image keeps its own random streams; CoDPS / CoDPS+ "
                             "results agree to ~1e-6, DPS / PiGDM ones may move by a few tenths of a dB: see "
                             "docs/cli.md)")
    parser.add_argument("--num_images", type=int, default=None,
                        help="the first N images of the data (default all; more than there are: a warning)")
    parser.add_argument("--record", action="store_true",
                        help="save x0_hat every 10 steps and every step below 10 to progress/<image>/, and a "
                             "strip of them as progress/<image>.png")
    parser.add_argument("--overwrite", action="store_true",
                        help="start save_dir afresh: delete the outputs of the earlier run there and redo every image")
    parser.add_argument("--metric_norm", choices=("clip", "minmax"), default="clip",
                        help="map images to [0, 1] for PSNR/SSIM/LPIPS and PNGs: clip (x+1)/2 (default) or minmax "
                             "per-image stretch (the paper's code)")
    parser.add_argument("--dist_timeout", type=float, default=None,
                        help="under torchrun: seconds a process waits for the others at start-up before giving "
                             "up (default 1800)")
    parser.add_argument("--method", default=None, metavar="NAME",
                        help="run this method on the task (= task.conditioning.method=NAME): its values for this "
                             "task and step budget come from configs/<dataset>/methods/<method>.yaml (docs/cli.md)")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="CPU threads of torch (default: OMP_NUM_THREADS if set, else the idle cores, at "
                             "least 1: util/threads.py); recorded in summary.json")
    parser.add_argument("--reprobe", action="store_true",
                        help="measure the network's precision / layout speeds again instead of reading the probe's "
                             "cache (it is also re-measured when the threads differ or the cached timings were "
                             "taken under load: docs/speed.md)")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides")
    args = parser.parse_intermixed_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


class BadInput(Exception):
    """A user error found before or while setting up the run (printed as one line, exit 2)."""


def wants_cuda(device: str, gpu: int | None) -> bool:
    """Whether ``--device`` / ``--gpu`` ask for a GPU (auto: when CUDA is available)."""
    import torch
    if device == "auto":
        return torch.cuda.is_available()
    return device.startswith("cuda")


def resolve_device(device: str, gpu: int | None, local_rank: int | None = None) -> "torch.device":
    """The torch device for ``--device`` / ``--gpu``. "auto" is cuda (``cuda:<gpu>``) when
    available, else cpu. Under torchrun (``local_rank`` given) a GPU run uses ``cuda:<local_rank>``
    and an explicit GPU index is refused. Raises BadInput for an unusable device."""
    import torch
    if local_rank is not None:
        if gpu is not None or (device.startswith("cuda:")):
            raise BadInput("under torchrun, use --device cuda (or auto): process r takes the GPU cuda:LOCAL_RANK; "
                           "choose GPUs with CUDA_VISIBLE_DEVICES")
        dev = resolve_device(device, None)
        if dev.type == "cuda":
            if local_rank >= torch.cuda.device_count():
                raise BadInput(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPU(s) visible; "
                               "use --nproc_per_node <= the number of GPUs")
            return torch.device("cuda", local_rank)
        return dev
    if gpu is not None and device == "auto":
        device = f"cuda:{gpu}"
        if not torch.cuda.is_available():
            logging.getLogger("codps").warning("--gpu %d given but CUDA is not available; using the CPU", gpu)
            device = "cpu"
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise BadInput(f"--device {device!r} is not a device (use auto, cpu, cuda or cuda:N)") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise BadInput(f"--device {device}: CUDA is not available here (use --device cpu)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise BadInput(f"--device {device}: only {torch.cuda.device_count()} GPU(s) visible")
    return dev


def versions() -> dict:
    """Versions of Python and the libraries that determine the results."""
    import numpy
    import skimage
    import torch
    import torchvision
    out = {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
           "numpy": numpy.__version__, "scikit-image": skimage.__version__}
    try:
        from importlib.metadata import PackageNotFoundError, version
        out["lpips"] = version("lpips")
    except (ImportError, PackageNotFoundError):
        out["lpips"] = None
    if torch.cuda.is_available():
        out["cuda"] = torch.version.cuda
    return out


def _json_normalized(obj):
    from util.image_io import _json_safe
    return json.loads(json.dumps(_json_safe(obj)))


def setup(args: argparse.Namespace, local_rank: int | None = None):
    """Load and check everything from the arguments; returns (configs as resolved, applied
    overrides, device, problem); ``problem.spec`` is the run's :class:`builder.RunSpec`.
    ``local_rank``: this process's GPU index under torchrun (None: one process). Raises BadInput
    (or the config / data / component errors) on bad input."""
    from builder import build_problem, build_spec, diffusion_config_keys, model_config_keys
    from guided_diffusion.unet import resolve_channels_last
    from util.config import apply_overrides, load_yaml
    for flag in ("batch_size", "num_images", "threads"):
        value = getattr(args, flag, None)
        if value is not None and value <= 0:
            raise BadInput(f"--{flag} must be a positive integer, got {value}")
    from util.seeding import check_seed
    check_seed(args.seed)   # names --seed and the valid range (ValueError: one line, exit 2)
    configs = {"model": load_yaml(args.model_config, "model config"),
               "diffusion": load_yaml(args.diffusion_config, "diffusion config"),
               "task": load_yaml(args.task_config, "task config")}
    original_method = (configs["task"].get("conditioning") or {}).get("method") \
        if isinstance(configs["task"].get("conditioning"), dict) else None
    overrides = list(args.overrides)
    if getattr(args, "method", None):   # --method M = task.conditioning.method=M (an explicit override wins)
        overrides.insert(0, f"task.conditioning.method={args.method}")
    configs, applied = apply_overrides(configs, overrides,
                                       {"model": model_config_keys(all_kinds=True), "diffusion": diffusion_config_keys()})
    task_overrides = [k for k in applied if k.startswith("task.")]
    where = args.task_config + (f" (with command-line override {', '.join(task_overrides)})" if task_overrides else "")
    from util.metrics import metrics_options
    metrics_options(configs["task"].get("metrics"), args.task_config)   # a bad metrics.lpips_net fails now
    from priors import prior_class
    valid = model_config_keys(configs["model"])
    unknown = sorted(set(configs["model"]) - set(valid))
    if unknown:
        kind = prior_class(configs["model"]).kind
        raise BadInput(f"model config: unknown key(s) {unknown}{'' if kind == 'guided_diffusion' else ' for kind ' + kind}; "
                       f"valid keys: {', '.join(valid)}")
    device = resolve_device(args.device, args.gpu, local_rank)
    threads = apply_threads(getattr(args, "threads", None))
    if getattr(args, "reprobe", False):
        os.environ["CODPS_REPROBE"] = "1"   # read by guided_diffusion.precision when the model is built
    # The one resolution: layout checked, method's table composed, time grid and tuned values applied.
    spec = build_spec(configs, applied, args.task_config, original_method, device, threads, where)
    resolve_channels_last(spec.model.get("channels_last", "auto"), device)   # a bad value fails now
    cond = [k for k in task_overrides if k.startswith("task.conditioning.")]   # named in a bad method's error
    problem = build_problem(spec, device, args.seed, getattr(args, "measurement_dir", None),
                            args.task_config + (f" (with command-line override {', '.join(cond)})" if cond else ""))
    configs = spec.configs
    return configs, applied, device, problem


def apply_threads(threads: int | None) -> int:
    """Set torch's intra-op threads to ``threads`` (None: :func:`util.threads.default_threads`)
    and return the number set."""
    import torch
    from util.threads import default_threads
    n = default_threads() if threads is None else int(threads)
    torch.set_num_threads(n)
    return n


def main(argv: list[str] | None = None) -> int:
    """Run the command-line job; returns the exit status (0; 1 no image succeeded; 2 bad input,
    a locked or unwritable output folder; 130 interrupted; 143 terminated by SIGTERM).

    Under torchrun every process returns the same status for bad input (any process's error
    stops all of them; only rank 0 prints it) and rank 0 prints the final line."""
    args = parse_args(argv)
    from util.logger import setup_logging
    log = setup_logging()

    from data.dataloader import DataError
    from util import distributed
    from util.config import ConfigError
    bad_input = (BadInput, ConfigError, DataError, ValueError, TypeError, FileNotFoundError, PermissionError)
    ctx = distributed.SINGLE

    def one_line(exc: BaseException) -> str:
        msg = " ".join(str(exc).split()) or type(exc).__name__
        if isinstance(exc, FileNotFoundError) and exc.filename and str(exc.filename) not in msg:
            msg = f"{msg}: {exc.filename}"
        return msg

    def fail(msg: str) -> int:
        if ctx.is_main:
            print(f"error: {msg}", file=sys.stderr)
        return EXIT_BAD_INPUT

    try:
        timeout = distributed.DEFAULT_TIMEOUT_S if args.dist_timeout is None else args.dist_timeout
        ctx = distributed.init(wants_cuda(args.device, args.gpu), timeout)
    except (ValueError, distributed.DistributedError) as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if ctx.enabled:
        setup_logging(tag=ctx.tag())
    from contextlib import ExitStack

    from util.signals import sigterm_as_interrupt
    try:   # the stack holds the output folder's lock until the run ends, however it ends
        with sigterm_as_interrupt(), ExitStack() as held:
            return _run(args, ctx, log, bad_input, one_line, fail, held)
    finally:
        ctx.close()


def _run(args, ctx, log, bad_input, one_line, fail, held) -> int:
    """The body of :func:`main` once the process group (if any) is joined; rank 0 enters the
    output folder's lock into the ExitStack ``held`` before the model loads."""
    from util.distributed import DistributedError, PeerFailed
    from util.outdir import OutputFolderError, OutputLock, describe_os_error
    from util.signals import exit_status
    error = None
    try:
        configs, applied, device, problem = setup(args, ctx.local_rank if ctx.enabled else None)
        import torch
        from builder import build_prior, resolved_config, warn_random_weights
        from runner import RunConflict, RunOptions, Runner, check_compatible, final_line
        from util.metrics import LPIPSMetric, metrics_options
        from util.layout import run_dir
        out_dir = run_dir(args.save_dir, run_name(args.task_config, problem.spec), args.measurement_dir)
        measured = None if args.measurement_dir is None else os.path.abspath(args.measurement_dir)
        if measured is not None and os.path.abspath(out_dir) == measured:
            raise BadInput(f"--measurement_dir {args.measurement_dir} is the output folder itself; use another "
                           "--save_dir")
        info = {"configs": _json_normalized(configs), "overrides": _json_normalized(applied),
                "device": str(device), "versions": versions(), "command": sys.argv[:1] + (argv_of(args)),
                "measurement_dir": measured,
                "resolved": _json_normalized(resolved_config(configs, problem, device)),   # defaults included
                "spec": _json_normalized(problem.spec.to_json()), "threads": problem.spec.threads}
        options = RunOptions(seed=args.seed, batch_size=args.batch_size, num_images=args.num_images,
                             record=args.record, overwrite=args.overwrite, metric_norm=args.metric_norm,
                             progress=ctx.is_main, checked=True)   # check_compatible below, once
        if ctx.is_main:   # one run at a time in a folder (OutputFolderError names the holder)
            held.enter_context(OutputLock(out_dir))
        if not args.overwrite:   # fail before the model loads
            check_compatible(out_dir, {"configs": info["configs"], "seed": args.seed, "metric_norm": args.metric_norm,
                                       "measurement_dir": measured})
        torch.manual_seed(args.seed)   # random-weight models (model_path "") are reproducible too
        model = build_prior(configs["model"], device)   # a priors.Prior (model.kind)
        if ctx.is_main and getattr(model, "kind", "") == "guided_diffusion":
            warn_random_weights(configs["model"])
    except KeyboardInterrupt as exc:   # Ctrl-C (130) or SIGTERM (143)
        print("interrupted" if exit_status(exc) == EXIT_INTERRUPTED else "terminated (SIGTERM)", file=sys.stderr)
        return exit_status(exc)
    except bad_input + (OutputFolderError,) as exc:
        error = one_line(exc)
    try:
        failed = ctx.agree(error)
    except DistributedError as exc:
        return fail(one_line(exc))
    if failed:
        rank, msg = failed[0]
        return fail(msg if rank == 0 or not ctx.enabled else f"process {rank}: {msg}")

    n_images = len(problem.dataset) if args.num_images is None else min(len(problem.dataset), args.num_images)
    log.info("device %s; operator %s, noise sigma %s (on [-1, 1]), solver %s, %d %s steps (%s); %d images in %s%s",
             device, problem.operator.name, getattr(problem.noiser, "sigma", None),
             configs["task"]["conditioning"]["method"], problem.sampler.num_timesteps,
             configs["diffusion"].get("sampler", "ddpm"), configs["diffusion"].get("timestep_respacing") or "no respacing",
             n_images,
             configs["task"]["data"]["root"] if args.measurement_dir is None
             else f"measurements of {args.measurement_dir}",
             f"; {ctx.world_size} processes" if ctx.enabled else "")
    torch.backends.cudnn.benchmark = False
    scored = args.measurement_dir is None or getattr(problem.dataset, "has_references", False)   # ground truth?
    runner = Runner(model, problem.sampler, problem.operator, problem.noiser, problem.solver, problem.dataset,
                    out_dir, options, info, device=device, lpips_metric=LPIPSMetric(
                        device, metrics_options(configs["task"].get("metrics"))["lpips_net"]) if scored else None,
                    dist=ctx, fixed_params=problem.fixed_params, physics=problem.physics)
    where = f"process {ctx.rank}: " if ctx.enabled and not ctx.is_main else ""
    try:
        result = runner.run()
    except KeyboardInterrupt as exc:   # Ctrl-C (130) or SIGTERM (143)
        what = "interrupted" if exit_status(exc) == EXIT_INTERRUPTED else "terminated (SIGTERM)"
        print(f"{what}; finished images are saved in {out_dir}; run the same command again to resume",
              file=sys.stderr)
        return exit_status(exc)
    except PeerFailed:   # rank 0 printed why
        return EXIT_BAD_INPUT
    except RunConflict as exc:
        print(f"error: {where}{one_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except DistributedError as exc:
        print(f"error: process {ctx.rank}: {one_line(exc)}", file=sys.stderr)
        return 1
    except OSError as exc:   # the output side: unwritable folder, full disk (every file is written atomically)
        print(f"error: {where}{describe_os_error(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if ctx.is_main:
        print(final_line(result.summary), flush=True)
        log.info("outputs in %s (grid.png, metrics.csv, summary.json)", out_dir)
        counts = result.summary["counts"]
        if result.summary["num_images"] and not counts["ok"]:
            print(f"error: no image succeeded ({counts['diverged']} diverged, {counts['unreadable']} unreadable); "
                  f"see {os.path.join(out_dir, 'summary.json')}", file=sys.stderr)
            return EXIT_NO_IMAGE
    return 0


def run_name(task_config: str, spec) -> str:
    """The task config path that names the run folder (``util.layout.run_dir``): the task config
    itself, or, when another method than the config's own runs (``--method``), the sibling name
    ``<method>_<task>_config.yaml`` (``dps_inpainting``: where the old per-method config ran)."""
    import re
    from builder import _other_method
    if spec.task_method and _other_method(spec.method, spec.task_method):
        folder, base = os.path.split(task_config)
        prefix = re.sub(r"[^a-z0-9+]", "", spec.method.lower()).replace("+", "_plus")   # RED-diff -> reddiff
        return os.path.join(folder, f"{prefix}_{base}")
    return task_config


def argv_of(args: argparse.Namespace) -> list[str]:
    """The command-line arguments of this run (as given), for summary.json."""
    return list(getattr(args, "argv", None) or sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
