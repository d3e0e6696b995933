"""The emulator's configuration: one frozen object, built once at the edge.

:func:`from_args` reads flags and ``AIORUNTIME_EMULATOR_*`` environment variables; nothing else
in the emulator reads ``os.environ``.
"""

from __future__ import annotations

import argparse
import os
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from aioruntime.protocol import DEFAULT_INSTANCE

__all__ = ["ApiKey", "ClockSpec", "Config", "build_parser", "from_args"]

#: The key a ``Config()`` built in code accepts by default (tests, ``EmulatorThread``). The
#: command line instead generates a development key when none is given, and prints it.
DEFAULT_API_KEY = "emulator-dev-key"

ENV_PREFIX = "AIORUNTIME_EMULATOR_"


@dataclass(frozen=True, slots=True, kw_only=True)
class ClockSpec:
    """``instant`` | ``scaled:K`` | ``realtime`` (see ``timing-and-scheduling.md`` §2)."""

    mode: str = "instant"
    scale: float = 1.0

    @classmethod
    def parse(cls, text: str) -> ClockSpec:
        text = text.strip().lower()
        if text == "instant":
            return cls(mode="instant", scale=0.0)
        if text == "realtime":
            return cls(mode="scaled", scale=1.0)
        if text.startswith("scaled:"):
            try:
                scale = float(text.split(":", 1)[1])
            except ValueError:
                raise ValueError(f"--clock scaled:K needs a number K, got {text!r}") from None
            if not scale > 0:
                raise ValueError(f"--clock scaled:K needs K > 0, got {scale}")
            return cls(mode="scaled", scale=scale)
        if text == "manual":  # tests only: time moves when the test says so
            return cls(mode="manual", scale=0.0)
        raise ValueError(f"--clock must be instant, scaled:K or realtime, got {text!r}")

    def __str__(self) -> str:
        if self.mode == "scaled":
            return "realtime" if self.scale == 1.0 else f"scaled:{self.scale:g}"
        return self.mode


@dataclass(frozen=True, slots=True)
class ApiKey:
    """An accepted API key; ``instances`` empty means "every configured instance"."""

    key: str
    instances: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> ApiKey:
        # KEY@CRN binds the key to one instance. CRNs contain ':' but never '@'.
        key, sep, crn = text.partition("@")
        if not key:
            raise ValueError("--api-key needs a non-empty key")
        return cls(key=key, instances=(crn,) if sep else ())


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    host: str = "127.0.0.1"
    port: int = 8765
    backends: str = ""  # "" = emulator.backends.DEFAULT_BACKENDS
    lanes: int = 5
    clock: ClockSpec = field(default_factory=ClockSpec)
    noise: bool = False
    #: None = a temporary directory (removed at exit); ":memory:" = ephemeral, nothing on disk.
    data_dir: Path | None = None
    api_keys: tuple[ApiKey, ...] = (ApiKey(DEFAULT_API_KEY),)
    instances: tuple[str, ...] = (DEFAULT_INSTANCE,)
    #: Secret that signs IAM tokens; random per process unless given (tokens then die on restart).
    token_secret: str = field(default_factory=lambda: secrets.token_hex(32))
    token_ttl_s: int = 3600
    #: Key of the admin API (fault injection, pause/resume); random unless given.
    admin_key: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    #: Interactive TTLs and the default max TTL, in model seconds (IBM defaults).
    session_interactive_ttl_s: float = 60.0
    batch_interactive_ttl_s: float = 1.0
    session_max_ttl_s: float = 8 * 3600.0
    #: A session with no job for this long (model seconds) is closed (seed: 30 minutes).
    session_idle_close_s: float = 30 * 60.0
    #: IBM's service cap on one job's QPU time.
    job_max_execution_s: float = 3 * 3600.0
    #: On SIGTERM, wait this long (wall seconds) for jobs in flight before exiting; what is
    #: still unfinished stays in the store and is re-queued at the next start.
    drain_timeout_s: float = 30.0
    max_body_bytes: int = 64 * 1024 * 1024
    max_pending_jobs_per_instance: int = 10_000
    max_executions_per_job: int = 10_000_000
    #: Bound of one long-poll on the wait extension, seconds.
    wait_max_s: float = 60.0
    #: Keep a log of every request (method, path, headers, body keys) for protocol tests.
    record_requests: bool = False

    def __post_init__(self) -> None:
        if self.lanes < 1:
            raise ValueError("--lanes must be at least 1")
        if not self.api_keys:
            raise ValueError("at least one API key is required")
        if not self.instances:
            raise ValueError("at least one instance CRN is required")
        if len(self.token_secret.encode()) < 32:
            raise ValueError("the token secret must be at least 32 bytes (HS256)")
        for key in self.api_keys:
            for crn in key.instances:
                if crn not in self.instances:
                    raise ValueError(f"--api-key binds to {crn!r}, which is not an --instance")

    def instances_for_key(self, key: str) -> tuple[str, ...] | None:
        """The instances a key may use, or None when the key is not accepted."""
        for api_key in self.api_keys:
            if secrets.compare_digest(api_key.key, key):
                return api_key.instances or self.instances
        return None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="aioruntime-emulator",
        description="A local emulator of the IBM Qiskit Runtime service.",
    )
    p.add_argument("--host", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 8765; 0 picks a free one)")
    p.add_argument(
        "--backends",
        help="comma-separated device names, e.g. ibm_fez,ibm_manila or alias=ibm_fez "
        "(default: ibm_fez,ibm_torino,ibm_manila)",
    )
    p.add_argument("--lanes", type=int, help="classical lanes per backend (default 5)")
    p.add_argument("--clock", help="instant (default), scaled:K or realtime")
    p.add_argument(
        "--noise",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="simulate with the device noise model (default: off, ideal results)",
    )
    p.add_argument("--data-dir", help="directory of the SQLite store (default: a temporary one)")
    p.add_argument("--ephemeral", action="store_true", help="keep everything in memory")
    p.add_argument(
        "--api-key",
        action="append",
        help="accepted API key, repeatable; KEY@CRN binds it to one instance "
        "(default: a generated development key, printed at start)",
    )
    p.add_argument(
        "--instance",
        action="append",
        help=f"accepted instance CRN, repeatable (default: {DEFAULT_INSTANCE})",
    )
    p.add_argument("--admin-key", help="key of the admin API (default: random, printed at start)")
    p.add_argument(
        "--drain-timeout",
        type=float,
        help="seconds to let jobs in flight finish on SIGTERM (default 30)",
    )
    return p


