"""`make test` says what it skipped and why, and installs system packages (GPAW, Slurm)
only with consent: a flag (GPAW=1, SLURM=1, or SMALLCELL_INSTALL_*=1) or a yes on a
terminal (issue 17, point 7)."""

from __future__ import annotations

import os
import pty
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bin" / "install-test-packages"
MISSING = "no-such-package-smallcell"


def _pytest(folder: Path, env: dict[str, str] | None = None) -> str:
    """Run pytest on `folder`, which holds a copy of tests/conftest.py; its output."""
    shutil.copy(REPO / "tests" / "conftest.py", folder / "conftest.py")
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-ra", "-p",
                          "no:cacheprovider", str(folder)], cwd=folder, capture_output=True,
                         text=True, check=False, timeout=120,
                         env={**os.environ, **(env or {})})
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


def test_skipped_tests_are_counted_by_reason_at_the_end(tmp_path: Path) -> None:
    (tmp_path / "test_some.py").write_text('''
import pytest

@pytest.fixture(scope="session")
def shared():
    pytest.skip("shared fixtures not found at /nowhere (set SMALLCELL_FIXTURES)")

@pytest.mark.parametrize("k", range(3))
def test_needs_fixtures(shared, k):
    pass

@pytest.mark.skip(reason="GPAW not installed for /usr/bin/python3")
def test_gpaw():
    pass

def test_skips_inside():
    pytest.skip("no mlp on PATH")

def test_runs():
    pass
''')
    out = _pytest(tmp_path)
    # last, after -ra's lines per test (pyproject's addopts), before the final count
    assert out.index("short test summary info") < out.index("5 skipped, by reason")
    tail = out[out.index("5 skipped, by reason"):].splitlines()
    assert len(tail) == 5
    assert tail[1:4] == [
        "     3  shared fixtures not found at /nowhere (set SMALLCELL_FIXTURES)",
        "     1  GPAW not installed for /usr/bin/python3 (`make test GPAW=1` installs it)",
        "     1  no mlp on PATH"]
    assert "1 passed, 5 skipped" in tail[-1]


def test_no_skip_no_summary(tmp_path: Path) -> None:
    (tmp_path / "test_one.py").write_text("def test_ok():\n    pass\n")
    assert "by reason" not in _pytest(tmp_path)


def test_the_slurm_fixture_installs_nothing_without_consent(tmp_path: Path) -> None:
    """Slurm missing: its tests skip saying how to enable them; SMALLCELL_INSTALL_SLURM=1
    lets the fixture go on to LocalSlurm.start (which installs as root)."""
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "slurm_local.py").write_text('''
PACKAGES = ("slurmctld", "munge")

class SlurmUnavailable(RuntimeError):
    pass

def missing_programs():
    return ["sbatch"]

class LocalSlurm:
    def __init__(self, root):
        pass

    def start(self):
        raise SlurmUnavailable("fake start: would install")

    def stop(self):
        pass
''')
    tests = tmp_path / "t"
    tests.mkdir()
    (tests / "test_slurm.py").write_text("def test_job(slurm_cluster):\n    pass\n")
    env = {"PYTHONPATH": str(fake), "SMALLCELL_INSTALL_SLURM": ""}
    out = _pytest(tests, env)
    assert ("1  Slurm not installed (sbatch missing): `make test SLURM=1` (or "
            "SMALLCELL_INSTALL_SLURM=1) installs slurmctld munge") in out
    out = _pytest(tests, {**env, "SMALLCELL_INSTALL_SLURM": "1"})
    assert "1  fake start: would install" in out


def _install(env: dict[str, str], consent: str, *packages: str, stdin=subprocess.DEVNULL
             ) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), "Foo (~1 MB), for the foo tests,", consent,
                           "make test FOO=1", *packages], env=env, stdin=stdin,
                          capture_output=True, text=True, check=False, timeout=60)


@pytest.mark.parametrize("consent", ["", "0", "no"])
def test_no_install_without_consent(consent: str, fake_apt) -> None:
    env, log = fake_apt
    res = _install(env, consent, "bash", MISSING)  # no terminal: never asks
    assert res.returncode == 0 and not log.exists()
    assert (f"note: Foo (~1 MB), for the foo tests, is not installed ({MISSING}): those tests "
            "will be skipped; `make test FOO=1` installs it") in res.stderr


@pytest.mark.parametrize("consent", ["1", "yes"])
def test_install_with_consent(consent: str, fake_apt) -> None:
    env, log = fake_apt
    res = _install(env, consent, "bash", MISSING)
    assert res.returncode == 0, res.stderr
    assert log.read_text().splitlines()[-1].endswith(f"--no-install-recommends {MISSING}")
    assert not _install(env, "", "bash", "coreutils").stderr  # installed: not a word


@pytest.mark.parametrize("answer", ["y", "n", ""])
def test_a_terminal_is_asked(answer: str, fake_apt) -> None:
    env, log = fake_apt
    leader, follower = pty.openpty()
    try:
        os.write(leader, f"{answer}\n".encode())
        res = _install(env, "", MISSING, stdin=follower)
    finally:
        os.close(follower)
        os.close(leader)
    assert "Install it now through apt-get (as root or with sudo)? [y/N]" in res.stderr
    assert res.returncode == 0 and log.exists() == (answer == "y")


def test_make_test_passes_the_consent_on() -> None:
    # under `make test GPAW=1` (CI) the outer make's variables reach this make through
    # MAKEFLAGS and the environment: start from a clean slate
    outer = {"MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "GPAW", "SLURM", "MLIP3",
             "DEEPMD"}
    base = {k: v for k, v in os.environ.items() if k not in outer}

    def plan(*args: str, **env: str) -> list[str]:
        out = subprocess.run(["make", "-n", "test", *args], cwd=REPO, capture_output=True,
                             text=True, check=True, env={**base, **env}).stdout
        return [line for line in out.splitlines()
                if "install-" in line or " -m pytest " in line]

    env = {"SMALLCELL_INSTALL_GPAW": "", "SMALLCELL_INSTALL_SLURM": "",
           "SMALLCELL_INSTALL_MLIP3": "", "SMALLCELL_INSTALL_DEEPMD": ""}
    lines = plan(**env)
    assert not any("install-debian-packages" in line for line in lines)
    deepmd, gpaw, slurm, mlip3, pytest_line = lines
    assert 'install-test-deepmd "" ".venv-deepmd/.installed"' in deepmd
    assert '"" "make test GPAW=1" gpaw gpaw-data' in gpaw
    assert '"" "make test SLURM=1" slurmctld' in slurm
    assert '"" "make test MLIP3=1" gcc g++ gfortran make libopenmpi-dev' in mlip3
    assert pytest_line.startswith("SMALLCELL_INSTALL_SLURM= ")
    deepmd, gpaw, slurm, mlip3, pytest_line = plan("GPAW=1", "SLURM=1", "MLIP3=1",
                                                   "DEEPMD=1", **env)
    assert '"1" "make test GPAW=1"' in gpaw and '"1" "make test SLURM=1"' in slurm
    assert '"1" "make test MLIP3=1"' in mlip3 and 'install-test-deepmd "1"' in deepmd
    assert pytest_line.startswith("SMALLCELL_INSTALL_SLURM=1 ")
    deepmd, gpaw, _, _, _ = plan(**{**env, "SMALLCELL_INSTALL_GPAW": "1",
                                    "SMALLCELL_INSTALL_DEEPMD": "1"})
    assert '"1" "make test GPAW=1"' in gpaw and 'install-test-deepmd "1"' in deepmd
