"""The IBM Qiskit Runtime wire protocol, in one place.

Route paths, state strings, IBM error codes, headers and the JSON codec that both the
``aioruntime`` client and the ``emulator`` server use. Nothing else in either package builds
wire JSON by hand: payloads and results go through :func:`dumps` / :func:`loads`, which wrap
``qiskit_ibm_runtime.json.RuntimeEncoder`` / ``RuntimeDecoder`` (the official codec).

The shapes follow ``shared/spec/ibm-runtime-rest-api.md`` (qiskit-ibm-runtime 0.51.0). Where the
spec and the installed official client disagree, the client wins and the difference is noted
next to the constant.
"""

from __future__ import annotations

import datetime
import enum
import functools
import json
import threading
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "API_VERSION",
    "DEFAULT_INSTANCE",
    "PROGRAMS",
    "TERMINAL_JOB_STATES",
    "CircuitMemo",
    "DecodeLimitError",
    "DecodeLimits",
    "ErrorCode",
    "JobState",
    "SessionMode",
    "SessionState",
    "check_decode_limits",
    "client_job_status",
    "dumps",
    "error_body",
    "loads",
    "loads_nowait",
    "nesting_exceeds",
    "parse_bool",
    "path",
    "session_status_string",
]

# ---------------------------------------------------------------------------------------------
# Versions and headers
# ---------------------------------------------------------------------------------------------

#: ``IBM-API-Version`` sent by qiskit-ibm-runtime 0.51.0 (``api/rest/base.py``).
API_VERSION: Final = "2026-04-15"
HEADER_API_VERSION: Final = "IBM-API-Version"
HEADER_SERVICE_CRN: Final = "Service-CRN"
HEADER_CLIENT_APP: Final = "X-Qx-Client-Application"
#: Emulator extension: a retried ``POST /jobs`` with the same key returns the first job.
HEADER_IDEMPOTENCY_KEY: Final = "Idempotency-Key"

#: The instance CRN used when none is configured (documented in the README).
DEFAULT_INSTANCE: Final = "crn:v1:bluemix:public:quantum-computing:us-east:a/0123456789abcdef::"

#: IAM grant type of the API-key exchange.
IAM_GRANT_TYPE: Final = "urn:ibm:params:oauth:grant-type:apikey"

# ---------------------------------------------------------------------------------------------
# Routes. IBM Cloud hosts first (IAM, Global Search, Global Catalog), then the Runtime API,
# whose paths are relative to the runtime base URL (``…/api/v1``).
# ---------------------------------------------------------------------------------------------

IAM_TOKEN: Final = "/identity/token"
SEARCH: Final = "/v3/resources/search"
#: ``GLOBAL_CATALOG_URL`` is pointed at ``<server>/catalog``; the SDK appends ``/{plan_id}``.
CATALOG_PREFIX: Final = "/catalog"
CATALOG_ENTRY: Final = CATALOG_PREFIX + "/{plan_id}"

#: Where the emulator serves the Runtime API. The second and third prefixes contain
#: ``experimental``, so the official client uses the URL verbatim with no ``url_resolver``
#: (spec 1.2, recipe B); the third lets a saved account's ``url`` be just
#: ``<server>/experimental`` (``url_resolver`` is not saved, so saved accounts need one of them).
RUNTIME_PREFIXES: Final = ("/api/v1", "/experimental/api/v1", "/experimental")

BACKENDS: Final = "/backends"
BACKEND_CONFIGURATION: Final = "/backends/{name}/configuration"
BACKEND_PROPERTIES: Final = "/backends/{name}/properties"
BACKEND_STATUS: Final = "/backends/{name}/status"
INSTANCES_USAGE: Final = "/instances/usage"
JOBS: Final = "/jobs"
JOB: Final = "/jobs/{job_id}"
JOB_RESULTS: Final = "/jobs/{job_id}/results"
JOB_METRICS: Final = "/jobs/{job_id}/metrics"
JOB_LOGS: Final = "/jobs/{job_id}/logs"
JOB_CANCEL: Final = "/jobs/{job_id}/cancel"
JOB_TAGS: Final = "/jobs/{job_id}/tags"
SESSIONS: Final = "/sessions"
SESSION: Final = "/sessions/{session_id}"
#: Cancel, despite the name (spec 2.6 U).
SESSION_CLOSE: Final = "/sessions/{session_id}/close"

