"""A run remembers its config: `iter/config.yaml` (the effective config the run was
started with) and `iter/config-changes.json` (every change the user accepted).

Why: `make iter` without the `CONFIG=` a run was started with used to fall back to
config.yaml and carry on with its settings (another MTP level, other MD, even another
labeler), silently mixing two protocols in one run. Now a command without `--config` uses
the run's own config, and a config whose results-bearing keys differ from the recorded
one is refused with the differing keys listed, unless the user accepts the change
(`--change-config`, `make iter CHANGE_CONFIG=1`). An accepted change applies from the
first iteration not yet started (a started iteration keeps its frozen config), is written
at the top of that iteration's frozen config.yaml, and is listed by the report.

Resources never change results and may differ freely: the `slurm` section (read at every
submission by design), `run.jobs`, `run.max_iterations` and the engines' timeouts; so may
the `validation` section, whose folder keeps its own settings.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

import yaml

from smallcell.config import Config, dumped_source
from smallcell.errors import SmallcellError
from smallcell.state import RunPaths, atomic_write_json, atomic_write_text

RECORD = "config.yaml"
CHANGES = "config-changes.json"
# slurm: resources; validation: its folder records its own settings and a validation with
# other ones is moved aside (stages/validate.py), so the loop's results never depend on it;
# deepmd: read only by comparisons (`smallcell compare`), never by the loop
FREE_SECTIONS = ("slurm", "validation", "deepmd")
FREE_KEYS = ("run.jobs", "run.max_iterations")
DEFAULT = "config.yaml"


def record_path(paths: RunPaths) -> Path:
    return paths.iter_root / RECORD


def changes_path(paths: RunPaths) -> Path:
    return paths.iter_root / CHANGES


def resolve(root: Path, given: str | None) -> str:
    """The config file a command uses: the one given, else the file the run was started
    with (its recorded copy when that file is gone), else config.yaml."""
    if given is not None:
        return given
    record = record_path(RunPaths(root))
    if not record.exists():
        return DEFAULT
    source = dumped_source(record)
    return str(source) if source is not None and source.exists() else str(record)


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys of a nested mapping (lists are values: a changed list is one change)."""
    if not isinstance(data, dict):
        return {prefix: data}
    out: dict[str, Any] = {}
    for k, v in data.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _free(key: str) -> bool:
    return key.split(".", 1)[0] in FREE_SECTIONS or key in FREE_KEYS \
        or key.endswith(".timeout")


def differences(old: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Results-bearing keys whose values differ: {dotted key: (recorded, given)}."""
    a, b = _flat(old), _flat(new)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k) and not _free(k)}


def first_unstarted(paths: RunPaths) -> int:
    """The first iteration without a frozen config: where a changed config takes effect."""
    started = [i for i in paths.iterations() if (paths.it(i) / RECORD).exists()]
    return max(started) + 1 if started else 0


def pin(root: Path, cfg: Config, *, change: bool = False) -> dict[str, Any] | None:
    """Record `cfg` as the run's config on first use; refuse a config whose results-bearing
    keys differ from the recorded one unless `change` (then record the change and return
    it). Keys that may differ freely update the record silently."""
    paths = RunPaths(root)
    record = record_path(paths)
    _sweep(paths)
    text = cfg.dump()
    if not record.exists():
        atomic_write_text(record, text)
        return None
    old = yaml.safe_load(record.read_text(encoding="utf-8")) or {}
    diff = differences(old, yaml.safe_load(text))
    if not diff:
        if record.read_text(encoding="utf-8") != text:
            atomic_write_text(record, text)
        return None
    was = dumped_source(record) or record
    shown = "\n".join(f"  {k}: {show(a)} -> {show(b)}" for k, (a, b) in diff.items())
    if not change:
        raise SmallcellError(
            f"{cfg.source or 'the given config'}: differs from the config this run was "
            f"started with ({was}; recorded in {record}) in {len(diff)} key(s):\n{shown}\n"
            "Run without CONFIG= (--config) to go on with the run's own config, or accept "
            "the change with CHANGE_CONFIG=1 (--change-config): iterations from "
            f"{first_unstarted(paths)} on then use it, and the change is recorded in "
            f"{changes_path(paths)}, in that iteration's config.yaml and in the report.")
    entry = {"time": time.strftime("%Y-%m-%d %H:%M:%S"), "from_iteration": first_unstarted(paths),
             "previous": str(was), "config": str(cfg.source or ""),
             "changed": {k: [a, b] for k, (a, b) in diff.items()}}
    atomic_write_json(changes_path(paths), [*changes(paths), entry])
    atomic_write_text(record, text)
    return entry


def _sweep(paths: RunPaths) -> None:
    """The scratch of a record write cut short (`iter/.config.yaml.tmp.<pid>`); callers
    hold the run lock, so no other writer owns it."""
    names = (f".{RECORD}.tmp.", f".{CHANGES}.tmp.")
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(paths.iter_root):
            if entry.name.startswith(names) and entry.is_file():
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)


def changes(paths: RunPaths) -> list[dict[str, Any]]:
    """The accepted config changes, oldest first."""
    path = changes_path(paths)
    if not path.exists():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise SmallcellError(f"{path}: not valid JSON ({exc}); it lists the run's accepted "
                             "config changes") from None
    return data if isinstance(data, list) else []


def frozen_note(paths: RunPaths, i: int) -> str:
    """Comment lines for iteration i's frozen config: the changes that take effect there."""
    lines = []
    for c in changes(paths):
        if int(c.get("from_iteration", -1)) == i:
            lines.append(f"# config changed before this iteration ({c['time']}; was "
                         f"{c['previous']}):")
            lines += [f"#   {k}: {show(a)} -> {show(b)}" for k, (a, b) in c["changed"].items()]
    return "".join(line + "\n" for line in lines)


def forget(paths: RunPaths) -> None:
    """No iteration is left (clean-iter 0): the next `iter` starts a new run."""
    for path in (record_path(paths), changes_path(paths)):
        path.unlink(missing_ok=True)


def show(v: Any) -> str:
    """A config value as the user wrote it (strings bare, the rest as JSON)."""
    return v if isinstance(v, str) else json.dumps(v)
