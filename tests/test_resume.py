"""Resume guarantees: kill the loop at random points (kill -9, Ctrl-C) and prove that the
run still finishes exactly as an uninterrupted one, redoing no finished task and leaving no
duplicated or partial configuration in any train.cfg (the issue's acceptance test).

Every run goes through the real command line (`bin/smallcell`) in its own process group, so
a kill reaches the driver and its workers at once, as `kill -9 -PGID` or Ctrl-C in a
terminal would. Kill moments are chosen in two ways: right after a chosen marker appears
(so every stage is hit: labels, explore, select, train, ...) and at seeded random delays.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import random
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
CONFIG = "examples/tiny.yaml"
UPTO = 2
JOBS = "2"
TIMEOUT = 300.0  # seconds; a whole tiny run takes 10-20 s
# Values that measure time, not results: they differ between any two runs.
TIMING_KEYS = frozenset({"time", "seconds", "train_seconds", "stage_seconds"})
# What a `done` marker promises next to it, by the folder's place in iter/<i>/...
REQUIRED = {
    "explore_run": ("preselected.cfg", "gamma.json", "md.log"),
    "explore": ("explore.json",),
    "select": ("selected.cfg", "selection.json"),
    "vasp": ("labeled.cfg",),
    "collect": ("train.cfg",),
    "train": ("pot.mtp", "active_set.npz", "errors.json"),
}

pytestmark = pytest.mark.slow


# --------------------------------------------------------------------------- running


def _env() -> dict[str, str]:
    """The user's environment without PYTHONPATH: bin/smallcell sets its own."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def _argv(run_dir: Path, upto: int = UPTO) -> list[str]:
    """The one command every test runs (what `make iter N=upto` runs), 2 workers."""
    return [str(REPO / "bin" / "smallcell"), "--run-dir", str(run_dir), "iter",
            "--upto", str(upto), "--config", CONFIG, "--jobs", JOBS]


def smallcell(run_dir: Path, upto: int = UPTO) -> subprocess.CompletedProcess[str]:
    """Run `smallcell iter` to its end, output captured."""
    return subprocess.run(_argv(run_dir, upto), capture_output=True, text=True, env=_env(),
                          cwd=REPO, timeout=TIMEOUT, check=False)


@dataclass
class Started:
    """A CLI run in its own process group, its output going to files (never a full pipe)."""

    proc: subprocess.Popen[bytes]
    out: Path
    err: Path

    @property
    def pgid(self) -> int:
        return self.proc.pid  # start_new_session: the driver leads its group

    def stderr(self) -> str:
        return self.err.read_text(encoding="utf-8", errors="replace")


def start(run_dir: Path, log_dir: Path, name: str, upto: int = UPTO) -> Started:
    """Start `smallcell iter` as a session leader so that killpg reaches every worker."""
    log_dir.mkdir(parents=True, exist_ok=True)
    out, err = log_dir / f"{name}.out", log_dir / f"{name}.err"
    with open(out, "wb") as fo, open(err, "wb") as fe:
        proc = subprocess.Popen(_argv(run_dir, upto), stdout=fo, stderr=fe, env=_env(),
                                cwd=REPO, start_new_session=True)
    return Started(proc, out, err)


def _group_alive(pgid: int) -> bool:
    """Any non-zombie process left in group `pgid` (a worker could still write files)."""
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            text = Path(stat).read_text()
        except OSError:
            continue
        fields = text[text.rfind(")") + 2:].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False