# Extensions IBM does not have. They live under their own sub-path of the runtime base so a
# client can probe for them; IBM answers 404 there and clients fall back to plain polling.
EXT_PREFIX: Final = "/aioruntime"
EXT_CAPABILITIES: Final = EXT_PREFIX + "/capabilities"
#: Long-poll: answers the job (as ``JOB``) once it is final or ``timeout`` seconds have passed.
EXT_JOB_WAIT: Final = EXT_PREFIX + "/jobs/{job_id}/wait"
EXT_STATISTICS: Final = EXT_PREFIX + "/statistics"
#: Upper bound of one long-poll, seconds (the client asks for less and loops).
EXT_WAIT_MAX_SECONDS: Final = 60.0
#: ``…/wait?include=result``: a completed job's answer carries its result text (the body of
#: ``GET /jobs/{id}/results``, as a JSON string) under this key, saving that request.
EXT_WAIT_RESULT_KEY: Final = "aioruntime_result"

HEALTH: Final = "/health"


def path(template: str, **values: str) -> str:
    """``template`` with its ``{placeholders}`` filled, each value percent-quoted, so an id can
    never add a path segment or a query (``path(JOB, job_id="a/b")`` → ``/jobs/a%2Fb``)."""
    return template.format(**{k: urllib.parse.quote(v, safe="") for k, v in values.items()})


#: The programs the emulator runs (``program_id`` of ``POST /jobs``).
PROGRAMS: Final = ("sampler", "estimator", "executor", "noise-learner")

# ---------------------------------------------------------------------------------------------
# States
# ---------------------------------------------------------------------------------------------


class JobState(enum.StrEnum):
    """Job states as the server sends them in ``state.status`` (capitalised words)."""

    QUEUED = "Queued"
    RUNNING = "Running"
    COMPLETED = "Completed"
    FAILED = "Failed"
    CANCELLED = "Cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_JOB_STATES


TERMINAL_JOB_STATES: Final = frozenset({JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED})


class SessionMode(enum.StrEnum):
    DEDICATED = "dedicated"
    BATCH = "batch"


class SessionState(enum.StrEnum):
    """Server-side session states (spec 3.3)."""

    OPEN = "open"
    ACTIVE = "active"
    INACTIVE = "inactive"
    CLOSED = "closed"


def session_status_string(state: str, accepting_jobs: bool) -> str:
    """What the official ``Session.status()`` shows for a REST ``state`` (spec 3.3)."""
    if state in ("open", "inactive"):
        return "Pending"
    if state == "pending_inactive" or (state == "active" and accepting_jobs):
        return "In progress, accepting new jobs"
    if state == "pending_closed" or state == "active":
        return "In progress, not accepting new jobs"
    return state.capitalize()


#: Reason code the client turns into ``RuntimeJobMaxTimeoutError`` (``CANCELLED`` → ``ERROR``).
REASON_RAN_TOO_LONG: Final = 1305


def client_job_status(state: str, reason_code: int | None) -> str:
    """The status name the official ``RuntimeJobV2.status()`` reports for a wire state."""
    upper = state.upper()
    if upper == "COMPLETED":
        return "DONE"
    if upper == "FAILED":
        return "ERROR"
    if upper == "CANCELLED" and reason_code == REASON_RAN_TOO_LONG:
        return "ERROR"
    return upper


# ---------------------------------------------------------------------------------------------
# Errors (codes from IBM's public registry, quantum.cloud.ibm.com/docs/errors)
# ---------------------------------------------------------------------------------------------


