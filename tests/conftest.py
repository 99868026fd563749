"""Shared pytest fixtures: where the real-program fixture files live, the local Slurm;
and, at the end of every run, the skipped tests counted by reason."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: What to add to a skip reason that contains the key: how to run those tests.
HINTS = {
    "GPAW not installed": "`make test GPAW=1` installs it",
}
CONSENT = ("1", "y", "yes", "true")


def skip_reasons(reports) -> Counter[str]:
    """The reasons of skipped test reports (pytest's "Skipped: " prefix removed), counted."""
    counts: Counter[str] = Counter()
    for rep in reports:
        longrepr = getattr(rep, "longrepr", None)
        reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 \
            else str(longrepr)
        counts[reason.removeprefix("Skipped: ")] += 1
    return counts


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Last before the final count (after -ra's per-test lines): what was skipped and why,
    one line per reason with its count (a plain clone without ../shared/fixtures skips
    about a third of the suite)."""
    result = yield
    _skip_summary(terminalreporter)
    return result


def _skip_summary(terminalreporter) -> None:
    counts = skip_reasons(terminalreporter.stats.get("skipped", []))
    if not counts:
        return
    total = sum(counts.values())
    terminalreporter.section(f"{total} skipped, by reason", sep="-")
    for reason, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        hint = "; ".join(h for key, h in HINTS.items() if key in reason)
        terminalreporter.write_line(f"{n:6d}  {reason}" + (f" ({hint})" if hint else ""))


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

    Installs the Debian packages when missing and SMALLCELL_INSTALL_SLURM=1 says so (as
    root; skips otherwise, saying how to enable it), starts munged,
    slurmctld and slurmd with every file under one fresh /tmp/pytest-slurm-* dir (munged
    needs o+x on every ancestor, which pytest's 0700 tmp dirs lack), and stops them at the
    end of the session, also when tests fail. The dir is removed when no test failed, else
    kept for its logs. Use `slurm_cluster.env` (SLURM_CONF) or
    `slurm_cluster.subprocess_env()` for the environment of Slurm commands.
    """
    import shutil
    import tempfile

    from slurm_local import PACKAGES, LocalSlurm, SlurmUnavailable, missing_programs

    missing = missing_programs()
    if missing and os.environ.get("SMALLCELL_INSTALL_SLURM", "").lower() not in CONSENT:
        pytest.skip(f"Slurm not installed ({', '.join(missing)} missing): `make test SLURM=1` "
                    f"(or SMALLCELL_INSTALL_SLURM=1) installs {' '.join(PACKAGES)}")
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


@pytest.fixture
def fake_apt(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """apt-get and sudo that only log their arguments."""
    fake = tmp_path / "bin"
    fake.mkdir()
    log = tmp_path / "apt.log"
    (fake / "apt-get").write_text(f"#!/bin/sh\necho \"$@\" >> {log}\n")
    (fake / "sudo").write_text("#!/bin/sh\nexec \"$@\"\n")
    for exe in fake.iterdir():
        exe.chmod(0o755)
    return {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}"}, log
