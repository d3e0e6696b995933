"""``ClientConfig``: the one frozen configuration of a service, resolved once at the edge.

It is built from arguments and the environment variables the official client reads (nothing
else in aioruntime reads ``os.environ``); it resolves the runtime URL of an instance CRN and
the IAM endpoint, and validates the waiting limits.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from . import protocol as p
from .errors import InputValueError

__all__ = ["VERSION", "ClientConfig", "default_runtime_url", "normalize_iam_url"]

VERSION: Final = "0.1.0"

DEFAULT_IAM_URL: Final = "https://iam.cloud.ibm.com"
STAGING_IAM_URL: Final = "https://iam.test.cloud.ibm.com"


def _client_application(environ: Mapping[str, str]) -> str:
    """The ``X-Qx-Client-Application`` telemetry header, in the official client's format."""
    if environ.get("USAGE_DATA_OPT_OUT", "False") == "True":
        return f"aioruntime-{VERSION}"
    parts = [f"aioruntime-{VERSION}"]
    for dist in ("qiskit_ibm_runtime", "qiskit", "qiskit_aer"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            parts.append(f"{dist}-{importlib.metadata.version(dist)}")
    return f"qiskit-version-2/{','.join(parts)}/aioruntime"


def default_runtime_url(instance: str) -> str:
    """IBM's regional Runtime URL for a CRN (what the official default resolver builds)."""
    fields = instance.split(":")
    region = fields[5] if instance.startswith("crn:") and len(fields) > 5 else "us-east"
    prefix = "" if region in ("", "us-east") else f"{region}."
    return f"https://{prefix}quantum.cloud.ibm.com/api/v1"


def normalize_iam_url(url: str) -> str:
    """``IAM_URL`` without a trailing ``/identity/token`` (the path is appended per request)."""
    url = url.rstrip("/")
    if url.endswith(p.IAM_TOKEN):
        url = url[: -len(p.IAM_TOKEN)]
    return url


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientConfig:
    """Everything a service needs, resolved once. Build it with :meth:`build`."""

    runtime_url: str
    token: str = field(repr=False)
    instance: str
    iam_url: str
    #: Size of the one connection pool.
    max_connections: int = 100
    #: Long-polls / status polls in flight at once, across all awaited jobs (see ``_wait.py``).
    max_concurrent_waits: int = 64
    #: How long one long-poll may hold a wait slot before it rotates to the back of the queue.
    wait_slice_s: float = 10.0
    #: "auto": use the emulator's wait extension when offered, else poll; "poll": always poll.
    job_wait: Literal["auto", "poll"] = "auto"
    poll_min_s: float = 0.1
    poll_max_s: float = 5.0
    #: Upper bound of the steady-state status-poll rate of all waiters together (per second).
    poll_rate: float = 20.0
    #: Mirror the official client's ``GET /instances/usage`` + ``GET /backends/{name}/status``
    #: before every job submission (off by default: two extra round trips per job).
    preflight_checks: bool = False
    connect_timeout_s: float = 10.0
    #: Read timeout of ordinary requests (the official client has none); ``POST /jobs`` gets
    #: ``submit_timeout_s`` like the official 900 s.
    read_timeout_s: float = 300.0
    submit_timeout_s: float = 900.0
    retries: int = 5
    #: Of those, at most this many for refused connections (the official ``retries_connect``),
    #: and only to a server that has answered before: a never-reached one fails at once.
    connect_retries: int = 3
    backoff_s: float = 0.5
    client_application: str = f"aioruntime-{VERSION}"
    #: Where the executor primitives' CPU work runs (``aioruntime/_cpu.py``): worker
    #: processes (parallel across cores) or threads; and how many calls at once (0: the
    #: machine's cores, at most 4).
    cpu_pool: Literal["process", "thread"] = "process"
    cpu_workers: int = 0

    def __post_init__(self) -> None:
        if self.max_concurrent_waits < 1:
            raise InputValueError("max_concurrent_waits must be at least 1")
        if self.max_connections <= self.max_concurrent_waits:
            raise InputValueError(
                "max_connections must exceed max_concurrent_waits, or waiting jobs would take "
                "every connection and starve other requests"
            )
        if self.wait_slice_s <= 0 or self.poll_min_s <= 0 or self.poll_max_s < self.poll_min_s:
            raise InputValueError("wait_slice_s, poll_min_s and poll_max_s must be positive")
        if self.poll_rate <= 0:
            raise InputValueError("poll_rate must be positive")
        if self.job_wait not in ("auto", "poll"):
            raise InputValueError("job_wait must be 'auto' or 'poll'")
        if self.cpu_pool not in ("process", "thread"):
            raise InputValueError("cpu_pool must be 'process' or 'thread'")
        if self.cpu_workers < 0:
            raise InputValueError("cpu_workers must be 0 (automatic) or more")

    @classmethod
    def build(
        cls,
        *,
        url: str | None = None,
        token: str | None = None,
        instance: str | None = None,
        iam_url: str | None = None,
        environ: Mapping[str, str] | None = None,
        **options: Any,
    ) -> ClientConfig:
        """Arguments first, then ``QISKIT_IBM_TOKEN`` / ``QISKIT_IBM_URL`` /
        ``QISKIT_IBM_INSTANCE`` / ``IAM_URL`` (the variables the official client reads)."""
        env = os.environ if environ is None else environ
        token = token or env.get("QISKIT_IBM_TOKEN")
        instance = instance or env.get("QISKIT_IBM_INSTANCE")
        url = url or env.get("QISKIT_IBM_URL")
        if not token:
            raise InputValueError(
                "No API key: pass token=... or set QISKIT_IBM_TOKEN (an IBM Cloud API key)."
            )
        if not instance:
            raise InputValueError(
                "No instance: pass instance=<CRN> or set QISKIT_IBM_INSTANCE. aioruntime does "
                "not search IBM Cloud for instances; give the instance CRN."
            )
        if not url:
            url = default_runtime_url(instance)
        if not url.startswith(("http://", "https://")):
            raise InputValueError(f"url must be an http(s) URL, got {url!r}")
        if iam_url is None:
            iam_url = env.get("IAM_URL")
        if not iam_url:
            staging = instance.startswith("crn:") and instance.split(":")[2:3] == ["staging"]
            iam_url = STAGING_IAM_URL if staging else DEFAULT_IAM_URL
        options.setdefault("client_application", _client_application(env))
        return cls(
            runtime_url=url.rstrip("/"),  # used verbatim (no region resolver), spec 1.2
            token=token,
            instance=instance,
            iam_url=normalize_iam_url(iam_url),
            **options,
        )