class ErrorCode(enum.IntEnum):
    INTERNAL = 1000
    #: IBM: "qObject is larger than the maximum size. Run a small job." The emulator uses it
    #: for a job whose simulation is predicted over its budget (--sim-budget).
    JOB_TOO_LARGE = 1001
    VALIDATION = 1002
    TRANSPILATION = 1003  # used for "circuit is not ISA for this backend"
    BACKEND_NOT_AVAILABLE = 1004
    BACKEND_NOT_FOUND = 1007
    TOO_MANY_JOBS = 1012
    NOT_AUTHORIZED = 1200
    INVALID_CREDENTIALS = 1201
    TOO_MANY_REQUESTS = 1202
    #: Not in the public registry excerpt we have; chosen for "no such job / session".
    NOT_FOUND = 1291
    #: Chosen for session-state conflicts (closed or not accepting jobs).
    SESSION_NOT_ACCEPTING = 1217
    #: Chosen for "the job is already final" on cancel (409).
    INVALID_STATE = 1218
    RAN_TOO_LONG = REASON_RAN_TOO_LONG
    #: The spec's trace uses 1517 for a job that failed while executing.
    EXECUTION_FAILED = 1517
    #: A worker process died under the job, or the emulator restarted with the job in flight.
    EMULATOR_FAULT = 1519
    #: Chosen: the emulator's store could not save a change (e.g. a full disk); nothing changed.
    STORAGE_UNAVAILABLE = 1520


def error_body(code: int, message: str, status: int, *, more_info: str = "") -> dict[str, Any]:
    """The one error body shape: IBM's ``errors`` list, plus the singular ``error`` object the
    official client looks for first (spec 1.4), so its exception text is clean."""
    item = {"code": str(code), "message": message, "more_info": more_info}
    return {"errors": [item], "error": item, "status_code": status, "trace": ""}


# ---------------------------------------------------------------------------------------------
# Codec
# ---------------------------------------------------------------------------------------------


def dumps(obj: Any) -> str:
    """Encode with the official ``RuntimeEncoder`` (QPY circuits, compressed ndarrays, results);
    a circuit whose QPY was compressed before is not compressed again (:func:`_encoder`)."""
    return json.dumps(obj, cls=_encoder())


#: Compressed QPY per thread (see :func:`_encoder`), by the QPY bytes: at most this many
#: circuits, each of at most this many QPY bytes (a trivial ISA circuit on a 156-qubit device:
#: 6 KB, most of it the layout), so a few MB at worst over the loop and the codec threads.
_PACKED_ENTRIES: Final = 16
_PACKED_MAX_BYTES: Final = 128 * 1024


@functools.cache
def _encoder() -> type[json.JSONEncoder]:
    """The official ``RuntimeEncoder``, remembering the compressed text of the circuits it
    wrote last. Its ``QuantumCircuit`` value is ``base64(zlib(QPY))``; a program sends the same
    circuit again and again (an optimizer's ansatz with new parameter values, a repeated
    sampling job), and ``zlib`` took 0.24-0.31 ms of a trivial ``ibm_fez`` job's 0.43-0.53 ms
    encode. So the QPY is written every time (a circuit may have changed since), as the
    official encoder writes it, and looked up by its bytes before compressing: the same bytes
    give the same text. (The official encoder's own text of one circuit may vary between
    calls: QPY writes a layout's registers in the order of a set. So
    ``tests/test_client_unit.py`` checks that each text decodes, with the official decoder,
    as the official encoder's does.)"""
    import base64
    import io
    import zlib

    from qiskit.circuit import QuantumCircuit
    from qiskit.qpy import dump
    from qiskit_ibm_runtime.json import (
        QISKIT_QPY_VERSION,
        SERVICE_MAX_SUPPORTED_QPY_VERSION,
        RuntimeEncoder,
    )

    version = min(SERVICE_MAX_SUPPORTED_QPY_VERSION, QISKIT_QPY_VERSION)  # as RuntimeEncoder

    class _Encoder(RuntimeEncoder):  # type: ignore[misc]
        def default(self, obj: Any) -> Any:
            if not isinstance(obj, QuantumCircuit) or hasattr(obj, "to_json"):  # (its order)
                return super().default(obj)
            with io.BytesIO() as buff:
                dump(obj, buff, RuntimeEncoder, version=version)
                qpy = buff.getvalue()
            text = _PACKED.get(
                qpy, lambda: base64.standard_b64encode(zlib.compress(qpy)).decode("utf-8")
            )
            return {"__type__": "QuantumCircuit", "__value__": text}

    return _Encoder


