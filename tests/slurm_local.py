"""A real single-node Slurm 22.05 for the tests (stdlib only).

`LocalSlurm(DIR).start()` installs the Debian packages when they are missing (as root),
writes a slurm.conf with every path under DIR, starts munged, slurmctld and slurmd, and
waits until the node is idle. `stop()` ends the three daemons by the PIDs in their pid
files. The configuration is the one proven in shared/docs/slurm-local.md: accounting is
disabled, so job states are read with `scontrol show job -o`, never with sacct.

    cluster = LocalSlurm(Path("/tmp/x"))
    cluster.start()
    env = {**os.environ, **cluster.env}          # or cluster.subprocess_env()
    job = cluster.sbatch(["--array=0-3%2", "job.sh"], cwd=work)
    cluster.wait_jobs([job], timeout=60)         # {job: {0: ("COMPLETED", 0), ...}}
    cluster.stop()
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

CTLD_PORT = 6817
SLURMD_PORT = 6818
NODE = "localnode"
PARTITION = "debug"
CPUS = 4
PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
PROGRAMS = ("slurmctld", "slurmd", "munged", "sbatch", "squeue", "scontrol", "sinfo")
# Job states after which a job (or an array task) never changes again.
TERMINAL_STATES = frozenset({
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL",
    "DEADLINE", "OUT_OF_MEMORY", "SPECIAL_EXIT", "REVOKED",
})
# Process names that may carry this cluster's SLURM_CONF in their environment.
STRAY_COMMS = frozenset({"slurmstepd", "slurmd", "slurmctld", "slurmscriptd", "munged"})
# Node states (sinfo %T) of a controller that answers and a node that is usable.
READY_NODE_STATES = frozenset({"idle", "mixed", "allocated", "completing"})
_SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin", "/usr/bin"])
_ENV_PREFIXES = ("SLURM_", "SBATCH_", "SALLOC_", "SRUN_", "SQUEUE_", "SINFO_", "SCONTROL_")


class SlurmUnavailable(RuntimeError):
    """Slurm is not installed and cannot be installed here (not root): a reason to skip."""


class SlurmError(RuntimeError):
    """The local cluster could not be started, did not answer, or a command failed."""


def which(name: str) -> str | None:
    """`name` on PATH, also looking in /usr/sbin and /sbin (daemons live there)."""
    return shutil.which(name, path=_SEARCH_PATH)


def missing_programs() -> list[str]:
    return [p for p in PROGRAMS if which(p) is None]


def install_packages() -> float:
    """Install the Debian Slurm and munge packages if a program is missing; return seconds.

    0.0 when everything is already installed. Raises SlurmUnavailable when something is
    missing and this process is not root, SlurmError when apt-get fails.
    """
    missing = missing_programs()
    if not missing:
        return 0.0
    if os.geteuid() != 0:
        raise SlurmUnavailable(
            f"Slurm is not installed ({', '.join(missing)} missing) and installing it needs "
            f"root: run `apt-get install --no-install-recommends {' '.join(PACKAGES)}`"
        )
    t0 = time.monotonic()
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"],
                ["apt-get", "install", "-y", "-qq", "--no-install-recommends",
                 "-o", "DPkg::Lock::Timeout=120", *PACKAGES]):
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False,
                             stdin=subprocess.DEVNULL)
        if res.returncode != 0:
            raise SlurmError(f"`{' '.join(cmd)}` failed ({res.returncode}):\n"
                             f"{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
    still = missing_programs()
    if still:
        raise SlurmError(f"after installing {' '.join(PACKAGES)}, still missing: {still}")
    return time.monotonic() - t0


def port_in_use(port: int) -> bool:
    """True when something listens on TCP `port` (any address) on this machine."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        if s.connect_ex(("127.0.0.1", port)) == 0:
            return True
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # SO_REUSEADDR as slurmctld/slurmd use it: TIME_WAIT leftovers are not "in use".
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("", port))
        except OSError:
            return True
    return False


