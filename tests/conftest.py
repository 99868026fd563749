"""Shared pytest fixtures: where the real-program fixture files live."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _fixtures_root() -> Path:
    env = os.environ.get("SMALLCELL_FIXTURES")
    return Path(env) if env else REPO.parent / "shared" / "fixtures"


@pytest.fixture(scope="session")
def fixtures() -> Path:
    """The shared fixture tree (real VASP, MLIP-3 and LAMMPS files); skip when absent."""
    root = _fixtures_root()
    if not root.is_dir():
        pytest.skip(
            f"shared fixtures not found at {root} (set SMALLCELL_FIXTURES to the "
            "shared/fixtures folder to run the conformance tests)"
        )
    return root


@pytest.fixture(scope="session")
def slurm_cluster(request: pytest.FixtureRequest):
    """One real single-node Slurm (tests/slurm_local.py) for the whole session.

    Installs the Debian packages when missing (as root; skips otherwise), starts munged,
    slurmctld and slurmd with every file under one fresh /tmp/pytest-slurm-* dir (munged
    needs o+x on every ancestor, which pytest's 0700 tmp dirs lack), and stops them at the
    end of the session, also when tests fail. The dir is removed when no test failed, else
    kept for its logs. Use `slurm_cluster.env` (SLURM_CONF) or
    `slurm_cluster.subprocess_env()` for the environment of Slurm commands.
    """
    import shutil
    import tempfile

    from slurm_local import LocalSlurm, SlurmUnavailable

    root = Path(tempfile.mkdtemp(prefix="pytest-slurm-"))
    cluster = LocalSlurm(root)

    def finish() -> None:
        cluster.stop()
        if request.session.testsfailed == 0:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"\nslurm_cluster: logs kept in {root}/log and {root}/munge")

    request.addfinalizer(finish)
    try:
        cluster.start()
    except SlurmUnavailable as exc:
        pytest.skip(str(exc))
    return cluster
