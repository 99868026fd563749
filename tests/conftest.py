"""Shared pytest fixtures: where the real-program fixture files live, the local Slurm, the
real MLIP-3 `mlp` (built once per machine from ../shared/vendor); and, at the end of every
run, the skipped tests counted by reason."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:  # imported where used: tests/test_test_setup.py runs this file alone
    from smallcell.engines.mlip3_install import InstalledMlip3

REPO = Path(__file__).resolve().parents[1]
#: What to add to a skip reason that contains the key: how to run those tests.
HINTS = {
    "GPAW not installed": "`make test GPAW=1` installs it",
    "DeePMD-kit not installed": "`make test DEEPMD=1` installs it",
}
CONSENT = ("1", "y", "yes", "true")
#: The MLIP-3 source the real-mlp tests build (SMALLCELL_MLIP3_SOURCE overrides it).
MLIP3_VENDOR = REPO.parent / "shared" / "vendor" / "mlip-3-7fe598d.tar.gz"
MLIP3_TOOLS = ("gcc", "g++", "gfortran", "make")
#: Set (to 1) in CI: a real mlp that cannot be had fails the tests instead of skipping them.
REQUIRE_MLIP3 = "SMALLCELL_REQUIRE_MLIP3"


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


# ------------------------------------------------------------------ the real MLIP-3 mlp


def _mlip3_unavailable(why: str) -> None:
    """Skip, saying why and what fixes it; fail instead when SMALLCELL_REQUIRE_MLIP3 is set
    (CI: a real mlp that cannot be built must not pass by skipping)."""
    if os.environ.get(REQUIRE_MLIP3, "").lower() in CONSENT:
        pytest.fail(f"{REQUIRE_MLIP3} is set but {why}", pytrace=False)
    pytest.skip(why)


def mlip3_source() -> Path:
    """The MLIP-3 source to build ($SMALLCELL_MLIP3_SOURCE, else the vendor tarball);
    skips (fails under SMALLCELL_REQUIRE_MLIP3) when it or the compilers are missing."""
    path = Path(os.environ.get("SMALLCELL_MLIP3_SOURCE") or MLIP3_VENDOR)
    if not path.exists():
        _mlip3_unavailable(f"MLIP-3 source not found at {path} (set SMALLCELL_MLIP3_SOURCE "
                           "to mlip-3-7fe598d.tar.gz or an MLIP-3 source folder)")
    missing = [t for t in MLIP3_TOOLS if shutil.which(t) is None]
    if missing:
        _mlip3_unavailable(f"MLIP-3 not built: {', '.join(missing)} not installed (`make "
                           "test MLIP3=1` installs the compilers, `make setup EXTRAS=mlip3` "
                           "builds it)")
    return path


@pytest.fixture(scope="session")
def vendor_source() -> Path:
    """The MLIP-3 source the real build tests compile (see mlip3_source)."""
    return mlip3_source()


@pytest.fixture(scope="session")
def real_mlp(tmp_path_factory: pytest.TempPathFactory) -> InstalledMlip3:
    """The real MLIP-3 (see find_real_mlp)."""
    return find_real_mlp(tmp_path_factory)


def find_real_mlp(tmp_path_factory: pytest.TempPathFactory) -> InstalledMlip3:
    """The real MLIP-3: the build $SMALLCELL_MLIP3_PREFIX names, else the clone's own
    build (`make setup EXTRAS=mlip3`: what a user's tests should run), else one made by
    bin/build-mlip3 from mlip3_source() into a fresh prefix of this session (never the
    clone's .mlip3/). The build itself is cached outside the clone ($MLIP3_CACHE, else
    ~/.cache/smallcell/mlip3/<archive hash>/{serial,mpi}/): the first session on a machine
    compiles it (serial, plus mlp_mpi when mpicxx works; required under
    SMALLCELL_REQUIRE_MLIP3), later ones only copy it (about a second).

    Skips when the source or the compilers are missing, saying how to get them; a build
    that fails fails the tests (its log's tail in the message) whatever the setting."""
    from smallcell.engines import mlip3_install

    given = os.environ.get("SMALLCELL_MLIP3_PREFIX", "").strip()
    if given and given.lower() != "none":
        build = mlip3_install.read_build(Path(given).expanduser())
        if build is not None:
            return build
    elif not given:
        build = mlip3_install.installed_mlip3()
        if build is not None:
            return build
    source = mlip3_source()
    prefix = tmp_path_factory.mktemp("mlip3") / "prefix"
    require = os.environ.get(REQUIRE_MLIP3, "").lower() in CONSENT
    env = {k: v for k, v in os.environ.items() if k not in ("MLIP3_REF", "MLIP3_PREFIX",
                                                            "MLIP3_SOURCE", "MLIP3_MPI")}
    argv = [sys.executable, str(REPO / "bin" / "build-mlip3"), "--source", str(source),
            "--prefix", str(prefix), "--mpi", "1" if require else "auto"]
    try:
        res = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=3600,
                             check=False)
    except subprocess.TimeoutExpired:
        pytest.fail(f"building MLIP-3 took more than an hour: {' '.join(argv)}",
                    pytrace=False)
    build = mlip3_install.read_build(prefix) if res.returncode == 0 else None
    if build is None:
        tail = "\n".join((res.stdout + res.stderr).strip().splitlines()[-25:])
        pytest.fail(f"building the real MLIP-3 failed (exit status {res.returncode}): "
                    f"{' '.join(argv)}\n{tail}", pytrace=False)
    return build


@pytest.fixture(scope="session")
def real_mpirun(real_mlp: InstalledMlip3) -> list[str]:
    """The argv that runs the real mlp_mpi on 2 MPI ranks (Open MPI's mpirun: as root it
    needs --allow-run-as-root, and --oversubscribe lets 2 ranks run on 1 core). Skips
    (fails under SMALLCELL_REQUIRE_MLIP3) without an MPI build or mpirun."""
    if real_mlp.mlp_mpi is None:
        _mlip3_unavailable(f"the MLIP-3 build in {real_mlp.prefix} has no mlp_mpi (`make "
                           "test MLIP3=1` installs Open MPI)")
    mpirun = shutil.which("mpirun")
    if mpirun is None:
        _mlip3_unavailable("mpirun not found (`make test MLIP3=1` installs openmpi-bin)")
    assert mpirun is not None and real_mlp.mlp_mpi is not None
    version = subprocess.run([mpirun, "--version"], capture_output=True, text=True,
                             timeout=60, check=False).stdout
    extra = []
    if "Open MPI" in version or "OpenRTE" in version:
        extra.append("--oversubscribe")
        if os.geteuid() == 0:
            extra.append("--allow-run-as-root")
    return [mpirun, "-np", "2", *extra, str(real_mlp.mlp_mpi)]
