"""``python -m aioruntime._cpu_worker --parent PID``: one worker process of a
:class:`~aioruntime._cpu.CpuPool`.

It dies with its parent (on Linux the kernel kills it; everywhere a watchdog thread exits it
when stdin hangs up or the parent changes), so a client that is killed leaves no workers.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from collections.abc import Sequence


def _die_with_parent(parent: int) -> None:
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # it died before the kernel was asked to tell us
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent,), name="watchdog", daemon=True).start()


def _watch_parent(parent: int) -> None:
    import select

    if not hasattr(select, "poll"):
        return
    poller = select.poll()
    poller.register(sys.stdin.fileno(), 0)  # POLLHUP, POLLERR and POLLNVAL are always reported
    while not poller.poll(1000) and os.getppid() == parent:
        pass
    os._exit(1)


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m aioruntime._cpu_worker")
    parser.add_argument("--parent", type=int, default=0, help="exit when this process is gone")
    args = parser.parse_args(argv)
    if args.parent:
        _die_with_parent(args.parent)
    from aioruntime._cpu import serve

    serve()


if __name__ == "__main__":
    main(sys.argv[1:])