def _listeners(port: int) -> list[str]:
    """'PID (comm)' of the processes that listen on `port`, as far as /proc tells."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                f = line.split()
                if len(f) > 9 and f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(f[9])
    found = []
    for pid_dir in Path("/proc").iterdir():
        if not pid_dir.name.isdigit():
            continue
        try:
            links = {os.readlink(fd) for fd in (pid_dir / "fd").iterdir()}
            comm = (pid_dir / "comm").read_text().strip()
        except OSError:
            continue
        if any(f"socket:[{i}]" in links for i in inodes):
            found.append(f"{pid_dir.name} ({comm})")
    return found


def proc_state(pid: int) -> str | None:
    """The state letter in /proc/PID/stat (R, S, Z, ...), None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def alive(pid: int) -> bool:
    """A process that exists and is not a zombie (daemons are reparented; nobody reaps)."""
    return proc_state(pid) not in (None, "Z", "X")


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError as exc:
        return f"  ({path}: {exc.strerror})"
    return "\n".join(f"  {line}" for line in text) or f"  ({path} is empty)"


def _exit_code(value: str) -> int:
    """scontrol's ExitCode=STATUS:SIGNAL as a shell would report it (128+signal if killed)."""
    status, _, sig = value.partition(":")
    return 128 + int(sig) if sig and int(sig) else int(status)


def _task_ids(spec: str) -> list[int]:
    """ArrayTaskId=0-5%2 / 1,3-4 / 7 -> the task numbers (the %N throttle is dropped)."""
    ids: list[int] = []
    for part in spec.split("%", 1)[0].split(","):
        lo, _, rest = part.partition("-")
        hi, _, step = rest.partition(":")
        ids.extend(range(int(lo), int(hi or lo) + 1, int(step or 1)))
    return ids