#: One decode at a time per process. ``RuntimeDecoder`` rebuilds ndarrays with ``np.load``, which
#: parses each array header with ``ast.literal_eval``; CPython 3.11's AST constructor is not safe
#: when threads parse at once (python/cpython#106905: a spurious ``SystemError: AST constructor
#: recursion depth mismatch``, seen here decoding 1000 results in worker threads). Decoding holds
#: the GIL nearly all the time anyway, so serializing it costs next to nothing.
_DECODE_LOCK = threading.Lock()


@dataclass(frozen=True, slots=True)
class DecodeLimits:
    """Bounds for decoding untrusted text (what a server decodes from its clients).

    ``RuntimeDecoder`` trusts its input: an ``ndarray``, ``QuantumCircuit`` or ``Instruction``
    value is base64 of zlib-compressed bytes that it inflates whole
    (``qiskit_ibm_runtime/json.py``, ``_decode_and_deserialize``), so a few MB of JSON can
    inflate to GBs; an ``spmatrix`` is an ``.npz`` archive inflated member by member. With
    limits, :func:`loads` first measures every such value (streaming, never holding more than a
    chunk) and refuses the text when all of them together would inflate to more than
    ``max_inflated_bytes``, or when it nests lists and objects more than ``max_depth`` deep.
    """

    max_inflated_bytes: int
    max_depth: int


class DecodeLimitError(ValueError):
    """The text is over a :class:`DecodeLimits` bound; the message says where."""


#: Types whose ``__value__`` is base64 of zlib-compressed bytes / of an ``.npz`` archive.
_ZLIB_TYPES: Final = frozenset({"ndarray", "QuantumCircuit", "Instruction"})
_NPZ_TYPES: Final = frozenset({"spmatrix"})
_INFLATE_CHUNK: Final = 1 << 20


def loads(
    text: str | bytes, *, limits: DecodeLimits | None = None, memo: CircuitMemo | None = None
) -> Any:
    """Decode with the official ``RuntimeDecoder`` (thread-safe; see ``_DECODE_LOCK``), within
    ``limits`` when given (else :class:`DecodeLimitError`). With ``memo``, a circuit whose QPY
    payload was decoded before is that same object again (see :class:`CircuitMemo`)."""
    if limits is not None:
        check_decode_limits(text, limits)
    with _DECODE_LOCK:
        return _decode(text, memo)


def loads_nowait(text: str | bytes) -> tuple[bool, Any]:
    """:func:`loads` unless another thread is decoding: ``(True, value)``, or ``(False, None)``
    at once instead of waiting for the decoder's lock (for a caller that must not block)."""
    if not _DECODE_LOCK.acquire(blocking=False):
        return False, None
    try:
        return True, _decode(text, None)
    finally:
        _DECODE_LOCK.release()


def _decode(text: str | bytes, memo: CircuitMemo | None) -> Any:
    """The decode of :func:`loads` (the caller holds ``_DECODE_LOCK``)."""
    if memo is None:
        return json.loads(text, cls=_decoder())
    return json.loads(text, cls=_memo_decoder(), memo=memo)


