"""Convert a dataset's old-layout MNIST configs (one file per method and task, each repeating the
task's data and measurement) into the composed layout (issue 22):

* ``configs/<dataset>/<DDIM|DDPM>/<task>_config.yaml``: the task (data + measurement) and its
  default method, ``conditioning: {method: CoDPS+, task: motion_deblur}``;
* ``configs/<dataset>/methods/<method>.yaml``: per method, its ``defaults`` (values shared by all
  its tasks) and per task its ``params``, ``tuned`` table, ``tuned_respacing`` and ``time_grid``
  (read by ``builder.compose_conditioning``; the tuner's ``--apply`` writes the tables).

Re-runnable: every old-layout file found (``<prefix>_<task>_config.yaml`` next to ``<task>_config.yaml``
with the same data and measurement, or a ``<task>_config.yaml`` whose conditioning still holds
params) replaces its method's entry for that task, and is then deleted (the base task config is
rewritten in place, its data and measurement text kept). So after merging a branch that adds or
changes old-layout configs (e.g. ``configs/MNIST/DDIM/mmps_motion_deblur_config.yaml``), run

    python -m tools.compose_configs configs/MNIST

and commit the result. ``--check`` lists what would change and exits 1 when anything would.
A file whose data or measurement differs from its task's, or whose method is not registered, is
left alone, with an error line (exit status 2)."""
from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Any

import yaml

from builder import slug, solver_class
from util.config import ConfigLoader, load_yaml

#: Keys of an old-layout conditioning block that move to the method file's task entry.
ENTRY_KEYS = ("params", "tuned", "tuned_respacing", "time_grid")
SAMPLINGS = ("DDIM", "DDPM")


def canonical(name: str) -> str:
    """The first registered name of method ``name`` (so aliases share one file)."""
    return solver_class(name).names[0]


def header_note(text: str) -> str:
    """The leading comment lines of a config file (without the ``#``), as one string."""
    out = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        body = line.lstrip("#").strip()
        if body.startswith(("Re-tuned on the tune digits", "python -m benchmarks.tune --apply (benchmarks",
                            "Measurement and data as")):
            continue
        out.append(body)
    return " ".join(out)


def _flow(value: Any) -> str:
    if isinstance(value, tuple):
        value = list(value)
    return yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=10_000,
                          allow_unicode=True).strip().removesuffix("...").strip()


def _steps(respacing: str) -> tuple:
    from guided_diffusion.respace import respacing_steps
    return (respacing_steps(respacing) or 0, str(respacing))


def render_methods_file(table: dict) -> str:
    """YAML text of a method table {method, sampling, defaults, tasks: {task: entry}} (one flow
    mapping per line, tuned entries sorted by step count)."""
    lines = [f"# {table['method']} on this dataset: its defaults and, per task, its parameters and the values tuned",
             "# by NFE budget (conditioning.tuned, keyed by timestep_respacing; written by python -m benchmarks.tune",
             "# --apply). Used when a task config names this method (task.conditioning.method or --method):",
             "# builder.compose_conditioning. Layout: docs/framework.md, \"Configs\".",
             f"method: {_flow(table['method'])}",
             f"sampling: {table['sampling']}  # the folder of the diffusion config it was tuned with",
             f"defaults: {_flow(table.get('defaults') or {})}",
             "tasks:"]
    for task, entry in table["tasks"].items():
        lines.append(f"  {task}:")
        if entry.get("note"):
            lines.append(f"    note: {_flow(entry['note'])}")
        for key in ("time_grid", "tuned_respacing"):
            if key in entry:
                lines.append(f"    {key}: {_flow(entry[key])}")
        lines.append(f"    params: {_flow(entry.get('params') or {})}")
        if entry.get("tuned"):
            lines.append("    tuned:")
            for resp in sorted(entry["tuned"], key=lambda r: _steps(str(r))):
                label = str(resp) if not str(resp)[:1].isdigit() else f'"{resp}"'
                lines.append(f"      {label}: {_flow(entry['tuned'][resp])}")
    return "\n".join(lines) + "\n"


def factor_defaults(table: dict) -> None:
    """Move the parameter values every task of ``table`` shares into ``defaults`` (in place;
    with one task, nothing moves). Entries' params are first expanded with the old defaults."""
    defaults = table.get("defaults") or {}
    tasks = table["tasks"]
    for entry in tasks.values():   # entries read from an old-layout file hold all their params already
        if not entry.pop("_full", False):
            entry["params"] = {**defaults, **(entry.get("params") or {})}
    if len(tasks) < 2:
        table["defaults"] = {}
        return
    first = next(iter(tasks.values()))["params"]
    shared = {k: v for k, v in first.items()
              if all(k in e["params"] and e["params"][k] == v and type(e["params"][k]) is type(v)
                     for e in tasks.values())}
    table["defaults"] = shared
    for entry in tasks.values():
        entry["params"] = {k: v for k, v in entry["params"].items() if k not in shared}


