"""Where a run's outputs go: ``<save_dir>/<task>/``, named after the task config file, so that
every pair of shipped configs can run one after another into the same ``--save_dir``."""
from __future__ import annotations

import os

#: The folder whose layout run folders mirror (configs/<DATASET>/<DDPM|DDIM>/<task>_config.yaml).
CONFIGS_DIR = "configs"


def task_name(task_config: str) -> str:
    """The run folder of a task config, relative to ``--save_dir``: its path below the last
    ``configs/`` folder, without ``_config`` and the extension, or the file name alone (without
    them) for a config elsewhere.

    >>> task_name("configs/MNIST/DDIM/super_resolution_x4_config.yaml")
    'MNIST/DDIM/super_resolution_x4'
    >>> task_name("/home/me/configs/FFHQ/DDPM/dps_inpainting_config.yaml")
    'FFHQ/DDPM/dps_inpainting'
    >>> task_name("my_tasks/deblur.yml")
    'deblur'
    """
    parts = os.path.normpath(os.path.abspath(task_config)).split(os.sep)
    stem = os.path.splitext(parts[-1])[0]
    if stem.endswith("_config") and len(stem) > len("_config"):
        stem = stem[:-len("_config")]
    folders = parts[:-1]
    below: list[str] = []
    if CONFIGS_DIR in folders:
        last = len(folders) - 1 - folders[::-1].index(CONFIGS_DIR)
        below = folders[last + 1:]
    return "/".join(below + [stem])


def run_dir(save_dir: str, task_config: str, measurement_dir: str | None = None) -> str:
    """``<save_dir>/<task_name>`` (see :func:`task_name`); in measurement mode
    ``<save_dir>/<task_name>_on_<name of measurement_dir>`` so that restoring a run's own output
    folder never writes into it.

    >>> run_dir("results", "configs/MNIST/DDIM/inpainting_config.yaml")
    'results/MNIST/DDIM/inpainting'
    >>> run_dir("results", "configs/MNIST/DDIM/inpainting_config.yaml", "photos/")
    'results/MNIST/DDIM/inpainting_on_photos'
    """
    name = task_name(task_config)
    if measurement_dir is not None:
        name += "_on_" + (os.path.basename(os.path.normpath(os.path.abspath(measurement_dir))) or "measurements")
    return os.path.join(save_dir, *name.split("/"))