class CircuitMemo:
    """The circuits each thread decoded last, by their QPY payload (the base64 text of a
    ``QuantumCircuit`` value, compared whole): decoding the same payload again returns the
    same ``QuantumCircuit`` object, so **whoever decodes with a memo must never change a
    decoded circuit** (the emulator's pipeline builds new circuits from them).

    Why: a program sends the same circuit again and again (an optimizer's ansatz with new
    parameter values, a repeated sampling job), and QPY's ``load`` of a device-wide ISA circuit
    costs more than the rest of a small job's pre-processing (about 1.2 ms of a trivial
    ``ibm_fez`` job's 2.6, most of it rebuilding the 156-qubit layout). Bounded: at most
    ``entries`` circuits, each from a payload of at most ``max_payload`` characters (a
    10,000-gate circuit is about 60 KB); the least recently used goes first. One circuit may
    have two or three payloads (QPY writes a layout's registers in the order of a set), each
    decoded once. (The client's encoder keeps a circuit's compressed text in one too, by its
    QPY bytes: ``_PACKED``.)
    """

    def __init__(self, entries: int = 16, max_payload: int = 64 * 1024) -> None:
        self.entries = entries
        self.max_payload = max_payload
        # One memo per thread: a circuit is never shared between threads (a process's worker
        # runs one call at a time; the tests' in-thread planes run several).
        self._local = threading.local()
        self.hits = 0
        self.misses = 0

    def get(self, payload: str | bytes, decode: Callable[[], Any]) -> Any:
        """The circuit of ``payload``: remembered, or ``decode()`` (and remembered if small)."""
        circuits: OrderedDict[str | bytes, Any] | None = getattr(self._local, "circuits", None)
        if circuits is None:
            circuits = self._local.circuits = OrderedDict()
        if (found := circuits.get(payload)) is not None:
            circuits.move_to_end(payload)
            self.hits += 1
            return found
        self.misses += 1
        circuit = decode()
        if len(payload) <= self.max_payload and self.entries > 0:
            circuits[payload] = circuit
            while len(circuits) > self.entries:
                circuits.popitem(last=False)
        return circuit


#: The compressed text of the circuits this thread encoded last (see :func:`_encoder`).
_PACKED = CircuitMemo(entries=_PACKED_ENTRIES, max_payload=_PACKED_MAX_BYTES)


@functools.cache
def _decoder() -> type[json.JSONDecoder]:
    """The official ``RuntimeDecoder``, with a ``datetime`` value that is what
    ``RuntimeEncoder`` writes (``isoformat()``) read by :func:`_iso_datetime`; every other
    value, and a datetime written otherwise, is the official decoder's."""
    from qiskit_ibm_runtime.json import RuntimeDecoder

    class _Decoder(RuntimeDecoder):  # type: ignore[misc]
        def object_hook(self, obj: Any) -> Any:
            if obj.get("__type__") == "datetime" and isinstance(text := obj.get("__value__"), str):
                value = _iso_datetime(text)
                if value is not None:
                    return value
            return super().object_hook(obj)

    return _Decoder


def _iso_datetime(text: str) -> datetime.datetime | None:
    """``text`` read as ``RuntimeDecoder`` reads it (``dateutil.parser.parse``: the same instant
    and UTC offset) when it is what ``isoformat()`` writes, else ``None``. Why: a result's
    execution spans carry two datetimes, and dateutil's parser took 100 µs for each (0.2 ms of
    the client's ~5 ms per trivial job), ``fromisoformat`` 0.4 µs. The ``tzinfo`` is the
    standard library's ``timezone``; dateutil's own type depends on the machine (``tzlocal()``
    where the local zone is UTC, ``tzutc()`` elsewhere), so no caller could rely on it."""
    try:
        value = datetime.datetime.fromisoformat(text)
    except ValueError:
        return None
    return value if value.isoformat() == text else None  # else ("Z", "+0100"...): dateutil


