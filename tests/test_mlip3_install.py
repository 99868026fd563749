"""`make setup EXTRAS=mlip3`: bin/build-mlip3 builds MLIP-3's mlp into a prefix (idempotent,
keyed by the source, cached outside the clone), and a config with engines.trainer mlip3
that names neither mlip3.mlp nor an MTP template finds that build
(engines/mlip3_install.py, filled in by the config loader).

The build logic runs fast on a tiny stand-in source (a `configure` and a Makefile that
write a shell-script mlp); the real build from ../shared/vendor/mlip-3-7fe598d.tar.gz
(or $SMALLCELL_MLIP3_SOURCE; conftest.py's vendor_source) is a slow test that uses the
build cache ($MLIP3_CACHE, else ~/.cache/smallcell/mlip3), so a machine compiles it once."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from conftest import MLIP3_TOOLS as TOOLS
from smallcell.config import parse_config
from smallcell.engines.base import check_engines, trainer_for
from smallcell.engines.mlip3_install import installed_mlip3, mlip3_prefix
from smallcell.engines.mtp_basis import write_template
from smallcell.errors import SmallcellError

REPO = Path(__file__).resolve().parents[1]
BUILD = REPO / "bin" / "build-mlip3"
STANDINS = Path(__file__).resolve().parent / "standins"


def _run(*args: str | Path, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("MLIP3_")}
    return subprocess.run([sys.executable, str(BUILD), *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, check=False, env={**base, **env})


def _manifest(prefix: Path) -> dict:
    return json.loads((prefix / "manifest.json").read_text())


# ------------------------------------------------------------------ a stand-in source

CONFIGURE = """#!/bin/bash
mpi=1
for a in "$@"; do [ "$a" = --no-mpi ] && mpi=0; done
mkdir -p make
echo "USE_MPI = $mpi" > make/config.mk
echo "configured with $*"
"""
MAKEFILE = "mlp:\n\tmkdir -p bin\n\tcp src/mlp.sh bin/mlp\n\tchmod +x bin/mlp\n"
BROKEN = "mlp:\n\t@echo 'src/mtpr.cpp:12: error: something the compiler refused'\n\t@false\n"


def _fake_source(root: Path, version: str = "1", makefile: str = MAKEFILE) -> Path:
    root.mkdir(parents=True)
    (root / "configure").write_text(CONFIGURE)
    (root / "configure").chmod(0o755)
    (root / "Makefile").write_text(makefile)
    (root / "src").mkdir()
    (root / "src" / "mlp.sh").write_text(
        f"#!/bin/sh\necho 'mlp stand-in version {version}'\n"
        "echo 'train calculate_grade select_add check_errors'\n")
    (root / "LICENSE").write_text("BSD 2-Clause (stand-in)\n")
    (root / "MTP_templates").mkdir()
    write_template(root / "MTP_templates" / "08.almtp", 8)
    return root


@pytest.fixture
def toolchain() -> None:
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        pytest.skip(f"build-mlip3 needs {', '.join(missing)} (make setup EXTRAS=mlip3 "
                    "installs them)")


@pytest.mark.usefixtures("toolchain")
def test_build_install_noop_and_rebuild_on_a_changed_folder(tmp_path: Path) -> None:
    src = _fake_source(tmp_path / "src")
    prefix, cache = tmp_path / "prefix", tmp_path / "cache"
    args = ("--source", src, "--prefix", prefix, "--cache", cache, "--mpi", "0", "--jobs", "1")
    res = _run(*args)
    assert res.returncode == 0, res.stderr
    assert "built in" in res.stdout
    out = subprocess.run([prefix / "bin" / "mlp", "list"], capture_output=True, text=True,
                         check=True).stdout
    assert "version 1" in out
    m = _manifest(prefix)
    assert m["source_kind"] == "folder" and m["source_id"].startswith("content-sha256:")
    assert m["mlp"] == "bin/mlp" and m["mlp_mpi"] is None
    assert m["templates_dir"] == "MTP_templates"
    assert (prefix / "MTP_templates" / "08.almtp").is_file() and (prefix / "LICENSE").is_file()
    b = m["builds"]["serial"]
    assert b["configure"] == ["./configure", "--no-mpi", "--compiler=gnu", "--blas=embedded"]
    assert b["make"] == ["make", "-j1", "mlp"] and b["reused_from_cache"] is False
    assert b["seconds"] >= 0 and "g++" in b["compilers"]
    assert not (src / "bin").exists(), "the source folder itself is never built in"

    # the same source again: nothing to do, fast, the installed build untouched
    start = time.monotonic()
    res = _run(*args)
    assert res.returncode == 0, res.stderr
    assert "nothing to do" in res.stdout and time.monotonic() - start < 10
    assert _manifest(prefix)["installed_at"] == m["installed_at"]

    # build outputs in the source folder (obj/, bin/, make/config.mk) are not the source
    (src / "obj").mkdir()
    (src / "obj" / "x.o").write_text("object")
    assert "nothing to do" in _run(*args).stdout

    # a changed source is rebuilt and replaces the build
    (src / "src" / "mlp.sh").write_text((src / "src" / "mlp.sh").read_text()
                                        .replace("version 1", "version 2"))
    res = _run(*args)
    assert res.returncode == 0, res.stderr
    assert "built in" in res.stdout and "nothing to do" not in res.stdout
    assert _manifest(prefix)["key"] != m["key"]
    out = subprocess.run([prefix / "bin" / "mlp", "list"], capture_output=True, text=True,
                         check=True).stdout
    assert "version 2" in out
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".prefix.")
                and not p.name.endswith(".lock")], "temporary folders left behind"


@pytest.mark.usefixtures("toolchain")
def test_tarball_is_keyed_by_its_sha256_and_the_cache_serves_another_prefix(
        tmp_path: Path) -> None:
    src = _fake_source(tmp_path / "mlip-3-x")
    tarball = tmp_path / "mlip-3-x.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(src, arcname="mlip-3-x")
    cache = tmp_path / "cache"
    res = _run("--source", tarball, "--prefix", tmp_path / "a", "--cache", cache, "--mpi", "0")
    assert res.returncode == 0, res.stderr
    digest = hashlib.sha256(tarball.read_bytes()).hexdigest()
    m = _manifest(tmp_path / "a")
    assert m["source_kind"] == "tarball" and m["source_id"] == f"sha256:{digest}"
    assert (cache / f"tar-{digest[:16]}" / "serial" / "done").is_file()
    # a second clone (another prefix) copies the cached build instead of compiling
    res = _run("--source", tarball, "--prefix", tmp_path / "b", "--cache", cache, "--mpi", "0")
    assert res.returncode == 0, res.stderr
    assert "from the cache" in res.stdout and "building" not in res.stdout
    assert _manifest(tmp_path / "b")["builds"]["serial"]["reused_from_cache"] is True
    assert (tmp_path / "b" / "bin" / "mlp").read_bytes() == \
        (tmp_path / "a" / "bin" / "mlp").read_bytes()


@pytest.mark.usefixtures("toolchain")
def test_a_failed_build_names_its_log_and_keeps_the_installed_build(tmp_path: Path) -> None:
    prefix, cache = tmp_path / "prefix", tmp_path / "cache"
    good = _fake_source(tmp_path / "good")
    assert _run("--source", good, "--prefix", prefix, "--cache", cache,
                "--mpi", "0").returncode == 0
    before = _manifest(prefix)
    bad = _fake_source(tmp_path / "bad", makefile=BROKEN)
    res = _run("--source", bad, "--prefix", prefix, "--cache", cache, "--mpi", "0")
    assert res.returncode == 1
    assert "make -j" in res.stderr and "failed (exit status 2)" in res.stderr
    assert "something the compiler refused" in res.stderr  # the log's last lines
    log = Path(res.stderr.split("build log: ")[1].split()[0])
    assert log.name == "make.log" and log.is_file() and "failed-serial" in str(log)
    assert _manifest(prefix) == before, "a failed build must leave the installed one alone"


def _git(cwd: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, env=env,
                          check=True).stdout.strip()


@pytest.mark.usefixtures("toolchain")
def test_git_source_is_keyed_by_its_commit(tmp_path: Path) -> None:
    if shutil.which("git") is None:
        pytest.skip("git not installed")
    repo = _fake_source(tmp_path / "upstream")
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "one")
    _git(repo, "tag", "v1")
    first = _git(repo, "rev-parse", "HEAD")
    url = f"file://{repo}"
    prefix, cache = tmp_path / "prefix", tmp_path / "cache"
    args = ("--prefix", prefix, "--cache", cache, "--mpi", "0")
    res = _run("--source", url, *args)
    assert res.returncode == 0, res.stderr
    m = _manifest(prefix)
    assert m["source_kind"] == "git" and m["commit"] == first
    assert m["source_id"] == f"git:{url}@{first}"
    assert "nothing to do" in _run("--source", url, *args).stdout
    # upstream moves on: the new commit is built
    (repo / "src" / "mlp.sh").write_text((repo / "src" / "mlp.sh").read_text()
                                         .replace("version 1", "version 2"))
    _git(repo, "commit", "-q", "-am", "two")
    res = _run("--source", url, *args)
    assert res.returncode == 0 and "built in" in res.stdout, res.stderr
    assert _manifest(prefix)["commit"] == _git(repo, "rev-parse", "HEAD") != first
    # a tag (URL#ref) builds that commit, here from the cache
    res = _run("--source", f"{url}#v1", *args)
    assert res.returncode == 0 and "from the cache" in res.stdout, res.stderr
    assert _manifest(prefix)["commit"] == first
    # unreachable remote: the installed build of that source is kept, with a warning
    repo.rename(tmp_path / "gone")
    res = _run("--source", f"{url}#v1", *args)
    assert res.returncode == 0 and "keeping the build" in res.stdout, res.stderr
    res = _run("--source", f"{url}#v1", "--prefix", tmp_path / "new", "--cache", cache)
    assert res.returncode == 1 and "git ls-remote" in res.stderr


def test_wrong_sources_and_foreign_prefixes_are_refused(tmp_path: Path) -> None:
    res = _run("--source", tmp_path / "nowhere.tar.gz", "--prefix", tmp_path / "p",
               "--cache", tmp_path / "c")
    assert res.returncode == 1 and "no such file or folder, and not a git URL" in res.stderr
    (tmp_path / "empty").mkdir()
    res = _run("--source", tmp_path / "empty", "--prefix", tmp_path / "p",
               "--cache", tmp_path / "c")
    assert res.returncode == 1 and "no `configure` in this folder" in res.stderr
    res = _run("--source", _fake_source(tmp_path / "src"), "--prefix", tmp_path / "p",
               "--cache", tmp_path / "c", "--mpi", "maybe")
    assert res.returncode == 1 and "MPI=maybe: expected 0, 1 or auto" in res.stderr
    assert not (tmp_path / "p").exists()


@pytest.mark.usefixtures("toolchain")
def test_a_foreign_prefix_is_never_replaced(tmp_path: Path) -> None:
    src = _fake_source(tmp_path / "src")
    prefix = tmp_path / "opt"
    prefix.mkdir()
    (prefix / "precious.txt").write_text("not ours")
    res = _run("--source", src, "--prefix", prefix, "--cache", tmp_path / "c", "--mpi", "0")
    assert res.returncode == 1 and "without a smallcell MLIP-3 build" in res.stderr
    assert (prefix / "precious.txt").read_text() == "not ours"


def test_record_names_the_prefix(tmp_path: Path) -> None:
    """make setup passes --record .mlip3-prefix: smallcell looks there first."""
    src = _fake_source(tmp_path / "src") if all(shutil.which(t) for t in TOOLS) else None
    if src is None:
        pytest.skip(f"build-mlip3 needs {', '.join(TOOLS)}")
    rec = tmp_path / "repo" / ".mlip3-prefix"
    rec.parent.mkdir()
    res = _run("--source", src, "--prefix", tmp_path / "elsewhere", "--cache", tmp_path / "c",
               "--mpi", "0", "--record", rec)
    assert res.returncode == 0, res.stderr
    assert rec.read_text().strip() == str(tmp_path / "elsewhere")


# ------------------------------------------------------------------ the config's lookup


def _prefix(root: Path, level: int = 8) -> Path:
    """A build as bin/build-mlip3 leaves it (the stand-in mlp as its binary)."""
    (root / "bin").mkdir(parents=True)
    shutil.copy2(STANDINS / "mlp", root / "bin" / "mlp")
    (root / "MTP_templates").mkdir()
    write_template(root / "MTP_templates" / f"{level:02d}.almtp", level)
    (root / "manifest.json").write_text(json.dumps(
        {"format": 1, "mlp": "bin/mlp", "mlp_mpi": None, "templates_dir": "MTP_templates",
         "builds": {}}))
    return root


BASE = ("engines: {{explorer: lammps, trainer: mlip3}}\n"
        "lammps: {{command: {lmp}, grade_floor: 0.1}}\nsample: {{size: 0}}\n")


def _config(tmp_path: Path, extra: str = "") -> str:
    return BASE.format(lmp=STANDINS / "lmp") + extra


def test_lookup_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    monkeypatch.delenv("SMALLCELL_MLIP3_PREFIX", raising=False)
    assert mlip3_prefix(repo) == repo / ".mlip3"
    assert installed_mlip3(repo) is None  # nothing built
    _prefix(repo / ".mlip3")
    found = installed_mlip3(repo)
    assert found is not None and found.mlp == (repo / ".mlip3" / "bin" / "mlp").resolve()
    assert found.templates_dir == (repo / ".mlip3" / "MTP_templates").resolve()
    assert found.mlp_mpi is None
    (repo / ".mlip3-prefix").write_text(f"{tmp_path / 'other'}\n")
    assert installed_mlip3(repo) is None  # the record wins; nothing there yet
    _prefix(tmp_path / "other")
    assert installed_mlip3(repo).prefix == (tmp_path / "other").resolve()  # type: ignore[union-attr]
    monkeypatch.setenv("SMALLCELL_MLIP3_PREFIX", str(repo / ".mlip3"))
    assert installed_mlip3(repo).prefix == (repo / ".mlip3").resolve()  # type: ignore[union-attr]
    monkeypatch.setenv("SMALLCELL_MLIP3_PREFIX", "none")
    assert installed_mlip3(repo) is None
    # a half-written build (no manifest yet) is no build
    monkeypatch.setenv("SMALLCELL_MLIP3_PREFIX", str(tmp_path / "other"))
    (tmp_path / "other" / "manifest.json").unlink()
    assert installed_mlip3(repo) is None


def test_config_finds_the_build_when_the_keys_are_unset(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    prefix = _prefix(tmp_path / "build")
    monkeypatch.setenv("SMALLCELL_MLIP3_PREFIX", str(prefix))
    cfg = parse_config(_config(tmp_path), tmp_path / "c.yaml")
    assert cfg["mlip3"]["mlp"] == [str(prefix / "bin" / "mlp")]
    assert cfg["mlip3"]["templates_dir"] == str(prefix / "MTP_templates")
    settings = trainer_for(cfg).settings  # type: ignore[attr-defined]
    assert settings.mlp == [str(prefix / "bin" / "mlp")]
    assert settings.template_path() == prefix / "MTP_templates" / "08.almtp"
    check_engines(cfg)  # preflight: the program runs, the template loads and is level 8
    # the frozen effective config names the build, and reads back the same
    again = parse_config(cfg.dump(), tmp_path / "frozen.yaml")
    assert again["mlip3"]["mlp"] == cfg["mlip3"]["mlp"]
    assert again["mlip3"]["templates_dir"] == cfg["mlip3"]["templates_dir"]


def test_config_leaves_set_keys_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    prefix = _prefix(tmp_path / "build")
    monkeypatch.setenv("SMALLCELL_MLIP3_PREFIX", str(prefix))
    mine = _prefix(tmp_path / "mine")
    cfg = parse_config(_config(tmp_path, f"mlip3: {{mlp: {STANDINS / 'mlp'}, templates_dir: "
                                         f"{mine / 'MTP_templates'}}}\n"), tmp_path / "c.yaml")
    assert cfg["mlip3"]["mlp"] == [str(STANDINS / "mlp")]
    assert cfg["mlip3"]["templates_dir"] == str(mine / "MTP_templates")
    # only the template given: the mlp comes from the build, no templates_dir is added
    template = mine / "MTP_templates" / "08.almtp"
    cfg = parse_config(_config(tmp_path, f"mlip3: {{template: {template}}}\n"),
                       tmp_path / "c.yaml")
    assert cfg["mlip3"]["template"] == str(template) and cfg["mlip3"]["templates_dir"] is None
    assert cfg["mlip3"]["mlp"] == [str(prefix / "bin" / "mlp")]
    # mlp given, templates not: the build's templates, the given mlp
    cfg = parse_config(_config(tmp_path, f"mlip3: {{mlp: {STANDINS / 'mlp'}}}\n"),
                       tmp_path / "c.yaml")
    assert cfg["mlip3"]["mlp"] == [str(STANDINS / "mlp")]
    assert cfg["mlip3"]["templates_dir"] == str(prefix / "MTP_templates")
    # the embedded trainer never looks
    cfg = parse_config("engines: {trainer: motep}\n", tmp_path / "c.yaml")
    assert cfg["mlip3"]["mlp"] == ["mlp"] and cfg["mlip3"]["templates_dir"] is None


def test_without_a_build_the_error_says_how_to_get_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMALLCELL_MLIP3_PREFIX", "none")
    with pytest.raises(SmallcellError, match=r"needs mlip3.templates_dir .* or an MLIP-3 "
                       r"built by `make setup EXTRAS=mlip3`"):
        parse_config(_config(tmp_path, f"mlip3: {{mlp: {STANDINS / 'mlp'}}}\n"),
                     tmp_path / "c.yaml")


# ------------------------------------------------------------------ the real MLIP-3

TRAIN_CFG = """BEGIN_CFG
 Size
    2
 Supercell
         5.000000      0.000000      0.000000
         0.000000      5.000000      0.000000
         0.000000      0.000000      5.000000
 AtomData:  id type       cartes_x      cartes_y      cartes_z           fx          fy          fz
             1    0       {x:.6f}      0.000000      0.000000    {f:.6f}    0.000000    0.000000
             2    0       2.500000      2.500000      2.500000    {g:.6f}    0.000000    0.000000
 Energy
        {e:.12f}
 PlusStress:  xx          yy          zz          yz          xz          xy
         0.10000     0.10000     0.10000     0.00000     0.00000     0.00000