def stop(run: Started, sig: signal.Signals = signal.SIGKILL) -> int:
    """Signal the whole group, wait for the driver and for every worker to be gone."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(run.pgid, sig)
    code = run.proc.wait(timeout=TIMEOUT)
    deadline = time.monotonic() + 30
    while _group_alive(run.pgid):
        assert time.monotonic() < deadline, f"process group {run.pgid} survived {sig.name}"
        time.sleep(0.01)
    return code


def wait_until(run: Started, cond: Callable[[], bool], timeout: float = TIMEOUT) -> bool:
    """Poll until `cond` holds (True) or the run exits first (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        if run.proc.poll() is not None:
            return False
        time.sleep(0.002)
    raise AssertionError(f"timeout waiting on {run.proc.args}")


def count(root: Path, pattern: str, n: int) -> Callable[[], bool]:
    """At least `n` files match `pattern` (glob.glob: hidden scratch folders never match)."""
    return lambda: len(glob.glob(str(root / pattern))) >= n


def clock_reaches(deadline: float) -> Callable[[], bool]:
    """A condition for a kill at a fixed moment (time.monotonic)."""
    return lambda: time.monotonic() >= deadline


# ------------------------------------------------------------------------ inspecting


def real_files(root: Path) -> Iterator[Path]:
    """Files under real names: no path component starts with '.' (temporaries, scratch
    folders and the lock are hidden, so a stage never reads them as results)."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for f in filenames:
            if not f.startswith("."):
                yield Path(dirpath) / f


def fingerprint(root: Path) -> dict[str, tuple[int, int]]:
    """(inode, mtime_ns) of every finished result: all files of a folder with a `done`
    marker, and every iteration's summary.json and frozen config. A rewrite (rename into
    place) changes the inode, an in-place write the mtime."""
    return {str(p.relative_to(root)): (p.stat().st_ino, p.stat().st_mtime_ns)
            for p in real_files(root)
            if (p.parent / "done").exists() or p.name in ("summary.json", "config.yaml")}


def stat_of(path: Path) -> tuple[int, int] | None:
    """(inode, mtime_ns), or None once the file is gone."""
    with contextlib.suppress(FileNotFoundError):
        st = path.stat()
        return st.st_ino, st.st_mtime_ns
    return None


def assert_untouched(before: dict[str, tuple[int, int]], root: Path, what: str) -> None:
    """Every file recorded in `before` is still the very same file (not rewritten)."""
    changed = sorted(k for k, v in before.items() if stat_of(root / k) != v)
    assert not changed, f"{what}: finished results were redone or removed: {changed}"


def stage_in_progress(root: Path) -> str:
    """The stage the folders say is running (first missing marker), e.g. '1/label'."""
    for i in range(UPTO + 1):
        d = root / "iter" / str(i)
        if (d / "summary.json").exists():
            if json.loads((d / "summary.json").read_text())["converged"]:
                return "complete"
            continue
        for stage in ("explore", "select", "label", "collect", "train"):
            if stage == "explore" and i == 0:
                continue
            if stage == "label":
                n = json.loads((d / "select" / "done").read_text())["n_selected"]
                if any(not ((d / "vasp" / str(k) / "done").exists()
                            or (d / "vasp" / str(k) / "failed").exists()) for k in range(n)):
                    return f"{i}/label"
            elif not (d / stage / "done").exists():
                return f"{i}/{stage}"
        return f"{i}/summary"
    return "complete"


def cfg_blocks(data: bytes) -> list[bytes]:
    """The configurations of a cfg file as byte blocks (BEGIN_CFG ... END_CFG and the blank
    line MLIP-3 writes after it)."""
    return re.findall(rb"BEGIN_CFG\n.*?END_CFG\n\s*", data, flags=re.S)


def geometry(block: bytes) -> tuple[str, ...]:
    """Cell and positions of one configuration: two blocks with equal geometry are the same
    configuration collected twice."""
    lines = block.decode().splitlines()
    key: list[str] = []
    n = int(lines[lines.index(" Size") + 1])
    for k, line in enumerate(lines):
        if line.strip() == "Supercell":
            key += [s.strip() for s in lines[k + 1:k + 4]]
        if line.startswith(" AtomData:"):
            cols = line.split()[1:]
            pos = [c for c, name in enumerate(cols) if name[:7] in ("cartes_", "direct_")]
            for row in lines[k + 1:k + 1 + n]:
                vals = row.split()
                key.append(" ".join(vals[c] for c in pos))
    return tuple(key)


def assert_complete_cfg(path: Path) -> int:
    """A cfg under a real name is whole: as many BEGIN_CFG as END_CFG, nothing torn."""
    data = path.read_bytes()
    begins, ends = data.count(b"BEGIN_CFG"), data.count(b"END_CFG")
    assert begins == ends, f"{path}: {begins} BEGIN_CFG but {ends} END_CFG"
    assert b"".join(cfg_blocks(data)) == data, f"{path}: bytes outside BEGIN/END blocks"
    return begins


def assert_train_sets(root: Path) -> None:
    """Every collected train.cfg = previous train.cfg + this iteration's labels (imported
    data first for iteration 0), byte for byte, in task order, with no duplicate."""
    prev = b""
    for i in range(UPTO + 1):
        d = root / "iter" / str(i)
        if not (d / "collect" / "done").exists():
            break
        n = json.loads((d / "select" / "done").read_text())["n_selected"]
        parts = [prev]
        if (d / "select" / "imported.cfg").exists():
            parts.append((d / "select" / "imported.cfg").read_bytes())
        for k in range(n):
            task = d / "vasp" / str(k)
            if (task / "done").exists():
                assert len(cfg_blocks((task / "labeled.cfg").read_bytes())) == 1, task
                parts.append((task / "labeled.cfg").read_bytes())
        train = (d / "collect" / "train.cfg").read_bytes()
        assert train == b"".join(parts), f"iteration {i}: train.cfg is not previous + labels"
        blocks = cfg_blocks(train)
        assert len(blocks) == json.loads((d / "collect" / "done").read_text())["n_train"]
        geoms = [geometry(b) for b in blocks]
        assert len(set(geoms)) == len(geoms), f"iteration {i}: duplicated configuration"
        prev = train


def assert_consistent(root: Path) -> None:
    """What must hold at any moment, killed or not: markers come with their outputs, real
    names hold whole files, train sets are assembled exactly once."""
    for path in real_files(root):
        rel = path.relative_to(root / "iter").parts
        if path.name == "done":
            kind = ("explore_run" if len(rel) == 4 and rel[1] == "explore" else rel[1])
            for need in REQUIRED.get(kind, ()):
                assert (path.parent / need).is_file(), f"{path}: marker without {need}"
        if path.suffix == ".cfg":
            assert_complete_cfg(path)
        if path.name == "done" or path.name == "summary.json" or (
                path.suffix == ".json" and (path.parent / "done").exists()):
            json.loads(path.read_text())  # finished JSON results parse
        if path.name == "summary.json":
            assert (path.parent / "train" / "done").exists(), f"{path} before train/done"
    assert_train_sets(root)


def _strip(data: Any) -> Any:
    """A JSON record without its clock readings (the only part two runs may differ in)."""
    return {k: v for k, v in data.items() if k not in TIMING_KEYS} if isinstance(
        data, dict) else data


def assert_same_as_reference(ref: Path, run: Path) -> None:
    """The resumed run equals the uninterrupted one: same files under real names, same
    bytes (cfg, pot.mtp, active set, POSCAR, md.log, config), same JSON except timings.
    pot.mtp is compared byte for byte, not to a tolerance: every fit is seeded and starts
    from the previous pot.mtp *file* (never from memory), so a fit in a fresh process after
    a kill writes exactly what the uninterrupted process writes."""
    ref_files = {str(p.relative_to(ref)) for p in real_files(ref)}
    run_files = {str(p.relative_to(run)) for p in real_files(run)}
    assert run_files == ref_files, (f"missing {sorted(ref_files - run_files)}, "
                                    f"extra {sorted(run_files - ref_files)}")
    for i in tasks_of(ref):  # the headline results first, for readable failures
        d, r = ref / "iter" / str(i), run / "iter" / str(i)
        assert _strip(json.loads((r / "summary.json").read_text())) == _strip(
            json.loads((d / "summary.json").read_text())), f"iteration {i}: summary differs"
        for name in ("collect/train.cfg", "select/selected.cfg", "train/pot.mtp"):
            assert (r / name).read_bytes() == (d / name).read_bytes(), f"iter {i}: {name}"
    for rel in sorted(ref_files):
        a, b = ref / rel, run / rel
        if a.name == "train.log":  # motep's log carries timings only besides errors.json
            continue
        if a.name == "done" or a.suffix == ".json":
            assert _strip(json.loads(b.read_text())) == _strip(json.loads(a.read_text())), rel
        else:
            assert b.read_bytes() == a.read_bytes(), rel


# -------------------------------------------------------------------------- fixtures


def source_digest() -> str:
    """A hash of the code a run executes: results are only comparable between runs of the
    same code (a concurrent edit during the session is not a resume bug)."""
    h = hashlib.sha256()
    files = [p for top in ("python", "templates") for p in (REPO / top).rglob("*")
             if p.is_file() and "__pycache__" not in p.parts]
    for path in [*sorted(files), REPO / CONFIG]:
        h.update(str(path).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


@dataclass
class Reference:
    root: Path
    seconds: float
    digest: str

    def compare(self, run: Path) -> None:
        """assert_same_as_reference, unless the code changed since the reference ran."""
        if source_digest() != self.digest:
            pytest.fail("python/ changed while the tests ran: the reference is stale; rerun")
        assert_same_as_reference(self.root, run)


@pytest.fixture(scope="session")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Reference:
    """The uninterrupted run every interrupted one must reproduce."""
    root = tmp_path_factory.mktemp("reference")
    digest = source_digest()
    t0 = time.monotonic()
    res = smallcell(root)
    seconds = time.monotonic() - t0
    assert res.returncode == 0, res.stderr
    assert_consistent(root)
    last = json.loads((root / "iter" / str(max(tasks_of(root))) / "summary.json").read_text())
    assert last["iteration"] == UPTO or last["converged"], last
    return Reference(root, seconds, digest)


# ---------------------------------------------------------------------------- tests


@dataclass
class KillPoint:
    """Kill when `pattern` matches `n` files (None: after `after` seconds), plus a delay
    drawn from `delay`; SIGINT plays Ctrl-C."""

    pattern: str | None
    n: int = 1
    delay: tuple[float, float] = (0.0, 0.02)
    sig: signal.Signals = signal.SIGKILL
    after: float = 0.0


def tasks_of(ref: Path) -> dict[int, int]:
    """Label tasks per iteration of the reference (0 when nothing was selected)."""
    return {i: len(list((ref / "iter" / str(i) / "vasp").glob("[0-9]*")))
            for i in range(UPTO + 1) if (ref / "iter" / str(i) / "summary.json").exists()}


def kill_points(ref: Reference, rng: random.Random) -> list[KillPoint]:
    """Markers in the order a run writes them, so that each kill lands in a later stage.
    Random-time kills sit where overshooting cannot skip a stage the test must cover (the
    start, the end). Label kills exist only where the reference labeled something."""
    n = tasks_of(ref.root)

    def rand(lo: float, hi: float) -> KillPoint:  # a random moment of the run time
        return KillPoint(None, after=rng.uniform(lo, hi) * ref.seconds)

    def fit(i: int) -> KillPoint:  # inside iteration i's fit, however fast the machine
        summary = json.loads((ref.root / "iter" / str(i) / "summary.json").read_text())
        t = float(summary["stage_seconds"]["train"])
        return KillPoint(f"iter/{i}/collect/done", delay=(0.05 * t, 0.3 * t))

    def labels(i: int, part: float, **kw: Any) -> list[KillPoint]:
        k = n.get(i, 0)
        return [KillPoint(f"iter/{i}/vasp/*/done", max(1, int(k * part)), **kw)] if k else []

    points = [
        KillPoint(None, after=rng.uniform(0.05, 0.4)),                    # start-up
        KillPoint("iter/0/select/done", delay=(0.0, 0.0)),               # iteration 0 labels
        *labels(0, 1 / 3),                                               # iteration 0 labels
        fit(0),                                                          # first fit
        KillPoint("iter/0/train/done"),                                  # before summary
        KillPoint("iter/1/explore/*/done", 1, sig=signal.SIGINT),        # Ctrl-C in explore
        KillPoint("iter/1/explore/done", delay=(0.0, 0.005)),            # select
        KillPoint("iter/1/select/done"),                                 # label prepare
        *labels(1, 1 / 2),                                               # labels
        *labels(1, 1, delay=(0.0, 0.0)),                                 # collect / train
        fit(1),                                                          # warm-start fit
    ]
    if 2 in n:
        points += [
            KillPoint("iter/1/summary.json", delay=(0.0, 0.05)),         # explore, iter 2
            KillPoint("iter/2/explore/*/done", 1),                       # explore / select
            *labels(2, 1 / 2),                                           # labels
            rand(0.05, 0.25),                     # anywhere in the rest (labels, last fit)
            KillPoint("iter/2/collect/done", delay=(0.0, 0.2)),          # last fit
        ]
    return [*points, rand(0.05, 0.25)]


def must_cover(ref: Path) -> set[str]:
    """Stages long enough to be killed in for sure (select and collect take milliseconds
    and are hit when lucky; a carried-over fit takes none)."""
    n = tasks_of(ref)
    must = {f"{i}/label" for i, k in n.items() if k}
    must |= {f"{i}/explore" for i in n if i > 0}
    must |= {f"{i}/train" for i in n if i < 2}
    return must


def test_kill_at_random_points_then_resume(reference: Reference, tmp_path: Path) -> None:
    """SIGKILL (and one Ctrl-C) at about 16 moments, each followed by a resume: finished
    work survives untouched and the end result is the uninterrupted one, byte for byte."""
    root, logs = tmp_path / "run", tmp_path / "logs"
    rng = random.Random(20240611)
    record: list[str] = []
    kills = sigints = 0
    for n, kp in enumerate(kill_points(reference, rng)):
        cond = count(root, kp.pattern, kp.n) if kp.pattern else None
        if cond is not None and cond():
            record.append(f"{n}: {kp.pattern} x{kp.n} already reached, skipped")
            continue
        assert_consistent(root)
        before = fingerprint(root)
        run = start(root, logs, f"{n:02d}")
        t0 = time.monotonic()
        try:
            if cond is not None:
                hit = wait_until(run, cond)
                if hit:
                    time.sleep(rng.uniform(*kp.delay))
            else:
                hit = wait_until(run, clock_reaches(t0 + kp.after))
        finally:
            code = stop(run, kp.sig)  # also when waiting failed: never leave a run behind
        if not hit or code == 0:  # the run ended before the kill: it must have finished
            assert code == 0, run.stderr()
            record.append(f"{n}: finished before the kill")
            break
        stage = stage_in_progress(root)
        record.append(f"{n}: {kp.sig.name} after {time.monotonic() - t0:.2f} s at "
                      f"{kp.pattern or 'random time'} -> killed in {stage}")
        if kp.sig == signal.SIGINT:
            assert code == 130, (code, run.stderr())
            assert "finished work is kept" in run.stderr(), run.stderr()
            sigints += 1
        else:
            assert code == -signal.SIGKILL, (code, run.stderr())
            kills += 1
        assert "Traceback" not in run.stderr(), run.stderr()
        assert_untouched(before, root, f"kill point {n}")
        assert_consistent(root)
    report = "\n".join(record)
    print(report)

    before = fingerprint(root)
    res = smallcell(root)
    assert res.returncode == 0, res.stderr
    assert_untouched(before, root, "final resume")
    assert_consistent(root)
    reference.compare(root)

    # iteration 2 checks the refit and labels nothing: one kill point fewer than before
    assert kills >= 7 and sigints == 1, report
    hit_stages = {line.rsplit("killed in ", 1)[1] for line in record if "killed in" in line}
    must = must_cover(reference.root)
    assert must <= hit_stages, f"stages not covered: {sorted(must - hit_stages)}\n{report}"


def test_continue_runs_only_new_iterations(reference: Reference, tmp_path: Path) -> None:
    """`iter --upto 1` then `--upto 2` (make iter N=2 after N=1): iteration 2 alone runs,
    iterations 0 and 1 stay untouched, and the result equals the one-shot run."""
    if 2 not in tasks_of(reference.root):
        pytest.skip("the reference converged before iteration 2: nothing to continue")
    root = tmp_path / "run"
    first = smallcell(root, upto=1)
    assert first.returncode == 0, first.stderr
    assert not (root / "iter" / "2").exists()
    every_file = {str(p.relative_to(root)): (p.stat().st_ino, p.stat().st_mtime_ns)
                  for p in real_files(root)}

    second = smallcell(root, upto=2)
    assert second.returncode == 0, second.stderr
    worked_on = set(re.findall(r"^\[iter (\d+) \|", second.stderr, flags=re.M))
    assert worked_on == {"2"}, second.stderr
    assert_untouched(every_file, root, "continue (all files of iterations 0 and 1)")
    assert_consistent(root)
    reference.compare(root)


def test_second_writer_is_refused(tmp_path: Path) -> None:
    """Two `iter` on one run folder would race on the same tasks: the second one must stop
    at once (exit 2) and name the lock and the pid holding it."""
    root = tmp_path / "run"
    lock = root / "iter" / ".lock"
    first = start(root, tmp_path / "logs", "holder")
    try:
        held = wait_until(first, lambda: lock.exists() and
                          f"pid {first.proc.pid}" in lock.read_text(), timeout=60)
        assert held, first.stderr()
        second = smallcell(root)
        assert second.returncode == 2, (second.returncode, second.stderr)
        assert ".lock" in second.stderr and f"pid {first.proc.pid}" in second.stderr, \
            second.stderr
        assert first.proc.poll() is None, "the running loop must not be disturbed"
    finally:
        stop(first)


def _make(target: str, root: Path, path: str) -> subprocess.CompletedProcess[str]:
    """`make <target>` on the run folder `root`, as a user types it."""
    return subprocess.run(["make", "-s", "-C", str(REPO), target, f"RUN_DIR={root}",
                           f"CONFIG={CONFIG}", f"N={UPTO}"], capture_output=True, text=True,
                          env=_env() | {"PATH": path}, timeout=TIMEOUT, check=False)


def _fake_slurm(bindir: Path) -> str:
    """An empty squeue and an sbatch that waits for `bindir/open` before printing a job
    id (so that a submit can be held inside its lock); returns the PATH to use."""
    bindir.mkdir(parents=True)
    scripts = {
        "squeue": "#!/bin/sh\nexit 0\n",
        "sbatch": f"#!/bin/sh\necho \"$@\" >> {bindir}/calls\n"
                  f"while [ ! -e {bindir}/open ]; do sleep 0.05; done\n"
                  f"echo $(( 100 + $(wc -l < {bindir}/calls) ))\n",
    }
    for name, text in scripts.items():
        (bindir / name).write_text(text)
        (bindir / name).chmod(0o755)
    return f"{bindir}{os.pathsep}{os.environ['PATH']}"


def test_make_iter_and_make_submit_refuse_each_other(tmp_path: Path) -> None:
    """Either order: the second refuses at once (exit 2) naming the lock and its holder,
    submits nothing, and leaves the first undisturbed; the kernel frees the lock when the
    holder is killed."""
    root = tmp_path / "run"
    lock = root / "iter" / ".lock"
    bindir = tmp_path / "fakebin"
    path = _fake_slurm(bindir)
    first = start(root, tmp_path / "logs", "holder")
    try:
        held = wait_until(first, lambda: lock.exists() and
                          f"pid {first.proc.pid}" in lock.read_text(), timeout=60)
        assert held, first.stderr()
        for target in ("submit", "iter"):
            second = _make(target, root, path)
            assert second.returncode == 2, (target, second.stdout, second.stderr)
            assert ".lock" in second.stderr and f"pid {first.proc.pid}" in second.stderr, \
                second.stderr
        assert not (bindir / "calls").exists(), "the refused submit called sbatch"
        assert first.proc.poll() is None, "the running loop must not be disturbed"
    finally:
        stop(first)  # kill -9: the lock goes with it
    submit = subprocess.Popen(["make", "-s", "-C", str(REPO), "submit", f"RUN_DIR={root}",
                               f"CONFIG={CONFIG}", f"N={UPTO}"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=_env() | {"PATH": path})
    try:
        deadline = time.monotonic() + 60
        while not (bindir / "calls").exists():  # submit is inside its lock, in sbatch
            assert submit.poll() is None, submit.communicate()[1]
            assert time.monotonic() < deadline, "submit never reached sbatch"
            time.sleep(0.01)
        second = _make("iter", root, path)
        assert second.returncode == 2, (second.stdout, second.stderr)
        assert ".lock" in second.stderr and "smallcell submit" in second.stderr, second.stderr
    finally:
        (bindir / "open").touch()
        _out, err = submit.communicate(timeout=TIMEOUT)
    assert submit.returncode == 0, err