@functools.cache
def _memo_decoder() -> type[json.JSONDecoder]:
    """:func:`_decoder` that looks ``QuantumCircuit`` values up in a :class:`CircuitMemo`
    first; every other value, and every miss, is decoded as there."""

    class _MemoDecoder(_decoder()):  # type: ignore[misc]
        def __init__(self, *args: Any, memo: CircuitMemo, **kwargs: Any) -> None:
            self._memo = memo
            super().__init__(*args, **kwargs)

        def object_hook(self, obj: Any) -> Any:
            value = obj.get("__value__")
            if obj.get("__type__") == "QuantumCircuit" and isinstance(value, str):
                return self._memo.get(value, lambda: super(_MemoDecoder, self).object_hook(obj))
            return super().object_hook(obj)

    return _MemoDecoder


def check_decode_limits(text: str | bytes, limits: DecodeLimits) -> None:
    """Raise :class:`DecodeLimitError` if decoding ``text`` would break ``limits``. Text that
    is not JSON passes: the decoder itself says what is wrong with it."""
    try:
        tree = json.loads(text)
    except RecursionError:
        raise DecodeLimitError(f"it nests more than {limits.max_depth} deep") from None
    except ValueError:
        return
    budget = limits.max_inflated_bytes
    stack: list[tuple[Any, int, str]] = [(tree, 1, "")]
    while stack:
        node, depth, where = stack.pop()
        if not isinstance(node, (dict, list)):
            continue
        if depth > limits.max_depth:
            raise DecodeLimitError(f"{where or 'it'} nests more than {limits.max_depth} deep")
        if isinstance(node, dict):
            kind, value = node.get("__type__"), node.get("__value__")
            if isinstance(kind, str) and isinstance(value, str):
                budget -= _inflated_size(kind, value, budget)
                if budget < 0:
                    raise DecodeLimitError(
                        f"the {kind} value at {where or 'the top'} inflates past the limit: "
                        f"all compressed values together may inflate to at most "
                        f"{limits.max_inflated_bytes} bytes"
                    )
            items: Any = ((f"{where}.{k}" if where else str(k), v) for k, v in node.items())
        else:
            items = ((f"{where}[{i}]", v) for i, v in enumerate(node))
        stack.extend((v, depth + 1, w) for w, v in items if isinstance(v, (dict, list)))


def _inflated_size(kind: str, value: str, budget: int) -> int:
    """Bytes the decoder would inflate ``value`` of type ``kind`` to, counted up to just past
    ``budget``; 0 for what it would not inflate or cannot decode (it reports that itself)."""
    import base64
    import binascii
    import io
    import zipfile
    import zlib

    if kind not in _ZLIB_TYPES and kind not in _NPZ_TYPES:
        return 0
    try:
        data = base64.standard_b64decode(value)
    except (binascii.Error, ValueError):
        return 0
    if kind in _NPZ_TYPES:  # zipfile stops each member at its declared size
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                return sum(info.file_size for info in archive.infolist())
        except (zipfile.BadZipFile, ValueError, OSError):
            return 0
    inflater, size = zlib.decompressobj(), 0
    try:
        while size <= budget and not inflater.eof:
            chunk = inflater.decompress(data, _INFLATE_CHUNK)
            data = inflater.unconsumed_tail
            if not chunk and not data:
                break  # truncated: the decoder will say so
            size += len(chunk)
    except zlib.error:
        return 0
    return size


def nesting_exceeds(value: Any, limit: int) -> bool:
    """Whether JSON-like ``value`` nests lists and dicts more than ``limit`` deep (a top-level
    ``[]`` is depth 1). Iterative, so it cannot itself hit the recursion limit."""
    stack: list[tuple[Any, int]] = [(value, 1)] if isinstance(value, (dict, list)) else []
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        children = node.values() if isinstance(node, dict) else node
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return False


def parse_bool(value: str | None, default: bool = False) -> bool:
    """Query booleans arrive as ``True``/``true``/``false`` (spec pitfall 13)."""
    if value is None:
        return default
    lowered = value.strip().lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no", ""):
        return False
    raise ValueError(f"not a boolean: {value!r}")