def task_config_text(old_text: str, method: str, task: str) -> str:
    """The composed task config made of an old-layout ``<task>_config.yaml``: a new header and a
    conditioning block naming ``method`` and ``task``; data and measurement kept verbatim."""
    lines = old_text.splitlines()
    start = next(i for i, ln in enumerate(lines) if re.match(r"^conditioning:\s*(#.*)?$", ln))
    end = next((i for i in range(start + 1, len(lines)) if lines[i] and not lines[i].startswith((" ", "#"))),
               len(lines))
    rest = lines[end:]   # the header comments (lines[:start]) describe the old method's values: dropped
    while rest and not rest[0].strip():
        rest.pop(0)
    head = [f"# MNIST task {task}: data and measurement. The method's values come from ../methods/<method>.yaml,",
            f"# entry {task} (switch with task.conditioning.method=DDRM or --method DDRM; docs/framework.md, \"Configs\").",
            "conditioning:",
            f"  method: {_flow(method)}  # the default method",
            f"  task: {task}",
            ""]
    return "\n".join(head + rest) + "\n"


def convert(dataset_dir: str, dry_run: bool = False, errors: list | None = None) -> list[str]:
    """Convert every old-layout task config under ``dataset_dir`` (e.g. ``configs/MNIST``); returns
    the actions taken (or, with ``dry_run``, those that would be). Files that cannot be converted
    (another data / measurement than their task's, an unregistered method) are left alone; their
    one-line errors are printed and appended to ``errors``."""
    methods_dir = os.path.join(dataset_dir, "methods")
    tables: dict[str, dict] = {}
    if os.path.isdir(methods_dir):
        for name in sorted(os.listdir(methods_dir)):
            if name.endswith(".yaml"):
                t = load_yaml(os.path.join(methods_dir, name), "method table")
                tables[canonical(t["method"])] = t
    actions, delete, rewrite = [], [], {}
    errors = [] if errors is None else errors
    for sampling in SAMPLINGS:
        folder = os.path.join(dataset_dir, sampling)
        if not os.path.isdir(folder):
            continue
        stems = sorted(n[:-len("_config.yaml")] for n in os.listdir(folder)
                       if n.endswith("_config.yaml") and n not in ("model_config.yaml", "diffusion_config.yaml"))
        bases = [s for s in stems if not any(s.endswith("_" + b) for b in stems if b != s)]
        for stem in stems:
            path = os.path.join(folder, f"{stem}_config.yaml")
            with open(path, encoding="utf-8") as f:
                text = f.read()
            cfg = yaml.load(text, Loader=ConfigLoader) or {}
            cond = cfg.get("conditioning") or {}
            if stem in bases:
                task = stem
                if "task" in cond:
                    continue   # already composed
            else:
                task = max((b for b in bases if stem.endswith("_" + b)), key=len)
                base = load_yaml(os.path.join(folder, f"{task}_config.yaml"))
                if base.get("data") != cfg.get("data") or base.get("measurement") != cfg.get("measurement"):
                    errors.append(f"error: {path}: data / measurement differ from {task}_config.yaml; not converted")
                    continue
            try:
                method = canonical(cond["method"])
            except (KeyError, ValueError) as exc:
                errors.append(f"error: {path}: {' '.join(str(exc).split())}; not converted (register the method first)")
                continue
            table = tables.setdefault(method, {"method": method, "sampling": sampling, "defaults": {}, "tasks": {}})
            table.setdefault("tasks", {})
            entry = {k: cond[k] for k in ENTRY_KEYS if k in cond}
            note = header_note(text)
            if note:
                entry["note"] = note
            entry["params"] = dict(entry.get("params") or {})
            entry["_full"] = True
            table["tasks"][task] = entry
            table["tasks"] = dict(sorted(table["tasks"].items()))
            actions.append(f"{os.path.relpath(path)} -> {os.path.join(os.path.relpath(methods_dir), slug(method))}.yaml "
                           f"[{task}]")
            if stem in bases:
                rewrite[path] = task_config_text(text, cond["method"], task)
            else:
                delete.append(path)
    for e in errors:
        print(e, file=sys.stderr)
    if dry_run or not actions:
        return actions
    os.makedirs(methods_dir, exist_ok=True)
    for method, table in tables.items():
        factor_defaults(table)   # expand every older entry with the current defaults, then re-factor
        new = render_methods_file(table)
        check = yaml.load(new, Loader=ConfigLoader)
        assert check["tasks"].keys() == table["tasks"].keys()
        _atomic_write(os.path.join(methods_dir, f"{slug(method)}.yaml"), new)
    for path, text in rewrite.items():
        _atomic_write(path, text)
    for path in delete:
        os.remove(path)
    return actions


def _atomic_write(path: str, text: str) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m tools.compose_configs configs/MNIST [--check]``."""
    p = argparse.ArgumentParser(prog="python -m tools.compose_configs", description=__doc__.split("\n\n")[0])
    p.add_argument("dataset_dir", nargs="?", default="configs/MNIST")
    p.add_argument("--check", action="store_true", help="only list what would change (exit 1 if anything)")
    a = p.parse_args(argv)
    if not os.path.isdir(a.dataset_dir):
        print(f"error: {a.dataset_dir} is not a folder (e.g. configs/MNIST)", file=sys.stderr)
        return 2
    errors: list[str] = []
    actions = convert(a.dataset_dir, dry_run=a.check, errors=errors)
    for line in actions:
        print(line)
    print(f"{len(actions)} old-layout config(s) {'to convert' if a.check else 'converted'}"
          + (f"; {len(errors)} left as they are (errors above)" if errors else ""))
    return 2 if errors else (1 if a.check and actions else 0)


if __name__ == "__main__":
    raise SystemExit(main())