END_CFG
"""


@pytest.mark.slow
def test_real_build_from_the_vendor_source(vendor_source: Path, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The real mlp, built once per machine into the cache ($MLIP3_CACHE, else
    ~/.cache/smallcell/mlip3) and installed from it into a fresh prefix."""
    prefix = tmp_path / "mlip3"
    cache = os.environ.get("MLIP3_CACHE") or ""
    args = ["--source", str(vendor_source), "--prefix", str(prefix), "--mpi", "0",
            *(["--cache", cache] if cache else [])]
    res = _run(*args, timeout=3600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    m = _manifest(prefix)
    if vendor_source.is_file():
        digest = hashlib.sha256(vendor_source.read_bytes()).hexdigest()
        assert m["source_id"] == f"sha256:{digest}"
    mlp = prefix / "bin" / "mlp"
    out = subprocess.run([mlp, "list"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "calculate_grade" in out.stdout and "select_add" in out.stdout
    assert (prefix / "MTP_templates" / "08.almtp").is_file()

    # an untrained template loads and trains; the potential grades configurations
    work = tmp_path / "work"
    work.mkdir()
    (work / "train.cfg").write_text("\n".join(
        TRAIN_CFG.format(x=0.1 * k, f=-0.05 * k, g=0.05 * k, e=-3.0 + 0.01 * k * k)
        for k in range(4)))
    res = subprocess.run([mlp, "train", prefix / "MTP_templates" / "06.almtp", "train.cfg",
                          "--save_to=pot.almtp", "--iteration_limit=20", "--al_mode=cfg"],
                         cwd=work, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and (work / "pot.almtp").is_file(), res.stdout + res.stderr
    res = subprocess.run([mlp, "calculate_grade", "pot.almtp", "train.cfg", "graded.cfg"],
                         cwd=work, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert (work / "graded.cfg").read_text().count("MV_grade") == 4

    # a second run is a no-op
    start = time.monotonic()
    res = _run(*args)
    assert res.returncode == 0 and "nothing to do" in res.stdout, res.stdout + res.stderr
    assert time.monotonic() - start < 10

    # the config finds it; preflight loads its real (CRLF) level-8 template
    monkeypatch.setenv("SMALLCELL_MLIP3_PREFIX", str(prefix))
    cfg = parse_config(_config(tmp_path), tmp_path / "c.yaml")
    assert cfg["mlip3"]["mlp"] == [str(mlp)]
    check_engines(cfg)


# ------------------------------------------------------------------ the tests' real mlp

USES_REAL_MLP = '''
import os

def test_real(real_mlp):
    assert str(real_mlp.prefix) == os.environ["WANT_PREFIX"], str(real_mlp.prefix)
    assert real_mlp.mlp.is_file()
'''


def _pytest_real_mlp(folder: Path, **env: str) -> subprocess.CompletedProcess:
    """pytest on a test that uses conftest.py's real_mlp (loaded as a plugin, so it finds
    bin/build-mlip3), with `env` on top of an environment cleared of the MLIP-3 settings."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "test_uses_real_mlp.py").write_text(USES_REAL_MLP)
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("SMALLCELL_MLIP3", "SMALLCELL_REQUIRE", "MLIP3_"))}
    base["PYTHONPATH"] = f"{REPO / 'tests'}{os.pathsep}{REPO / 'python'}"
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p",
                           "no:cacheprovider", "-p", "conftest", str(folder)], cwd=folder,
                          capture_output=True, text=True, timeout=600, check=False,
                          env={**base, "WANT_PREFIX": "", **env})


def test_real_mlp_skips_or_fails_saying_why(tmp_path: Path) -> None:
    """No source, or no compilers: the real-mlp tests skip naming what fixes it, and fail
    under SMALLCELL_REQUIRE_MLIP3=1 (CI)."""
    gone = str(tmp_path / "no-such-mlip3.tar.gz")
    res = _pytest_real_mlp(tmp_path / "a", SMALLCELL_MLIP3_SOURCE=gone)
    assert res.returncode == 0 and "1 skipped" in res.stdout, res.stdout + res.stderr
    assert f"MLIP-3 source not found at {gone}" in res.stdout
    res = _pytest_real_mlp(tmp_path / "b", SMALLCELL_MLIP3_SOURCE=gone,
                           SMALLCELL_REQUIRE_MLIP3="1")
    assert res.returncode == 1 and "1 error" in res.stdout, res.stdout + res.stderr
    assert f"SMALLCELL_REQUIRE_MLIP3 is set but MLIP-3 source not found at {gone}" \
        in res.stdout
    source = _fake_source(tmp_path / "src")
    res = _pytest_real_mlp(tmp_path / "c", SMALLCELL_MLIP3_SOURCE=str(source),
                           PATH=str(tmp_path / "empty"))
    assert res.returncode == 0 and "1 skipped" in res.stdout, res.stdout + res.stderr
    assert ("MLIP-3 not built: gcc, g++, gfortran, make not installed (`make test "
            "MLIP3=1` installs the compilers") in res.stdout
    res = _pytest_real_mlp(tmp_path / "d", SMALLCELL_MLIP3_SOURCE=str(source),
                           PATH=str(tmp_path / "empty"), SMALLCELL_REQUIRE_MLIP3="1")
    assert res.returncode == 1 and "SMALLCELL_REQUIRE_MLIP3 is set but MLIP-3 not built" \
        in res.stdout, res.stdout + res.stderr


def test_real_mlp_takes_the_named_build(tmp_path: Path) -> None:
    """SMALLCELL_MLIP3_PREFIX naming a build: used as it is, nothing built."""
    prefix = _prefix(tmp_path / "build")
    res = _pytest_real_mlp(tmp_path / "t", SMALLCELL_MLIP3_PREFIX=str(prefix),
                           SMALLCELL_MLIP3_SOURCE=str(tmp_path / "nothing"),
                           WANT_PREFIX=str(prefix.resolve()))
    assert res.returncode == 0 and "1 passed" in res.stdout, res.stdout + res.stderr


def test_real_mlp_prefers_the_clones_own_build(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """With no named build, the tests run the clone's `make setup EXTRAS=mlip3` build
    (what the user will run), before building one; SMALLCELL_MLIP3_PREFIX=none skips the
    lookup."""
    from conftest import find_real_mlp
    from smallcell.engines import mlip3_install

    build = mlip3_install.read_build(_prefix(tmp_path / "clone-build"))
    assert build is not None
    monkeypatch.setattr(mlip3_install, "installed_mlip3", lambda: build)
    monkeypatch.delenv("SMALLCELL_MLIP3_PREFIX", raising=False)
    assert find_real_mlp(None) is build  # type: ignore[arg-type]  # nothing built
    monkeypatch.setenv("SMALLCELL_MLIP3_PREFIX", "none")
    monkeypatch.setenv("SMALLCELL_MLIP3_SOURCE", str(tmp_path / "no-source.tar.gz"))
    monkeypatch.delenv("SMALLCELL_REQUIRE_MLIP3", raising=False)  # CI sets it: a skip here
    with pytest.raises(pytest.skip.Exception, match="MLIP-3 source not found"):
        find_real_mlp(None)  # type: ignore[arg-type]


@pytest.mark.usefixtures("toolchain")
def test_real_mlp_builds_into_a_session_prefix_and_a_failed_build_fails(
        tmp_path: Path) -> None:
    """Without a named build, real_mlp builds the source through bin/build-mlip3 into the
    cache (MLIP3_CACHE) and installs it into a prefix of the pytest session, never into
    the clone; a build that fails fails the tests, whatever SMALLCELL_REQUIRE_MLIP3 says,
    with the build's own message."""
    cache = tmp_path / "cache"
    source = _fake_source(tmp_path / "src")
    res = _pytest_real_mlp(tmp_path / "t", SMALLCELL_MLIP3_SOURCE=str(source),
                           MLIP3_CACHE=str(cache), WANT_PREFIX="see below")
    assert res.returncode == 1, res.stdout + res.stderr
    got = Path(res.stdout.split("AssertionError: ")[1].split()[0])
    assert got.name == "prefix" and REPO not in got.parents
    assert [p.name for p in cache.glob("*/serial/done")] == ["done"]
    broken = _fake_source(tmp_path / "broken", makefile=BROKEN)
    res = _pytest_real_mlp(tmp_path / "u", SMALLCELL_MLIP3_SOURCE=str(broken),
                           MLIP3_CACHE=str(cache))
    assert res.returncode == 1 and "building the real MLIP-3 failed (exit status 1)" \
        in res.stdout, res.stdout + res.stderr
    assert "something the compiler refused" in res.stdout


def test_make_test_installs_the_mlip3_tools_only_with_consent() -> None:
    """`make test MLIP3=1` (or SMALLCELL_INSTALL_MLIP3=1) lets bin/install-test-packages
    install the compilers and Open MPI the real-mlp tests build MLIP-3 with; without it
    nothing is installed (a terminal is asked). CI passes MLIP3=1 and makes a real mlp
    that cannot be had a failure (SMALLCELL_REQUIRE_MLIP3=1)."""
    outer = {"MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "MLIP3",
             "SMALLCELL_INSTALL_MLIP3"}
    base = {k: v for k, v in os.environ.items() if k not in outer}

    def consent(*args: str, **env: str) -> str:
        out = subprocess.run(["make", "-n", "test", *args], cwd=REPO, capture_output=True,
                             text=True, check=True, env={**base, **env}).stdout
        [line] = [x for x in out.splitlines() if "MLIP-3's compilers" in x]
        part = line[line.index("MLIP-3's compilers"):]
        assert part.endswith('"make test MLIP3=1" gcc g++ gfortran make libopenmpi-dev '
                             "openmpi-bin"), part
        return part.split('" "')[1]

    assert consent() == ""
    assert consent("MLIP3=1") == "1"
    assert consent(SMALLCELL_INSTALL_MLIP3="yes") == "yes"
    ci = (REPO / ".ci" / "run").read_text()
    assert "SMALLCELL_REQUIRE_MLIP3=1" in ci and re.search(r"make test [^\n]*\bMLIP3=1\b", ci)
