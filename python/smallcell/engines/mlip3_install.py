"""Where `make setup EXTRAS=mlip3` (bin/build-mlip3) installed MLIP-3, for a config that
names neither `mlip3.mlp` nor an MTP template folder.

The build's prefix is, in this order: $SMALLCELL_MLIP3_PREFIX (empty or "none": look for
no build at all), the folder named in <repo>/.mlip3-prefix (written by `make setup
EXTRAS=mlip3`, which may have been given MLIP3_PREFIX=), else <repo>/.mlip3. A prefix
holds a build when its manifest.json (written last by the build) reads and names an
executable mlp. Imports nothing of smallcell: config.py asks it while loading a config.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[3]
DEFAULT_PREFIX = ".mlip3"
RECORD = ".mlip3-prefix"
ENV = "SMALLCELL_MLIP3_PREFIX"


@dataclass(frozen=True)
class InstalledMlip3:
    """One build: the serial mlp, the MPI one if built, the source's MTP_templates."""

    prefix: Path
    mlp: Path
    mlp_mpi: Path | None
    templates_dir: Path | None
    manifest: dict[str, Any] = field(repr=False, compare=False)


def mlip3_prefix(repo_root: Path | None = None) -> Path | None:
    """The folder a build is looked for in (see the module's text); None when
    $SMALLCELL_MLIP3_PREFIX switches the lookup off."""
    repo = Path(repo_root) if repo_root is not None else REPO
    if ENV in os.environ:
        value = os.environ[ENV].strip()
        return None if value.lower() in ("", "none") else Path(value).expanduser()
    try:
        named = (repo / RECORD).read_text(encoding="utf-8").strip()
    except OSError:
        named = ""
    return Path(named).expanduser() if named else repo / DEFAULT_PREFIX


def installed_mlip3(repo_root: Path | None = None) -> InstalledMlip3 | None:
    """The MLIP-3 build of this smallcell (`repo_root`, default: the clone this module
    belongs to), or None when there is none."""
    prefix = mlip3_prefix(repo_root)
    return None if prefix is None else read_build(prefix)


def read_build(prefix: Path) -> InstalledMlip3 | None:
    """The build bin/build-mlip3 installed in `prefix`, or None when it holds none (no
    readable manifest.json, or no executable mlp): the tests take their real mlp from
    here too."""
    prefix = Path(prefix)
    try:
        manifest = json.loads((prefix / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict):
        return None

    def path(key: str, default: str | None) -> Path | None:
        rel = manifest.get(key, default)
        return prefix / rel if isinstance(rel, str) and rel else None

    mlp = path("mlp", "bin/mlp")
    if mlp is None or not mlp.is_file() or not os.access(mlp, os.X_OK):
        return None
    mpi = path("mlp_mpi", None)
    templates = path("templates_dir", "MTP_templates")
    return InstalledMlip3(
        prefix=prefix.resolve(), mlp=mlp.resolve(),
        mlp_mpi=mpi.resolve() if mpi is not None and mpi.is_file() else None,
        templates_dir=templates.resolve() if templates is not None and templates.is_dir()
        else None,
        manifest=manifest)
