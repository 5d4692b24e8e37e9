"""A private single-node Slurm cluster for integration tests (Debian's slurm-wlm and munge).

Everything the cluster needs lives in one temporary folder: the munge key and socket,
slurm.conf and gres.conf, controller state, slurmd spool, logs, and two fake GPU device
nodes that make the node offer ``gpu:<type>:2`` gres (so jobs submitted with ``--gpus``
are scheduled and get ``CUDA_VISIBLE_DEVICES``). Ports are picked free. Only one file
is written outside that folder: a copy of slurm.conf at ``/etc/slurm/slurm.conf``,
because the executor plugin's job step strips ``SLURM_CONF`` from the environment of
the ``srun`` it runs inside each job, and ``srun`` then reads the default path. It is
written only where no Slurm configuration exists and removed on stop.

Choices that make Slurm run on a plain (container or VM) test machine:
``proctrack/linuxproc`` and ``task/none`` (no cgroups needed), no accounting database
(``accounting_storage/none``; the workflow's status queries then use ``squeue``, which
needs finished jobs to stay visible: ``MinJobAge`` is 600 s), and the daemons run as
root in the foreground as children of this process, so they are stopped by their ids.

Usable on its own for debugging: ``python tests/slurm/cluster.py`` starts a cluster,
prints the environment to use, and stops it on Enter.
"""
from __future__ import annotations

import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

SYSTEM_CONF = Path("/etc/slurm/slurm.conf")
MARKER = "# written by prompt-transfer-workflow tests/slurm/cluster.py for "
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "srun", "squeue", "scontrol", "scancel", "sinfo")
PACKAGES = ("slurm-wlm", "munge")
SBIN = "/usr/sbin:/sbin:/usr/bin:/bin"


class Unavailable(Exception):
    """Slurm cannot be installed or started on this machine (the reason says why)."""


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path=SBIN)


def _missing() -> list[str]:
    return [b for b in DAEMONS + CLIENTS if _which(b) is None]


def ensure_installed(log=print) -> None:
    """Install slurm-wlm and munge with apt-get where they are missing; raise Unavailable if that cannot be done."""
    if platform.system() != "Linux":
        raise Unavailable(f"a Slurm test cluster needs Linux, this is {platform.system()}")
    if not _missing():
        return
    if os.geteuid() != 0:
        raise Unavailable(f"Slurm is not installed ({', '.join(_missing())} missing) and installing it needs root")
    if os.environ.get("PTW_SLURM_INSTALL", "1") == "0":
        raise Unavailable("Slurm is not installed and PTW_SLURM_INSTALL=0 forbids installing it")
    apt = _which("apt-get")
    if apt is None:
        raise Unavailable(f"Slurm is not installed ({', '.join(_missing())} missing) and there is no apt-get "
                          f"to install {' and '.join(PACKAGES)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive", "PATH": f"{os.environ.get('PATH', '')}:{SBIN}"}
    install = [apt, "install", "-y", "-q", "--no-install-recommends", "-o", "DPkg::Lock::Timeout=300", *PACKAGES]
    out = ""
    for cmd in (install, [apt, "update", "-q", "-o", "DPkg::Lock::Timeout=300"], install):
        log(f"slurm test set-up: {' '.join(cmd)}")
        try:
            res = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=900)
        except subprocess.TimeoutExpired:
            raise Unavailable(f"'{' '.join(cmd)}' did not finish within 900 s") from None
        out = (res.stdout + res.stderr).strip()
        if cmd is install and res.returncode == 0 and not _missing():
            return
    last = [line for line in out.splitlines() if line.strip()][-3:]
    raise Unavailable(f"apt-get could not install {' and '.join(PACKAGES)}: {' | '.join(last) or 'no output'}")


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _hardware() -> dict:
    """The node's CPU layout and memory as slurmd itself reports them (``slurmd -C``)."""
    out = subprocess.run([_which("slurmd"), "-C"], capture_output=True, text=True, timeout=60).stdout
    fields = dict(re.findall(r"(\w+)=(\S+)", out.splitlines()[0] if out else ""))
    keep = ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore", "RealMemory")
    if not all(k in fields for k in keep):
        raise Unavailable(f"'slurmd -C' did not describe the node: {out.strip()[:200]}")
    return {k: fields[k] for k in keep}


def parse_records(text: str) -> list[dict]:
    """``scontrol show job -d -o`` (one job a line, ``Key=Value`` tokens) as dicts."""
    jobs = []
    for line in text.splitlines():
        rec, key = {}, None
        for token in line.split():
            k, sep, v = token.partition("=")
            if sep and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_:/]*", k):
                key, rec[k] = k, v
            elif key is not None:  # a value with spaces
                rec[key] += " " + token
        if rec:
            jobs.append(rec)
    return jobs