class LocalSlurm:
    """One single-node Slurm cluster whose files all live under `root`.

    Attributes after start(): `conf` (slurm.conf), `env` ({"SLURM_CONF": ...}),
    `install_seconds` (0.0 when nothing was installed), `start_seconds` (daemons started
    until the node is idle). One runs per pair of `ports` (default 6817/6818, the test
    suite's): a benchmark's cluster on other ports can run beside it.
    """

    def __init__(self, root: Path | str, *, cpus: int = CPUS, start_timeout: float = 30.0,
                 ports: tuple[int, int] = (CTLD_PORT, SLURMD_PORT)):
        self.root = Path(root).resolve()
        self.cpus = cpus
        # other ports let a benchmark's cluster run beside the test suite's
        self.ctld_port, self.slurmd_port = ports
        self.start_timeout = start_timeout
        self.conf = self.root / "slurm.conf"
        self.munge_dir = self.root / "munge"
        self.socket = self.munge_dir / "munge.socket.2"
        self.logs = {"slurmctld": self.root / "log" / "slurmctld.log",
                     "slurmd": self.root / "log" / "slurmd.log",
                     "munged": self.munge_dir / "munged.log"}
        self.pid_files = {"slurmd": self.root / "run" / "slurmd.pid",
                          "slurmctld": self.root / "run" / "slurmctld.pid",
                          "munged": self.munge_dir / "munged.pid"}
        self.install_seconds: float | None = None
        self.start_seconds: float | None = None
        self.started = False

    # -- environment ---------------------------------------------------------------------
    @property
    def env(self) -> dict[str, str]:
        """What to add to a subprocess environment so Slurm commands talk to this cluster."""
        return {"SLURM_CONF": str(self.conf)}

    def subprocess_env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """`base` (default os.environ) without SLURM_*/SBATCH_*/... variables, plus env.

        Dropping them keeps a test run inside a real cluster's job from leaking that job's
        settings (SBATCH_PARTITION, SLURM_JOB_ID, ...) into this cluster.
        """
        base = os.environ if base is None else base
        env = {k: v for k, v in base.items() if not k.startswith(_ENV_PREFIXES)}
        return {**env, **self.env}

    # -- files ---------------------------------------------------------------------------
    def slurm_conf_text(self) -> str:
        d = self.root
        return "\n".join([
            "ClusterName=localci",
            "SlurmctldHost=localhost",
            f"SlurmctldPort={self.ctld_port}",
            f"SlurmdPort={self.slurmd_port}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.socket}",
            f"StateSaveLocation={d}/state",
            f"SlurmdSpoolDir={d}/spool/slurmd-%n",
            f"SlurmctldPidFile={self.pid_files['slurmctld']}",
            f"SlurmdPidFile={self.pid_files['slurmd']}",
            f"SlurmctldLogFile={self.logs['slurmctld']}",
            f"SlurmdLogFile={self.logs['slurmd']}",
            f"PlugStackConfig={d}/etc/plugstack.conf",
            "MailProg=/bin/true",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/filetxt",
            f"JobCompLoc={d}/log/jobcomp.txt",
            "SwitchType=switch/none",
            "MpiDefault=none",
            "SchedulerType=sched/backfill",
            "SchedulerParameters=batch_sched_delay=0",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "SlurmdParameters=config_overrides",
            "MaxArraySize=10001",
            "MaxJobCount=100000",
            "ReturnToService=2",
            "KillWait=5",
            "MinJobAge=3600",
            "InactiveLimit=0",
            f"NodeName={NODE} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory=1024 State=UNKNOWN",
            f"PartitionName={PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
            "",
        ])

    def write_files(self) -> None:
        """slurm.conf, the munge key (1 KiB, 0600), the 0755 socket dir, plugstack.conf."""
        if len(str(self.socket)) > 100:  # sun_path holds 108 bytes
            raise SlurmError(f"{self.root} is too deep for a unix socket path: use a shorter dir")
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)
        # munged: "Socket is inaccessible: execute permissions for all required" on every
        # ancestor of the socket (pytest's own tmp dirs are 0700: use tempfile.mkdtemp)
        for parent in self.root.parents:
            if not parent.stat().st_mode & 0o001:
                raise SlurmError(f"{parent} is not executable for all (munged refuses a socket "
                                 f"below it): put the cluster dir elsewhere, e.g. under /tmp")
        for sub in ("state", "spool", "run", "log", "etc"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.munge_dir.mkdir(parents=True, exist_ok=True)
        self.munge_dir.chmod(0o755)  # 0700 fails: "Socket is inaccessible"
        key = self.munge_dir / "munge.key"
        if not key.exists():
            key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        (self.root / "etc" / "plugstack.conf").write_text("")
        self.conf.write_text(self.slurm_conf_text())

    # -- commands ------------------------------------------------------------------------
    def run(self, *cmd: str, check: bool = True, timeout: float = 30.0,
            cwd: Path | str | None = None) -> subprocess.CompletedProcess[str]:
        """Run a command against this cluster (SLURM_CONF set); SlurmError when it fails."""
        prog = which(cmd[0]) or cmd[0]
        res = subprocess.run([prog, *cmd[1:]], capture_output=True, text=True, check=False,
                             env=self.subprocess_env(), cwd=cwd, timeout=timeout,
                             stdin=subprocess.DEVNULL)
        if check and res.returncode != 0:
            raise SlurmError(f"`{' '.join(cmd)}` failed ({res.returncode}): "
                             f"{res.stderr.strip() or res.stdout.strip()}")
        return res

    def sbatch(self, args: Iterable[str], cwd: Path | str | None = None) -> str:
        """`sbatch --parsable ARGS` from `cwd`; the job id (for arrays, the array's id)."""
        out = self.run("sbatch", "--parsable", *args, cwd=cwd).stdout.strip()
        return out.split(";", 1)[0]

    def node_state(self) -> str | None:
        """sinfo's state of the node ("idle", "mixed", ...), None when the controller is down."""
        try:
            res = self.run("sinfo", "-h", "-o", "%T", check=False, timeout=10)
        except subprocess.TimeoutExpired:
            return None
        if res.returncode != 0:
            return None
        return res.stdout.strip() or None

    def job_state(self, job_id: str | int) -> dict[int | None, tuple[str, int]]:
        """{task id (None for a plain job): (JobState, exit code)} from `scontrol show job -o`.

        The exit code is the script's status, or 128+signal when a signal ended it
        (ExitCode=0:15 -> 143). Pending array tasks that Slurm still keeps as one record
        (ArrayTaskId=2-5%2) are listed one by one. {} when the controller does not know the
        job (never submitted, or purged after MinJobAge).
        """
        res = self.run("scontrol", "show", "job", "-o", str(job_id), check=False)
        if res.returncode != 0:
            if "Invalid job id" in res.stderr + res.stdout:
                return {}
            raise SlurmError(f"scontrol show job {job_id} failed: {res.stderr.strip()}")
        states: dict[int | None, tuple[str, int]] = {}
        for line in res.stdout.splitlines():
            fields = dict(re.findall(r"(?:^|\s)(JobState|ExitCode|ArrayTaskId)=(\S+)", line))
            if "JobState" not in fields:
                continue
            value = (fields["JobState"], _exit_code(fields.get("ExitCode", "0:0")))
            if "ArrayTaskId" in fields:
                for task in _task_ids(fields["ArrayTaskId"]):
                    states[task] = value
            else:
                states[None] = value
        return states

    def wait_jobs(self, ids: Iterable[str | int], timeout: float = 60.0,
                  poll: float = 0.2) -> dict[str, dict[int | None, tuple[str, int]]]:
        """Poll until every job (each array task) is in a final state; return job_state of each.

        Never uses `sbatch --wait` (it polls at 2, 8, 32 s). TimeoutError names the jobs that
        are still pending or running and why (e.g. DependencyNeverSatisfied).
        """
        ids = [str(i) for i in ids]
        deadline = time.monotonic() + timeout
        while True:
            states = {i: self.job_state(i) for i in ids}
            if all(s and all(st in TERMINAL_STATES for st, _ in s.values())
                   for s in states.values()):
                return states
            if time.monotonic() > deadline:
                busy = {i: s for i, s in states.items()
                        if not s or any(st not in TERMINAL_STATES for st, _ in s.values())}
                reasons = {i: self.run("squeue", "-h", "-j", i, "-o", "%i %T %r",
                                       check=False).stdout.strip() for i in busy}
                raise TimeoutError(f"jobs not finished after {timeout:.0f} s: {busy}; "
                                   f"squeue: {reasons}")
            time.sleep(poll)

    # -- daemons -------------------------------------------------------------------------
    def _pid(self, daemon: str) -> int | None:
        try:
            return int(self.pid_files[daemon].read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def _start_daemon(self, *cmd: str) -> None:
        prog = which(cmd[0])
        if prog is None:
            raise SlurmError(f"{cmd[0]} is not installed")
        res = subprocess.run([prog, *cmd[1:]], capture_output=True, text=True, check=False,
                             env=self.subprocess_env(), stdin=subprocess.DEVNULL, timeout=60)
        if res.returncode != 0:
            raise SlurmError(f"`{' '.join(cmd)}` exited {res.returncode}: "
                             f"{(res.stderr or res.stdout).strip()}\n{self._log_tails()}")

    def _start_ctld(self) -> None:
        self._start_daemon("slurmctld", "-i")

    def _log_tails(self) -> str:
        return "\n".join(f"{name} log {path}:\n{_tail(path)}" for name, path in self.logs.items())

    def _wait_ready(self, states: frozenset[str], what: str) -> None:
        deadline = time.monotonic() + self.start_timeout
        state = None
        while time.monotonic() < deadline:
            state = self.node_state()
            if state in states:
                return
            time.sleep(0.1)
        raise SlurmError(f"{what}: node state {state!r} after {self.start_timeout:.0f} s "
                         f"(wanted {sorted(states)})\n{self._log_tails()}")

    def check_ports(self) -> None:
        busy = [p for p in (self.ctld_port, self.slurmd_port) if port_in_use(p)]
        if busy:
            who = {p: _listeners(p) for p in busy}
            raise SlurmError(
                f"port(s) {', '.join(map(str, busy))} already in use (slurmctld needs "
                f"{self.ctld_port}, slurmd {self.slurmd_port}); listening: {who}. Another "
                "Slurm runs on this machine: stop it, or give this one other `ports`"
            )

    def start(self) -> LocalSlurm:
        """Install if needed, write the files, start munged/slurmctld/slurmd, wait for idle."""
        if self.started:
            return self
        self.install_seconds = install_packages()
        self.check_ports()
        self.write_files()
        t0 = time.monotonic()
        try:
            m = self.munge_dir
            self._start_daemon("munged", f"--key-file={m}/munge.key", f"--socket={self.socket}",
                               f"--pid-file={self.pid_files['munged']}",
                               f"--log-file={self.logs['munged']}", f"--seed-file={m}/seed")
            self.started = True
            self._start_ctld()
            self._start_daemon("slurmd", "-N", NODE)
            self._wait_ready(frozenset({"idle"}), "slurm did not come up")
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - t0
        return self

    def _kill(self, daemon: str, sig: signal.Signals = signal.SIGTERM,
              grace: float = 10.0) -> None:
        """Signal the daemon by its pid file; SIGKILL after `grace`; zombies count as gone."""
        pid = self._pid(daemon)
        # a stale pid file may name a reused pid: only signal a process with the right name
        if pid is None or not alive(pid) or not _comm(pid).startswith(daemon[:15]):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while alive(pid):
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                deadline = time.monotonic() + grace
                sig = signal.SIGKILL
            time.sleep(0.05)

    def wait_state_saved(self, since: float | None = None, timeout: float = 15.0) -> None:
        """Wait until slurmctld has written its job state (StateSaveLocation/job_state) after
        `since` (a time.time(); default now). slurmctld coalesces state saves for up to 5 s,
        so a SIGKILL sooner than that after a submission loses the new jobs."""
        since = time.time() if since is None else since
        path = self.root / "state" / "job_state"
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(OSError):
                if path.stat().st_mtime > since:
                    return
            if time.monotonic() > deadline:
                raise SlurmError(f"{path} not written within {timeout:.0f} s")
            time.sleep(0.05)

    def restart_controller(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """Kill slurmctld (`sig`) and start it again from its saved state; return once it
        answers again (the node idle, mixed or allocated).

        SIGTERM makes slurmctld save its state before it exits. SIGKILL (a crash) keeps only
        what was last saved, up to 5 s old: call wait_state_saved() first to keep the queue.
        """
        self._kill("slurmctld", sig)
        self._start_ctld()
        self._wait_ready(READY_NODE_STATES, "slurmctld did not come back")

    def cancel_all(self, timeout: float = 15.0) -> None:
        """scancel every job of this cluster and wait (briefly) until the queue is empty."""
        pid = self._pid("slurmctld")
        if pid is None or not alive(pid) or self.node_state() is None:
            return
        self.run("scancel", f"--partition={PARTITION}", check=False)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            res = self.run("squeue", "-h", "-o", "%i", check=False)
            if res.returncode != 0 or not res.stdout.strip():
                return
            time.sleep(0.2)

    def strays(self) -> list[int]:
        """Live processes of this cluster, found by its SLURM_CONF in their environment:
        daemons, and jobs (SLURM_JOB_ID set); never this process or its ancestors. After the
        daemons stop, what is left is e.g. the slurmstepd of a job the controller lost in a
        SIGKILL restart (it waits forever) and that job's processes."""
        mine = f"SLURM_CONF={self.conf}".encode()
        keep, pid = set(), os.getpid()
        while pid > 1:
            keep.add(pid)
            try:
                pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                break
        found = []
        for pid_dir in Path("/proc").iterdir():
            if not pid_dir.name.isdigit() or int(pid_dir.name) in keep:
                continue
            try:
                env = (pid_dir / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            pid = int(pid_dir.name)
            if mine in env and alive(pid) and (
                    _comm(pid) in STRAY_COMMS or any(v.startswith(b"SLURM_JOB_ID=") for v in env)):
                found.append(pid)
        return found

    def stop(self, grace: float = 10.0) -> None:
        """Cancel the jobs, end slurmd, slurmctld and munged by their pid files, then any
        stray process of this cluster (SIGTERM, SIGKILL after `grace`)."""
        with contextlib.suppress(Exception):
            self.cancel_all()
        for daemon in ("slurmd", "slurmctld", "munged"):
            self._kill(daemon, signal.SIGTERM, grace)
        strays = self.strays()
        for sig, wait in ((signal.SIGTERM, 2.0), (signal.SIGKILL, grace)):
            for pid in strays:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + wait
            while (strays := [p for p in strays if alive(p)]) and time.monotonic() < deadline:
                time.sleep(0.05)
        self.started = False

    def __enter__(self) -> LocalSlurm:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
