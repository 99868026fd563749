"""engines/process.py: setup lines without re-parsing the argv, exit statuses, timeouts and
interrupts that stop the whole process group, programs that cannot start, log tails."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from smallcell.engines.mlip3 import Mlip3Error, Mlip3Settings, call_mlp
from smallcell.engines.process import (
    ProgramNotFound,
    run_logged,
    tail_line,
    with_setup,
)

#: Words a shell would re-parse: spaces, separators, substitutions, quotes, globs, newlines.
NASTY = ["a path/with spaces", "x; touch PWNED1", "$(touch PWNED2)", "`touch PWNED3`",
         "it's \"quoted\"", "$HOME", "*", "two\nlines", "", "--flag=a b"]

ARGV_DUMP = """\
import json, os, sys
with open(os.environ["ARGV_LOG"], "w") as fh:
    json.dump({"argv": sys.argv[1:], "mark": os.environ.get("SETUP_MARK"),
               "cwd": os.getcwd()}, fh)
"""


def _run(tmp_path: Path, argv: list[str], timeout: float | None = 20,
         grace: float = 1.0) -> int | None:
    return run_logged(argv, tmp_path, tmp_path / "out.log", tmp_path / "err.log", timeout,
                      grace=grace)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"  # a zombie waiting for init to reap it is dead


def _gone(pid: int, within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


def test_with_setup_shape() -> None:
    assert with_setup(["lmp", "-in", "in.lammps"], [], "x") == ["lmp", "-in", "in.lammps"]
    argv = with_setup(["lmp", "a b"], ["module load lammps", "export X=1"], "smallcell-x")
    assert argv == ["bash", "-c", 'module load lammps\nexport X=1\nexec "$@"', "smallcell-x",
                    "lmp", "a b"]


@pytest.mark.parametrize("setup", [[], ["export SETUP_MARK='set up ok'  # a comment", "true"]])
def test_argv_passed_verbatim(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                              setup: list[str]) -> None:
    folder = tmp_path / "dir with spaces; $(touch PWNED0) 'q'"
    folder.mkdir()
    prog = folder / "prog.py"
    prog.write_text(ARGV_DUMP)
    log = tmp_path / "argv.json"
    monkeypatch.setenv("ARGV_LOG", str(log))
    work = tmp_path / "work"
    work.mkdir()
    argv = with_setup([sys.executable, str(prog), *NASTY], setup, "smallcell-test")
    assert _run(work, argv) == 0, (work / "err.log").read_text()
    got = json.loads(log.read_text())
    assert got["argv"] == NASTY
    assert got["mark"] == ("set up ok" if setup else None)
    assert Path(got["cwd"]) == work
    assert not list(tmp_path.rglob("PWNED*"))


def test_setup_lines_run_in_order_in_cwd(tmp_path: Path) -> None:
    argv = with_setup(["cat", "marker"], ["echo first > marker", "echo second >> marker"], "t")
    assert _run(tmp_path, argv) == 0
    assert (tmp_path / "out.log").read_text() == "first\nsecond\n"


def test_a_missing_program_after_setup_is_status_127(tmp_path: Path) -> None:
    argv = with_setup([str(tmp_path / "no-such-program")], ["true"], "smallcell-test")
    assert _run(tmp_path, argv) == 127
    assert "no-such-program" in tail_line(tmp_path / "err.log")
    assert tail_line(tmp_path / "err.log").startswith("smallcell-test")  # bash's $0


def test_exit_statuses_logs_stdin_and_session(tmp_path: Path) -> None:
    py = sys.executable
    assert _run(tmp_path, [py, "-c", "pass"]) == 0
    assert _run(tmp_path, [py, "-c", "import sys; sys.exit(3)"]) == 3
    assert _run(tmp_path, ["bash", "-c", "kill -TERM $$"]) == -signal.SIGTERM
    assert _run(tmp_path, [py, "-c", "import os; os.kill(os.getpid(), 9)"]) == -signal.SIGKILL
    script = ("import os, sys; print(repr(sys.stdin.read()), os.getsid(0) == os.getpid()); "
              "print('to stderr', file=sys.stderr)")
    assert _run(tmp_path, [py, "-c", script]) == 0
    assert (tmp_path / "out.log").read_text() == "'' True\n"  # stdin empty, own session
    assert (tmp_path / "err.log").read_text() == "to stderr\n"


@pytest.mark.parametrize("child", [
    "sleep 60",
    '(trap "" TERM; exec sleep 60)',  # ignores SIGTERM and outlives its parent: SIGKILL
])
def test_timeout_kills_the_process_group(tmp_path: Path, child: str) -> None:
    argv = ["bash", "-c", f"{child} & echo $! > child.pid; wait"]
    t0 = time.perf_counter()
    assert _run(tmp_path, argv, timeout=0.5, grace=0.5) is None
    assert time.perf_counter() - t0 < 8
    pid = int((tmp_path / "child.pid").read_text())
    assert _gone(pid), f"child {pid} survived the timeout"


class _Interrupt(BaseException):
    pass


def test_an_interrupt_kills_the_group_and_is_raised(tmp_path: Path) -> None:
    def interrupt(signum: int, frame: object) -> None:
        raise _Interrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.5)
        with pytest.raises(_Interrupt):
            _run(tmp_path, ["bash", "-c", "sleep 60 & echo $! > child.pid; wait"],
                 timeout=None)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    pid = int((tmp_path / "child.pid").read_text())
    assert _gone(pid), f"child {pid} survived the interrupt"


def test_program_not_found(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-program")
    with pytest.raises(ProgramNotFound) as err:
        _run(tmp_path, [missing, "arg"])
    assert err.value.program == missing and not err.value.not_executable
    assert err.value.reason
    plain = tmp_path / "not-executable"
    plain.write_text("#!/bin/sh\necho hi\n")
    plain.chmod(0o644)
    with pytest.raises(ProgramNotFound) as err:
        _run(tmp_path, [str(plain)])
    assert err.value.program == str(plain) and err.value.not_executable


def test_tail_line(tmp_path: Path) -> None:
    assert tail_line("") == ""
    assert tail_line("a\n\n  b   c \n\n d\n") == "b c | d"
    assert tail_line("a\nb\nc\n", lines=3) == "a | b | c"
    assert tail_line("x" * 50, limit=10) == "..." + "x" * 10
    log = tmp_path / "log"
    log.write_text("noise\n" * 5000 + "ERROR: lost atoms\n\n")
    assert tail_line(log) == "noise | ERROR: lost atoms"
    assert tail_line(tmp_path / "missing") == ""
    assert tail_line(str(log)) == str(log)  # a str is text, not a path


def test_mlip3_setup_lines(tmp_path: Path) -> None:
    mlp = [sys.executable, "-c",
           "import os, sys; print(os.environ.get('SETUP_MARK'), sys.argv[1:])"]
    run = call_mlp(mlp, ["list", "a b; c", "$(x)"], tmp_path,
                   setup=["export SETUP_MARK='set up'"])
    assert run.stdout == "set up ['list', 'a b; c', '$(x)']\n"
    assert run.argv == [*mlp, "list", "a b; c", "$(x)"]  # mlp's argv, not the wrapper
    with pytest.raises(Mlip3Error, match=r"exit status 127: .*no-such-mlp.*setup lines"):
        call_mlp([str(tmp_path / "no-such-mlp")], ["list"], tmp_path, setup=["true"])


def test_mlip3_settings_setup() -> None:
    s = Mlip3Settings(setup=["module load mlip", 3])  # type: ignore[list-item]
    assert s.setup == ["module load mlip", "3"]
    assert Mlip3Settings().setup == []
    from smallcell.engines.motep_mtp import TrainSettings

    assert s.with_fit(TrainSettings()).setup == s.setup
    with pytest.raises(ValueError, match="setup"):
        Mlip3Settings(setup="module load mlip")  # type: ignore[arg-type]