class SlurmCluster:
    def __init__(self, partition: str = "main", gpu_type: str = "fake", gpus: int = 2, min_job_age: int = 600):
        self.partition, self.gpu_type, self.gpus, self.min_job_age = partition, gpu_type, gpus, min_job_age
        self.dir: Path | None = None
        self.procs: dict[str, subprocess.Popen] = {}
        self.wrote_system_conf = False

    # -- paths and environment ----------------------------------------------------------------
    @property
    def conf(self) -> Path:
        return self.dir / "etc" / "slurm.conf"

    def env(self, base: dict | None = None) -> dict:
        env = dict(os.environ if base is None else base)
        env["SLURM_CONF"] = str(self.conf)
        env["PATH"] = f"{env.get('PATH', '')}:{SBIN}"
        return env

    def run(self, *cmd: str, check: bool = True, timeout: int = 60) -> str:
        res = subprocess.run([_which(cmd[0]) or cmd[0], *cmd[1:]], env=self.env(), capture_output=True, text=True,
                             timeout=timeout)
        if check and res.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({res.returncode}): {res.stderr.strip()}")
        return res.stdout

    def profile(self) -> Path:
        """A global Snakemake profile with this cluster's executor settings (status via squeue: no slurmdbd)."""
        d = self.dir / "snakemake-profile"
        d.mkdir(exist_ok=True)
        (d / "config.yaml").write_text(
            "# settings of the test cluster, not of the workflow\n"
            "slurm-status-command: squeue\n"
            "slurm-init-seconds-before-status-checks: 2\n")
        return d

    # -- start / stop ---------------------------------------------------------------------------
    def start(self, timeout: float = 90) -> "SlurmCluster":
        if os.geteuid() != 0:
            raise Unavailable("starting slurmd and munged needs root")
        self._clean_stale()
        if SYSTEM_CONF.exists() and MARKER not in SYSTEM_CONF.read_text(errors="replace"):
            raise Unavailable(f"{SYSTEM_CONF} exists: this machine has its own Slurm configuration, "
                              f"which the test does not touch")
        self.dir = Path(tempfile.mkdtemp(prefix="ptw-slurm-"))
        self.dir.chmod(0o755)  # munged wants its socket's folders reachable by all
        for sub in ("etc", "run", "state", "spool", "log", "dev", "munge"):
            (self.dir / sub).mkdir(mode=0o755)
        (self.dir / "munge").chmod(0o700)
        try:
            self._start_munge()
            self._write_config()
            self._start("slurmctld", [_which("slurmctld"), "-D", "-f", str(self.conf)])
            self._start("slurmd", [_which("slurmd"), "-D", "-f", str(self.conf), "-N", "ptwnode"])
            self._wait_idle(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, name: str, cmd: list[str]) -> None:
        out = open(self.dir / "log" / f"{name}.out", "wb")
        self.procs[name] = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                            env=self.env(), start_new_session=True)
        out.close()

    def _start_munge(self) -> None:
        key = self.dir / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        self.munge_socket = self.dir / "run" / "munge.sock"
        self._start("munged", [_which("munged"), "-F", f"--key-file={key}", f"--socket={self.munge_socket}",
                               f"--pid-file={self.dir / 'run' / 'munged.pid'}",
                               f"--log-file={self.dir / 'log' / 'munged.log'}",
                               f"--seed-file={self.dir / 'munge' / 'munged.seed'}"])
        deadline = time.monotonic() + 20
        while not self.munge_socket.exists():
            if self.procs["munged"].poll() is not None or time.monotonic() > deadline:
                raise Unavailable(f"munged did not start: {self.log_tail('munged.log', 'munged.out')}")
            time.sleep(0.1)

    def _write_config(self) -> None:
        hw = _hardware()
        devices = []
        for i in range(self.gpus):
            dev = self.dir / "dev" / f"gpu{i}"
            try:
                os.mknod(dev, 0o666 | 0o020000, os.makedev(1, 3))  # a character device (like /dev/null)
            except OSError as e:
                raise Unavailable(f"cannot create fake GPU device nodes ({e}); slurmd accepts only devices") from None
            devices.append(dev)
        ctl_port, node_port = _free_ports(2)
        d = self.dir
        conf = f"""{MARKER}{d} by pid {os.getpid()}
ClusterName=ptwtest
SlurmctldHost={socket.gethostname().split('.')[0]}(127.0.0.1)
SlurmctldPort={ctl_port}
SlurmdPort={node_port}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket}
SlurmUser=root
SlurmdUser=root
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/run/slurmctld.pid
SlurmdPidFile={d}/run/slurmd.pid
SlurmctldLogFile={d}/log/slurmctld.log
SlurmdLogFile={d}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge={self.min_job_age}
ReturnToService=2
MpiDefault=none
SwitchType=switch/none
MailProg=/bin/true
GresTypes=gpu
NodeName=ptwnode NodeAddr=127.0.0.1 NodeHostname={socket.gethostname().split('.')[0]} \
{' '.join(f'{k}={v}' for k, v in hw.items())} Gres=gpu:{self.gpu_type}:{self.gpus} State=UNKNOWN
PartitionName={self.partition} Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""
        self.conf.write_text(conf)
        (self.conf.parent / "gres.conf").write_text(
            "AutoDetect=off\n" + "".join(f"NodeName=ptwnode Name=gpu Type={self.gpu_type} File={dev}\n"
                                         for dev in devices))
        SYSTEM_CONF.parent.mkdir(parents=True, exist_ok=True)
        SYSTEM_CONF.write_text(conf)
        self.wrote_system_conf = True

    def _wait_idle(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            for name, p in self.procs.items():
                if p.poll() is not None:
                    raise Unavailable(f"{name} exited with status {p.returncode}: "
                                      f"{self.log_tail(f'{name}.log', f'{name}.out')}")
            state = self.run("sinfo", "-h", "-N", "-o", "%T", check=False).strip()
            if state == "idle":
                return
            time.sleep(0.5)
        reason = self.run("scontrol", "show", "node", "ptwnode", check=False)
        raise Unavailable(f"the node did not become idle within {timeout:.0f} s (state '{state}'; "
                          f"{' '.join(re.findall(r'Reason=.*', reason)) or 'no reason'}): "
                          f"{self.log_tail('slurmd.log', 'slurmctld.log')}")

    def cancel_all(self, wait: float = 20) -> None:
        ids = self.run("squeue", "-h", "-t", "PENDING,RUNNING,CONFIGURING,COMPLETING", "-o", "%i", check=False).split()
        if ids:
            self.run("scancel", *ids, check=False)
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and self.run(
                    "squeue", "-h", "-t", "PENDING,RUNNING,CONFIGURING,COMPLETING", "-o", "%i", check=False).split():
                time.sleep(0.5)

    def stop(self) -> None:
        if self.dir is None:
            return
        if self.procs.get("slurmctld") and self.procs["slurmctld"].poll() is None:
            try:
                self.cancel_all()
            except (OSError, subprocess.SubprocessError):
                pass
        for name in ("slurmd", "slurmctld", "munged"):  # clients first, then the controller, then auth
            p = self.procs.pop(name, None)
            if p is None or p.poll() is not None:
                continue
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)
        if self.wrote_system_conf and SYSTEM_CONF.exists() and f"{MARKER}{self.dir} " in SYSTEM_CONF.read_text():
            SYSTEM_CONF.unlink()
        self.wrote_system_conf = False

    def remove(self) -> None:
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)

    def _clean_stale(self) -> None:
        """Stop the daemons of an earlier run of this helper that was killed before it could stop them."""
        if not SYSTEM_CONF.exists():
            return
        text = SYSTEM_CONF.read_text(errors="replace")
        if MARKER not in text:
            return
        where, _, owner = text.split(MARKER, 1)[1].splitlines()[0].partition(" by pid ")
        old = Path(where)
        if owner.isdigit() and Path(f"/proc/{owner}").exists():
            raise Unavailable(f"another test cluster is running (started by pid {owner}, in {old})")
        for pidfile in ("slurmd.pid", "slurmctld.pid", "munged.pid"):
            try:
                pid = int((old / "run" / pidfile).read_text().split()[0])
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            except (OSError, ValueError, IndexError):
                continue
            if str(old) in cmdline:  # one of ours: its command line names the old cluster folder
                os.kill(pid, signal.SIGTERM)
        SYSTEM_CONF.unlink()
        shutil.rmtree(old, ignore_errors=True)

    # -- inspection -----------------------------------------------------------------------------
    def jobs(self) -> list[dict]:
        """Slurm's own records of every job still known to the controller (kept ``MinJobAge`` seconds)."""
        return parse_records(self.run("scontrol", "show", "job", "-d", "-o", check=False))

    def log_tail(self, *names: str, lines: int = 15) -> str:
        out = []
        for name in names:
            p = self.dir / "log" / name if self.dir else None
            if p and p.exists():
                tail = [line for line in p.read_text(errors="replace").splitlines() if line.strip()][-lines:]
                out.append(f"[{name}] " + " | ".join(tail))
        return " ".join(out) or "(no log)"


if __name__ == "__main__":
    ensure_installed()
    cluster = SlurmCluster().start()
    try:
        print(f"cluster up in {cluster.dir}\n  export SLURM_CONF={cluster.conf}\n"
              f"  snakemake --profile {cluster.profile()} --workflow-profile workflow/profiles/slurm")
        input("press Enter to stop it ")
    finally:
        cluster.stop()
        cluster.remove()
