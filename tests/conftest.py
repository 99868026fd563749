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
