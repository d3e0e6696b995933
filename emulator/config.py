"""The emulator's configuration: one frozen object, built once at the edge.

:func:`from_args` reads flags and ``AIORUNTIME_EMULATOR_<FLAG>`` environment variables with
click (its ``auto_envvar_prefix``: a repeatable flag's variable holds a comma-separated list);
nothing else in the emulator reads ``os.environ``.
"""

from __future__ import annotations

import math
import os
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from aioruntime.protocol import DEFAULT_INSTANCE

from . import rayspec
from .noise import NoiseLevel
from .noise_cache import default_cache_dir
from .simulation import DEFAULT_BUDGET_S, DEFAULT_MAX_MEMORY_MB, SimulationSettings

__all__ = ["ApiKey", "ClockSpec", "Config", "command", "from_args", "same_secret"]

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
    #: The noise level of jobs that do not choose one (``True``/``False`` mean full/none).
    noise: NoiseLevel = NoiseLevel.NONE
    #: Wall seconds of simulation one job may take (``--sim-budget``). Pre-processing refuses a
    #: job predicted over it (IBM 1001) before it takes the QPU; one that runs past it anyway is
    #: stopped on the QPU worker, which is replaced, and fails (under ``realtime``, also capped
    #: by the job's ``max_execution_time``, with IBM's 1305).
    sim_budget_s: float = DEFAULT_BUDGET_S
    #: Tests only: False lets a job predicted over ``sim_budget_s`` reach the QPU, where the
    #: scheduler stops it at the budget (to test that stop).
    sim_refuse_predicted: bool = True
    #: Memory Aer may use for one circuit, MB (``--sim-memory``).
    sim_memory_mb: int = DEFAULT_MAX_MEMORY_MB
    #: Where twirled device noise tables are kept across starts; None = not kept. The command
    #: line defaults to the user cache directory (``$XDG_CACHE_HOME/aioruntime-emulator``).
    noise_cache_dir: Path | None = None
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
    #: Fair share between instances: their recent QPU use decays with this half-life (model s).
    fair_share_half_life_s: float = 3600.0
    #: Run a job's three stages in one call on the QPU worker when it finds the QPU free under
    #: the instant (or manual) clock. Tests of the stages one by one turn it off.
    fast_path: bool = True
    #: Tests only: cap the SQLite database at this many pages (a full disk on demand).
    store_max_pages: int | None = None
    #: On SIGTERM, wait this long (wall seconds) for jobs in flight before exiting; what is
    #: still unfinished stays in the store and is re-queued at the next start.
    drain_timeout_s: float = 30.0
    max_body_bytes: int = 64 * 1024 * 1024
    #: What one stage of one job may add to a worker process's address space, MiB (0: no
    #: limit). 4096 lets a 27-qubit dense statevector (2 GiB) through, not a 28-qubit one.
    worker_memory_mb: int = 4096
    #: Lane stages (pre- and post-processing) that run at once, at most; the others wait, in
    #: order, for one to finish (``--cpu-slots``; 0: on the process plane, the CPUs this
    #: process may use; on Ray, no bound). Lanes stay slots for jobs in progress (§4): five
    #: jobs hold lanes, but on two cores five stages at once only share the cores, so the first
    #: job reaches the idle QPU later and none finishes sooner. It also bounds the lane
    #: workers (processes or Ray actors) started.
    cpu_slots: int = 0
    max_pending_jobs_per_instance: int = 10_000
    max_executions_per_job: int = 10_000_000
    #: Bound of one long-poll on the wait extension, seconds.
    wait_max_s: float = 60.0
    #: Keep a log of every request (method, path, headers, body keys) for protocol tests.
    record_requests: bool = False
    #: Where CPU work runs: "process" (local worker processes) or "ray" (Ray actors,
    #: :mod:`emulator.rayplane`); the ``ray_*`` fields are the Ray plane's (:mod:`.rayspec`).
    workers: str = "process"
    #: Ray cluster to join (``--ray-address``, else ``RAY_ADDRESS``); None: a local instance.
    ray_address: str | None = None
    ray_lane_resources: str = ""
    ray_qpu_resources: tuple[str, ...] = ()
    ray_runtime_env: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "noise", _noise_level(self.noise))
        if not self.sim_budget_s > 0:
            raise ValueError("--sim-budget must be positive")
        if self.sim_memory_mb < 1:
            raise ValueError("--sim-memory must be at least 1 MB")
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
        if self.workers not in ("process", "ray"):
            raise ValueError(f"--workers must be process or ray, got {self.workers!r}")
        if self.workers == "ray":
            rayspec.check_config(
                self.ray_lane_resources, self.ray_qpu_resources, self.ray_runtime_env
            )

    @property
    def simulation(self) -> SimulationSettings:
        """What the workers need to plan and run simulations (it pickles)."""
        return SimulationSettings(
            noise=self.noise,
            budget_s=self.sim_budget_s if self.sim_refuse_predicted else math.inf,
            max_memory_mb=self.sim_memory_mb,
            cache_dir=self.noise_cache_dir,
        )

    def instances_for_key(self, key: str) -> tuple[str, ...] | None:
        """The instances a key may use, or None when the key is not accepted."""
        for api_key in self.api_keys:
            if same_secret(key, api_key.key):
                return api_key.instances or self.instances
        return None