def from_args(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> Config:
    """Build the config from flags, falling back to ``AIORUNTIME_EMULATOR_<FLAG>`` variables."""
    args = build_parser().parse_args(argv)
    env = os.environ if environ is None else environ

    def pick(name: str) -> str | None:
        value = getattr(args, name.replace("-", "_"))
        if value is not None:
            return str(value)
        return env.get(ENV_PREFIX + name.upper().replace("-", "_"))

    kwargs: dict[str, object] = {}
    if (v := pick("host")) is not None:
        kwargs["host"] = v
    if (v := pick("port")) is not None:
        kwargs["port"] = int(v)
    if (v := pick("backends")) is not None:
        kwargs["backends"] = v
    if (v := pick("lanes")) is not None:
        kwargs["lanes"] = int(v)
    if (v := pick("clock")) is not None:
        kwargs["clock"] = ClockSpec.parse(v)
    if args.noise is not None:
        kwargs["noise"] = args.noise
    elif (v := env.get(ENV_PREFIX + "NOISE")) is not None:
        kwargs["noise"] = v.strip().lower() in ("1", "true", "yes", "on")
    if args.ephemeral:
        kwargs["data_dir"] = Path(":memory:")
    elif (v := pick("data-dir")) is not None:
        kwargs["data_dir"] = Path(v)
    keys = args.api_key or _split(env.get(ENV_PREFIX + "API_KEY"))
    if keys:
        kwargs["api_keys"] = tuple(ApiKey.parse(k) for k in keys)
    else:
        # No key given: a development key, printed at start. Kept in the data directory so
        # that clients keep working across restarts; a fresh one for an ephemeral store.
        data_dir = kwargs.get("data_dir")
        if isinstance(data_dir, Path) and str(data_dir) != ":memory:":
            dev_key = _persistent_secret(data_dir / "dev_api_key", "dev-")
        else:
            dev_key = "dev-" + secrets.token_urlsafe(16)
        kwargs["api_keys"] = (ApiKey(dev_key),)
    instances = args.instance or _split(env.get(ENV_PREFIX + "INSTANCE"))
    if instances:
        kwargs["instances"] = tuple(dict.fromkeys(instances))
    if (v := env.get(ENV_PREFIX + "TOKEN_SECRET")) is not None:
        kwargs["token_secret"] = v
    elif isinstance(data_dir := kwargs.get("data_dir"), Path) and str(data_dir) != ":memory:":
        # Tokens must outlive a restart on the same data directory, as IBM's do.
        kwargs["token_secret"] = _persistent_secret(data_dir / "token_secret")
    if (v := pick("drain-timeout")) is not None:
        kwargs["drain_timeout_s"] = float(v)
    if (v := pick("admin-key")) is not None:
        kwargs["admin_key"] = v
    return Config(**kwargs)  # type: ignore[arg-type]


def _persistent_secret(path: Path, prefix: str = "") -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        secret = prefix + secrets.token_hex(32 if not prefix else 12)
        path.write_text(secret)
        path.chmod(0o600)
        return secret


def _split(value: str | None) -> list[str]:
    return [item for item in (value or "").split(",") if item]
