"""What the worker-plane tests run on a plane's workers.

The process plane's workers import this module by name (the tests put ``tests/`` on their
``PYTHONPATH``); Ray's workers get it by value (``ray_helpers`` registers it with Ray's
cloudpickle), since they do not share the test process's ``sys.path``.
"""

from __future__ import annotations

import os
import socket


def add(a: int, b: int) -> int:
    return a + b


def pid() -> int:
    return os.getpid()


def targets_loaded() -> int:
    """How many devices' targets this worker process holds (loaded by its zygote)."""
    from emulator.targets import device_target

    return int(device_target.cache_info().currsize)


def fail(message: str) -> None:
    raise ValueError(message)


def refuse(code: int, message: str) -> None:
    from emulator.validation import JobInputError

    raise JobInputError(code, message)


def wait_at_gate(port: int, tag: str) -> str:
    """Tell the test's gate (``tests/test_worker_planes.py: Gate``) which process runs this
    call, then wait until the gate lets it through; returns ``tag``. A killed process closes
    the connection, which is how the test sees the computation stop."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(f"{os.getpid()} {tag}\n".encode())
        if sock.recv(1) != b"g":
            raise RuntimeError("the gate closed")
    return tag