def same_secret(given: str, expected: str) -> bool:
    """Constant-time comparison of two secrets, whatever characters they hold.

    ``secrets.compare_digest`` refuses ``str`` with non-ASCII characters (TypeError), and a key
    or header can hold any: aiohttp decodes raw header bytes with ``surrogateescape``. Both are
    compared as UTF-8 bytes (``surrogatepass`` encodes any lone surrogate, so it never fails).
    """
    return secrets.compare_digest(
        given.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass")
    )


class _ClockType(click.ParamType):  # type: ignore[type-arg]
    name = "clock"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> ClockSpec:
        if isinstance(value, ClockSpec):
            return value
        try:
            return ClockSpec.parse(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


#: Spellings of the old boolean ``--noise`` (and its environment variable) still accepted.
_NOISE_ALIASES = {
    "on": "full",
    "true": "full",
    "1": "full",
    "off": "none",
    "false": "none",
    "0": "none",
}


def _noise_level(value: object) -> NoiseLevel:
    if isinstance(value, bool):
        return NoiseLevel.FULL if value else NoiseLevel.NONE
    text = str(value).strip().lower()
    try:
        return NoiseLevel(_NOISE_ALIASES.get(text, text))
    except ValueError:
        choices = ", ".join(level.value for level in NoiseLevel)
        raise ValueError(f"--noise must be one of {choices}, got {value!r}") from None


class _NoiseType(click.ParamType):  # type: ignore[type-arg]
    name = "full|pauli|none"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> NoiseLevel:
        try:
            return _noise_level(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class _CommaList(click.ParamType):  # type: ignore[type-arg]
    """A repeatable option whose environment variable holds a comma-separated list."""

    name = "text"
    envvar_list_splitter = ","

    def split_envvar_value(self, rv: str) -> Sequence[str]:
        return [item for item in rv.split(self.envvar_list_splitter) if item]


class _SemicolonList(_CommaList):
    """The same, for values that contain commas themselves (``--ray-qpu-resources``)."""

    envvar_list_splitter = ";"


def _options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The flags; each also reads ``AIORUNTIME_EMULATOR_<FLAG>`` (click's auto envvars)."""
    decorators = [
        click.option("--host", default="127.0.0.1", show_default=True, help="address to bind"),
        click.option(
            "--port", type=int, default=8765, show_default=True, help="port; 0 picks a free one"
        ),
        click.option(
            "--backends",
            default="",
            show_default=False,
            help="comma-separated device names, e.g. ibm_fez,ibm_manila or alias=ibm_fez "
            "(default: ibm_fez,ibm_torino,ibm_manila)",
        ),
        click.option(
            "--lanes",
            type=click.IntRange(min=1),
            default=5,
            show_default=True,
            help="jobs in classical processing at once, per backend",
        ),
        click.option(
            "--clock",
            type=_ClockType(),
            default="instant",
            show_default=True,
            help="instant, scaled:K or realtime",
        ),
        click.option(
            "--noise",
            type=_NoiseType(),
            is_flag=False,
            flag_value="full",
            default="none",
            show_default=True,
            help="noise level of jobs that do not choose one: full (the device's Aer noise "
            "model; --noise alone), pauli (its Pauli twirl: Clifford circuits of any width in "
            "milliseconds) or none",
        ),
        click.option(
            "--no-noise",
            is_flag=True,
            allow_from_autoenv=False,
            help="ideal simulation (the same as --noise none)",
        ),
        click.option(
            "--sim-budget",
            type=click.FloatRange(min=0, min_open=True),
            default=DEFAULT_BUDGET_S,
            show_default=True,
            help="wall seconds of simulation per job: a job predicted over it fails at once, "
            "naming what would fit; one running past it is stopped",
        ),
        click.option(
            "--sim-memory",
            type=click.IntRange(min=1),
            default=DEFAULT_MAX_MEMORY_MB,
            show_default=True,
            help="MB of memory Aer may use for one circuit",
        ),
        click.option(
            "--noise-cache",
            default=None,
            help="directory keeping devices' twirled noise tables across starts, or 'none' "
            "(default: $XDG_CACHE_HOME/aioruntime-emulator, else ~/.cache/aioruntime-emulator)",
        ),
        click.option(
            "--data-dir",
            type=click.Path(file_okay=False, path_type=Path),
            default=None,
            help="directory of the SQLite store (default: a temporary one)",
        ),
        click.option("--ephemeral", is_flag=True, help="keep everything in memory"),
        click.option(
            "--api-key",
            "api_keys",
            envvar=ENV_PREFIX + "API_KEY",
            type=_CommaList(),
            multiple=True,
            help="accepted API key, repeatable; KEY@CRN binds it to one instance "
            "(default: a generated development key, printed at start)",
        ),
        click.option(
            "--instance",
            "instances",
            envvar=ENV_PREFIX + "INSTANCE",
            type=_CommaList(),
            multiple=True,
            help=f"accepted instance CRN, repeatable (default: {DEFAULT_INSTANCE})",
        ),
        click.option(
            "--admin-key", default=None, help="key of the admin API (default: random, printed)"
        ),
        click.option(
            "--drain-timeout",
            type=click.FloatRange(min=0),
            default=30.0,
            show_default=True,
            help="seconds to let jobs in flight finish on SIGTERM",
        ),
        click.option(
            "--worker-memory-mb",
            type=click.IntRange(min=0),
            default=4096,
            show_default=True,
            help="MiB one job stage may add to a worker process's address space (0: no limit)",
        ),
        click.option(
            "--cpu-slots",
            type=click.IntRange(min=0),
            default=0,
            show_default=True,
            help="lane stages that run at once (0: one per CPU; with --workers ray, no bound)",
        ),
        click.option(
            "--workers",
            type=click.Choice(["process", "ray"]),
            default="process",
            show_default=True,
            help="where CPU work runs: local worker processes, or Ray actors (pip install "
            "'aioruntime[ray]')",
        ),
        click.option(
            "--ray-address",
            envvar=[ENV_PREFIX + "RAY_ADDRESS", "RAY_ADDRESS"],
            default=None,
            help="with --workers ray: the Ray cluster to join, e.g. ray://head:10001 or "
            "head:6379 (default: RAY_ADDRESS, else a local Ray instance started with the "
            "emulator)",
        ),
        click.option(
            "--ray-lane-resources",
            default="",
            help="with --workers ray: Ray resources of each lane actor, e.g. "
            "num_cpus:1,memory:2GiB",
        ),
        click.option(
            "--ray-qpu-resources",
            type=_SemicolonList(),
            multiple=True,
            help="with --workers ray: Ray resources of the QPU actors, [BACKEND=]KEY:VALUE,..., "
            "repeatable, e.g. ibm_fez=num_cpus:4,memory:8GiB,big:1 (environment: ';' between "
            "specs)",
        ),
        click.option(
            "--ray-runtime-env",
            default="",
            help="with --workers ray: a JSON runtime_env merged over the default, which ships "
            "this emulator's code to the actors as py_modules",
        ),
        click.option(
            "--token-secret",
            default=None,
            hidden=True,
            help="secret that signs IAM tokens (default: kept in the data directory)",
        ),
    ]
    for decorate in reversed(decorators):
        f = decorate(f)
    return f


def _config_from_options(
    *,
    ephemeral: bool,
    data_dir: Path | None,
    api_keys: tuple[str, ...],
    instances: tuple[str, ...],
    token_secret: str | None,
    admin_key: str | None,
    drain_timeout: float,
    no_noise: bool,
    noise_cache: str | None,
    sim_budget: float,
    sim_memory: int,
    **values: Any,
) -> Config:
    values.update(sim_budget_s=sim_budget, sim_memory_mb=sim_memory)
    if no_noise:
        values["noise"] = NoiseLevel.NONE
    if noise_cache is None:
        values["noise_cache_dir"] = default_cache_dir(dict(os.environ))
    elif noise_cache.strip().lower() not in ("", "none"):
        values["noise_cache_dir"] = Path(noise_cache)
    if ephemeral:
        data_dir = Path(":memory:")
    persistent = data_dir is not None and str(data_dir) != ":memory:"
    kwargs: dict[str, Any] = dict(values, data_dir=data_dir, drain_timeout_s=drain_timeout)
    if api_keys:
        kwargs["api_keys"] = tuple(ApiKey.parse(k) for k in api_keys)
    else:
        # No key given: a development key, printed at start. Kept in the data directory so
        # that clients keep working across restarts; a fresh one for an ephemeral store.
        dev_key = (
            _persistent_secret(data_dir / "dev_api_key", "dev-")  # type: ignore[operator]
            if persistent
            else "dev-" + secrets.token_urlsafe(16)
        )
        kwargs["api_keys"] = (ApiKey(dev_key),)
    if instances:
        kwargs["instances"] = tuple(dict.fromkeys(instances))
    if token_secret is not None:
        kwargs["token_secret"] = token_secret
    elif persistent:
        # Tokens must outlive a restart on the same data directory, as IBM's do.
        kwargs["token_secret"] = _persistent_secret(data_dir / "token_secret")  # type: ignore[operator]
    if admin_key is not None:
        kwargs["admin_key"] = admin_key
    return Config(**kwargs)


@click.command(
    name="aioruntime-emulator",
    help="A local emulator of the IBM Qiskit Runtime service.",
    context_settings={"auto_envvar_prefix": ENV_PREFIX.rstrip("_"), "show_default": True},
)
@_options
def command(**values: Any) -> Config:
    return _config_from_options(**values)


def from_args(argv: Sequence[str] | None = None) -> Config:
    """The config from flags, falling back to ``AIORUNTIME_EMULATOR_<FLAG>`` variables.

    Raises ``click.UsageError`` (with the flag named) for bad values; ``--help`` raises
    ``SystemExit(0)`` after printing the help.
    """
    try:
        config = command.main(args=None if argv is None else list(argv), standalone_mode=False)
    except click.exceptions.Exit as exc:
        raise SystemExit(exc.exit_code) from None
    except ValueError as exc:  # Config.__post_init__
        raise click.UsageError(str(exc)) from None
    if not isinstance(config, Config):  # --help under standalone_mode=False returns 0
        raise SystemExit(0)
    return config


def _persistent_secret(path: Path, prefix: str = "") -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        secret = prefix + secrets.token_hex(32 if not prefix else 12)
        path.write_text(secret)
        path.chmod(0o600)
        return secret
