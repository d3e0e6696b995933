"""The zygote: one process that imports qiskit, Aer and the job stages once, then forks workers.

A fresh ``python -m emulator.worker`` pays seconds of imports (qiskit, qiskit-aer,
qiskit-ibm-runtime, samplomatic, Stim: about 3 s of CPU, measured on the 2-core machine) before
it can take a call; an emulator with three backends and five lanes each would pay that eighteen
times at every start, and a test suite that starts emulators dozens of times, hundreds. The
zygote pays it once: it imports everything a job needs, loads the served devices' targets, and
then forks a worker whenever the pool asks for one, in milliseconds. The forked workers share
the zygote's memory pages until they write to them (copy-on-write), so idle workers cost little.

The zygote runs no simulation itself, so no OpenMP or Aer thread exists when it forks (forking
a process with a running OpenMP team is not safe); BLAS is limited to one thread in it for the
same reason. A forked worker reseeds NumPy's global generator, then runs the worker's own
:func:`emulator.worker.main` (niceness, memory budget, death with its parent, the call loop).

Both ends of the control protocol live here. The parent and the zygote share a Unix socket
pair; the parent sends one JSON request per line: ``{"op": "warm", "sources": [...]}``
(answered ``ok``) or ``{"op": "fork", "argv": [...]}`` with the new worker's two pipe ends
attached (``SCM_RIGHTS``), answered with the child's pid. The zygote dies with its parent
(``PR_SET_PDEATHSIG``, and it exits when the socket hangs up); its children die with it.
Processes of one emulator process share one zygote (:func:`shared_zygote`).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence
from typing import Any

__all__ = ["Zygote", "shared_zygote"]

#: How long the zygote may take to import everything and say it is ready, seconds.
START_TIMEOUT_S = 180.0


class Zygote:
    """The parent's handle on a zygote process. Thread-safe; requests are serialized."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._file: Any = None
        self._warm: set[str] = set()
        self._stopped = threading.Event()
        self._ready = False  # said READY (its imports done)
        self._pending: list[str] = []  # devices prestart asked it to load, not answered yet

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def prestart(self, sources: Sequence[str] = ()) -> None:
        """Start the zygote now, and ask it to load the devices ``sources`` after its imports,
        without waiting for either: the first request waits for them. ``python -m emulator``
        calls this before importing its own server, so that the two imports (about 2.5 s of
        CPU for the zygote's, with the devices, and 1 s for the server's) run side by side on
        two cores instead of one after the other."""
        with self._lock:
            if self._proc is None:
                self._spawn()
                if sources:
                    assert self._sock is not None
                    self._pending = sorted(set(sources))
                    self._sock.sendall(
                        json.dumps({"op": "warm", "sources": self._pending}).encode() + b"\n"
                    )

    def _start(self) -> None:
        self._spawn()
        self._handshake()

    def _spawn(self) -> None:
        ours, theirs = socket.socketpair()
        env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        argv = [
            sys.executable,
            "-u",
            "-m",
            "emulator.zygote",
            str(theirs.fileno()),
            str(os.getpid()),
        ]
        # Linux sends PR_SET_PDEATHSIG when the *thread* that forked the child exits, not the
        # process: start it from a thread that lives as long as the zygote, never from a pool
        # thread that may retire (that killed the zygote, and its workers, at random).
        started: list[subprocess.Popen[bytes]] = []
        ready = threading.Event()
        self._stopped = threading.Event()

        def keeper() -> None:
            try:
                started.append(
                    subprocess.Popen(
                        argv, pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, env=env
                    )
                )
            finally:
                ready.set()
            self._stopped.wait()

        threading.Thread(target=keeper, name="emulator-zygote-keeper", daemon=True).start()
        ready.wait()
        theirs.close()
        if not started:
            raise RuntimeError("the worker zygote could not be started")
        self._proc = started[0]
        self._sock = ours
        self._file = ours.makefile("rb")

    def _handshake(self) -> None:
        assert self._sock is not None
        self._sock.settimeout(START_TIMEOUT_S)
        try:
            said = self._file.readline()
        except OSError:  # a timeout
            said = b""
        if said != b"READY\n":
            self._stop()
            raise RuntimeError("the worker zygote did not start")
        if self._pending:  # the devices prestart asked for
            if self._file.readline() != b"ok\n":
                self._stop()
                raise RuntimeError("the worker zygote could not load the devices")
            self._warm.update(self._pending)
            self._pending = []
        self._sock.settimeout(None)
        self._ready = True

    def _alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _request(self, op: dict[str, Any], fds: Sequence[int] = ()) -> bytes:
        with self._lock:
            if self._alive() and not self._ready:  # prestarted: wait for its imports
                with contextlib.suppress(RuntimeError):  # it died starting: replaced below
                    self._handshake()
            if not self._alive():
                self._stop()
                self._start()
                if self._warm:  # a replacement zygote: load what the old one had
                    self._exchange({"op": "warm", "sources": sorted(self._warm)}, ())
            return self._exchange(op, fds)

    def _exchange(self, op: dict[str, Any], fds: Sequence[int]) -> bytes:
        assert self._sock is not None
        socket.send_fds(self._sock, [json.dumps(op).encode() + b"\n"], list(fds))
        answer: bytes = self._file.readline()
        if not answer.endswith(b"\n"):
            raise RuntimeError("the worker zygote died")
        return answer.strip()

    def warm(self, sources: Sequence[str]) -> None:
        """Load these devices into the zygote, so every worker forked from now on has them."""
        new = sorted(set(sources) - self._warm)
        if new:
            self._request({"op": "warm", "sources": new})
            self._warm.update(new)

    def fork(self, argv: Sequence[str]) -> tuple[int, int, int]:
        """A new worker running ``emulator.worker.main(argv)``: ``(pid, fd to write its calls
        to, fd to read its answers from)``; the caller owns both fds."""
        child_in, to_child = os.pipe()
        from_child, child_out = os.pipe()
        try:
            answer = self._request({"op": "fork", "argv": list(argv)}, [child_in, child_out])
        except BaseException:
            os.close(to_child)
            os.close(from_child)
            raise
        finally:
            os.close(child_in)
            os.close(child_out)
        return int(answer), to_child, from_child

    def _stop(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._stopped.set()
        self._proc = self._sock = self._file = None
        self._ready = False
        self._pending = []

    def close(self) -> None:
        with self._lock:
            self._stop()


_shared: Zygote | None = None
_shared_lock = threading.Lock()


def shared_zygote() -> Zygote:
    """The zygote of this process (started on first use, stopped at exit)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = Zygote()
            atexit.register(_shared.close)
        return _shared


# ---------------------------------------------------------------------------------------------
# The zygote's end
# ---------------------------------------------------------------------------------------------


def _serve(control_fd: int, parent: int) -> None:
    from . import worker

    sock = socket.socket(fileno=control_fd)
    worker.guard_parent(parent, control_fd)
    worker.warm(())  # every import a job needs, no simulation
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # forked workers are reaped by the kernel
    sock.sendall(b"READY\n")
    buffered = b""
    while True:
        msg, fds, _, _ = socket.recv_fds(sock, 1 << 16, 2)
        if not msg:
            os._exit(0)  # the parent is gone
        buffered += msg
        while b"\n" in buffered:
            line, buffered = buffered.split(b"\n", 1)
            op = json.loads(line)
            if op["op"] == "warm":
                worker.warm(tuple(op["sources"]))
                sock.sendall(b"ok\n")
            elif op["op"] == "fork":
                pid = os.fork()
                if pid == 0:
                    _child(sock, fds, op["argv"])
                for fd in fds:
                    os.close(fd)
                fds = []
                sock.sendall(b"%d\n" % pid)


def _child(sock: socket.socket, fds: list[int], argv: list[str]) -> None:
    """In the forked worker: its pipes become stdin/stdout, then the worker's own main."""
    from . import worker

    try:
        sock.close()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.dup2(fds[0], 0)
        os.dup2(fds[1], 1)
        for fd in fds:
            os.close(fd)
        if "numpy" in sys.modules:  # not shared with its siblings
            sys.modules["numpy"].random.seed()
        worker.main([*argv, "--parent", str(os.getppid())])
    finally:
        os._exit(0)


if __name__ == "__main__":
    # Serve with the module ``emulator.zygote`` (not this ``__main__`` copy), like the workers.
    from emulator import zygote

    zygote._serve(int(sys.argv[1]), int(sys.argv[2]))
