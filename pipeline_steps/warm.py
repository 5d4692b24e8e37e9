"""Warm start for local runs: a worker that has imported torch and transformers once forks a child
for each job, so a job skips the ~6 s of imports a fresh Python pays (a quarter of the demo's CPU).

How it fits together:

- ``start()`` (the Snakefile's ``onstart``, local runs only) launches ``python -m pipeline_steps.warm
  serve`` and puts its socket path into ``PTW_WARM_SOCKET``, which every job inherits.
- A job's ``python -m pipeline_steps STEP ...`` (cli.main) calls ``run_in_worker(argv)`` first: it
  connects, sends its arguments, working directory and environment, and hands over its stdin, stdout
  and stderr (so the child writes straight into the job's log). The worker forks; the child runs
  ``pipeline_steps/__main__.py`` as the job would, on a fresh import of ``pipeline_steps`` (code edits
  take effect; this module never imports the CLI), and exits with the step's status, which the worker
  passes back. The job process forwards SIGTERM/SIGINT/SIGHUP to the child, and the child ends itself
  when the job process goes away.
- Whenever the worker cannot serve a job (not running, a different environment, a different Python,
  any error while connecting) the job runs in its own process as before: the warm path changes how fast
  a job starts, never what it computes. Results are the same (tests/test_warm.py runs steps both ways).
- ``stop()`` (``onsuccess``/``onerror``) ends the worker; it also ends by itself when the Snakemake
  process that started it is gone or after ``IDLE_SECONDS`` without a job.

Only the owner of the worker may use it (a private folder, and the peer's uid is checked). Off with
``warm_start: false`` in the config or ``PTW_WARM=0`` in the environment. Snakemake's benchmark files
then still time a job's wall clock right, but their CPU and memory columns count only the thin job
process (the work runs in the worker's child): turn warm start off to read those.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import struct
import sys
import time

ENV_SOCKET = "PTW_WARM_SOCKET"
ENV_SWITCH = "PTW_WARM"  # "0" turns the warm path off for a job (and start() off for a run)
IDLE_SECONDS = 900
JOB_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)  # what a job passes on to its child
# what the worker imports before it forks: the heavy libraries every model step needs, not the project
PRELOAD = ("numpy", "torch", "transformers", "transformers.models.bert.modeling_bert",
           "transformers.models.auto.modeling_auto", "transformers.models.auto.tokenization_auto",
           "safetensors.torch", "pandas", "pyarrow.parquet", "matplotlib")
# environment variables that may differ between a job and the worker without changing what a step
# computes (shell bookkeeping; the temporary folder, which Snakemake sets per job and the child takes
# over); any other difference -> run cold
VOLATILE_ENV = frozenset({"_", "PWD", "OLDPWD", "SHLVL", "PS1", "PS2", "COLUMNS", "LINES", "TERM",
                          "TMPDIR", "TMP", "TEMP", "TEMPDIR"})
# the thread counts Snakemake gives each job (snakemake/shell.py); the worker gets the same before its
# numerical libraries load, so a child's BLAS and OpenMP pools are the size a fresh job's would be
THREAD_ENV = ("OMP_NUM_THREADS", "GOTO_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
              "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


# --- wire format: a 4-byte length and a JSON object ---------------------------------------------

def _send(conn: socket.socket, obj: dict, fds: list[int] | None = None) -> None:
    data = json.dumps(obj).encode()
    msg = struct.pack("!I", len(data)) + data
    if fds:
        socket.send_fds(conn, [msg], fds)
    else:
        conn.sendall(msg)


def _recv_exact(conn: socket.socket, n: int, fds_wanted: int = 0) -> tuple[bytes, list[int]]:
    buf, fds = b"", []
    while len(buf) < n:
        if fds_wanted and not fds:
            chunk, got, _, _ = socket.recv_fds(conn, n - len(buf), fds_wanted)
            fds = list(got)
        else:
            chunk = conn.recv(n - len(buf))
        if not chunk:
            raise EOFError("connection closed")
        buf += chunk
    return buf, fds


def _recv(conn: socket.socket, fds_wanted: int = 0) -> tuple[dict, list[int]]:
    head, fds = _recv_exact(conn, 4, fds_wanted)
    body, more = _recv_exact(conn, struct.unpack("!I", head)[0])
    return json.loads(body), fds + more


def _env_key(env: dict) -> dict:
    return {k: v for k, v in env.items() if k not in VOLATILE_ENV}


def _identity() -> dict:
    """What must be equal between a job and the worker besides the environment."""
    return {"executable": os.path.realpath(sys.executable), "version": sys.version, "uid": os.getuid()}


# --- job side --------------------------------------------------------------------------------------

def _switched_off() -> bool:
    return os.environ.get(ENV_SWITCH, "1") == "0"


def enabled() -> bool:
    return not _switched_off() and bool(os.environ.get(ENV_SOCKET))


def run_in_worker(argv: list[str]) -> int | None:
    """Run ``python -m pipeline_steps *argv`` in a child of the warm worker and return its exit status;
    None when there is no worker that can run it (the caller then runs the step itself)."""
    if not enabled():
        return None
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    child = {"pid": None, "pending": []}

    def forward(signum, _frame):  # a signal for the job goes to the child that runs it
        if child["pid"] is None:
            child["pending"].append(signum)  # not forked yet: pass it on once it is
            return
        try:
            os.kill(child["pid"], signum)
        except ProcessLookupError:
            pass

    previous = {sig: signal.signal(sig, forward) for sig in JOB_SIGNALS}

    def run_cold():  # give the signals back; one that came meanwhile acts as it would have
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for sig in child["pending"]:
            signal.raise_signal(sig)
        return None

    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(os.environ[ENV_SOCKET])
        _send(conn, {"argv": list(argv), "cwd": os.getcwd(), "env": dict(os.environ), **_identity()},
              fds=[0, 1, 2])
        reply, _ = _recv(conn)
    except (OSError, EOFError, ValueError):
        conn.close()
        return run_cold()
    if not reply.get("ok"):
        conn.close()
        return run_cold()
    child["pid"] = int(reply["pid"])
    for sig in child["pending"]:
        forward(sig, None)
    try:
        status, _ = _recv(conn)
    except (OSError, EOFError, ValueError):  # the worker died under us: make sure the child does too
        forward(signal.SIGTERM, None)
        print("error: the warm worker went away while it ran this step", file=sys.stderr)
        return 1
    finally:
        conn.close()
    if status.get("signal"):
        return 128 + int(status["signal"])
    return int(status.get("code", 1))


# --- worker side -----------------------------------------------------------------------------------

def _child(conn: socket.socket, request: dict, fds: list[int], others: list[socket.socket],
           added: dict, mask: set) -> None:
    """In the forked child: become the job (its streams, folder, environment) and run the step.
    The job's signals arrive blocked (see serve): they act only once the worker's handlers are gone."""
    code = 1
    try:
        for sig in (*JOB_SIGNALS, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # a SIGTERM that came meanwhile ends us now
        for other in others:
            other.close()
        for target, fd in enumerate(fds[:3]):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        for key, value in added.items():
            os.environ.setdefault(key, value)
        os.environ.pop(ENV_SOCKET, None)  # this process runs the step itself
        import tempfile

        tempfile.tempdir = None  # found again from this job's TMPDIR
        sys.argv = ["python -m pipeline_steps", *request["argv"]]
        import random

        random.seed()  # as a fresh process would be: not the worker's state
        for name in [m for m in sys.modules if m == "pipeline_steps" or m.startswith("pipeline_steps.")]:
            del sys.modules[name]  # import the project fresh: edits since the worker started count

        import threading

        def watch_job():  # the job process went away (killed): end the child too
            try:
                while conn.recv(1):
                    pass
            except OSError:
                pass
            os.kill(os.getpid(), signal.SIGTERM)

        threading.Thread(target=watch_job, daemon=True).start()
        print(f"warm start: this step runs in a child of the warm worker (pid {os.getppid()}; "
              "pipeline_steps/warm.py)", file=sys.stderr, flush=True)
        import runpy

        try:  # exactly what the job's ``python -m pipeline_steps ...`` runs, on a fresh import
            runpy.run_module("pipeline_steps", run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def serve(path: str, parent_pid: int | None = None, idle_seconds: float = IDLE_SECONDS) -> None:
    import gc
    import importlib
    import select

    t0 = time.perf_counter()
    env_before = dict(os.environ)
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError as e:
            print(f"warm worker: could not preload {name}: {e}", flush=True)
    gc.collect()
    gc.freeze()  # keep the preloaded objects out of the children's collections (less copy-on-write)
    me, env_key = _identity(), _env_key(env_before)
    # what the imports themselves put into the environment (torch: TORCHINDUCTOR_CACHE_DIR), as a fresh
    # process would have it after the same imports
    added = {k: v for k, v in os.environ.items() if k not in env_before}

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    tmp = f"{path}.{os.getpid()}.tmp"
    listener.bind(tmp)
    os.chmod(tmp, 0o600)
    listener.listen(16)
    os.replace(tmp, path)  # appears only when ready: a job never waits on a worker still importing
    path_inode = os.stat(path).st_ino
    print(f"warm worker {os.getpid()}: ready in {time.perf_counter() - t0:.1f} s at {path}", flush=True)

    running: dict[int, socket.socket] = {}
    stopping = False

    def on_term(signum, _frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    # a child's end wakes the select at once (its status goes back without waiting for the timeout)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    last_job = time.monotonic()
    served = 0
    try:
        while not stopping:
            ready, _, _ = select.select([listener, wake_r], [], [], 1.0)
            if wake_r in ready:
                try:
                    while os.read(wake_r, 512):
                        pass
                except BlockingIOError:
                    pass
            if listener in ready:
                conn, _ = listener.accept()
                uid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[2]
                try:
                    request, fds = _recv(conn, fds_wanted=3)
                except (OSError, EOFError, ValueError):
                    conn.close()
                    continue
                why = None
                if uid != os.getuid():
                    why = "another user"
                elif {k: request.get(k) for k in me} != me:
                    why = "another Python"
                elif len(fds) != 3:
                    why = "no standard streams"
                elif (theirs := _env_key(request.get("env", {}))) != env_key:
                    why = "another environment: " + ", ".join(sorted(
                        k for k in set(theirs) | set(env_key) if theirs.get(k) != env_key.get(k)))
                if why:
                    for fd in fds:
                        os.close(fd)
                    try:
                        _send(conn, {"ok": False, "reason": why})
                    except OSError:
                        pass
                    conn.close()
                    print(f"warm worker: declined a job ({why})", flush=True)
                    continue
                # the job may pass a signal on as soon as it has the pid: until the child has dropped
                # the worker's handlers (which would swallow it) the signal must wait, blocked
                mask = signal.pthread_sigmask(signal.SIG_BLOCK, JOB_SIGNALS)
                pid = os.fork()
                if pid == 0:
                    signal.set_wakeup_fd(-1)
                    os.close(wake_r)
                    os.close(wake_w)
                    _child(conn, request, fds, [listener, *running.values()], added, mask)
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)
                for fd in fds:
                    os.close(fd)
                running[pid] = conn
                served += 1
                try:
                    _send(conn, {"ok": True, "pid": pid})
                except OSError:
                    pass
            while running:  # reap finished children and report their status
                pid, status = os.waitpid(-1, os.WNOHANG)
                if pid == 0:
                    break
                conn = running.pop(pid, None)
                if conn is None:
                    continue
                reply = ({"signal": os.WTERMSIG(status)} if os.WIFSIGNALED(status)
                         else {"code": os.waitstatus_to_exitcode(status)})
                try:
                    _send(conn, reply)
                except OSError:
                    pass
                conn.close()
                last_job = time.monotonic()
            if running:
                last_job = time.monotonic()
            if parent_pid is not None and not _alive(parent_pid):
                break
            if time.monotonic() - last_job > idle_seconds:
                break
    finally:
        try:
            if os.stat(path).st_ino == path_inode:
                os.unlink(path)
        except OSError:
            pass
        listener.close()
        print(f"warm worker {os.getpid()}: served {served} job(s), stopping", flush=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        pass
    return True


# --- the run's side (Snakefile hooks) --------------------------------------------------------------

def _folder() -> str:
    base = os.environ.get("XDG_RUNTIME_DIR") or "/tmp"
    folder = os.path.join(base, f"ptw-warm-{os.getuid()}")
    os.makedirs(folder, mode=0o700, exist_ok=True)
    st = os.stat(folder)
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise OSError(f"{folder} is not a private folder of this user")
    return folder


_started: dict = {}  # socket path -> the worker process this Snakemake process started


def start(python: str, repo: str, log_path: str, threads: int = 1) -> str | None:
    """Launch the worker for this Snakemake process; return its socket path (also set in this process's
    ``PTW_WARM_SOCKET``, which the jobs inherit), or None when warm start is off or cannot start.
    ``threads``: the thread count of the jobs it serves (others run cold)."""
    import subprocess

    if _switched_off() or not hasattr(socket, "AF_UNIX") or not hasattr(os, "fork"):
        return None
    try:
        path = os.path.join(_folder(), f"{os.getpid()}.sock")
        os.makedirs(os.path.dirname(log_path) or ".", exist_ok=True)
        env = dict(os.environ)
        env[ENV_SOCKET] = path  # the worker's environment equals the jobs'
        env.update({key: str(threads) for key in THREAD_ENV})
        env["PYTHONPATH"] = repo + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        with open(log_path, "a") as log:
            proc = subprocess.Popen([python, "-m", "pipeline_steps.warm", "serve", path, str(os.getpid())],
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                                    cwd=repo, start_new_session=True)
    except OSError as e:
        print(f"warning: warm start off: {e}", file=sys.stderr)
        return None
    os.environ[ENV_SOCKET] = path
    _started[path] = proc
    return path


def stop() -> None:
    """End the workers this process started (jobs still running in them finish or are killed by their
    job process) and forget the socket."""
    for path, proc in list(_started.items()):
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except Exception:
                proc.kill()
        _started.pop(path, None)
    os.environ.pop(ENV_SOCKET, None)


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "serve":
        serve(sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else None)
    else:
        print("usage: python -m pipeline_steps.warm serve SOCKET [PARENT_PID]", file=sys.stderr)
        sys.exit(2)
