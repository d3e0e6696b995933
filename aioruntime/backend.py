"""``AsyncBackend``: one Runtime backend; :class:`BackendCatalog`: the backends of a service.

:func:`load_backend` reads ``/backends/{name}/configuration`` and (except for simulators)
``/properties``, decodes them with the official decoders and builds the qiskit ``Target`` in a
worker thread, off the event loop. The catalog lists ``GET /backends``, loads each backend once
(concurrent first uses share the load), caches it, and picks the least busy one
(:meth:`BackendCatalog.least_busy`).

A backend holds its service's :class:`~aioruntime._context.ClientContext`; the service itself is
kept only to answer the official ``backend.service`` property (hence the type-only import).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from qiskit.providers import BackendV2, Options

from . import protocol as p
from .errors import BackendNotFoundError, UsageError

if TYPE_CHECKING:
    from qiskit.transpiler import Target
    from qiskit_ibm_runtime.models import BackendProperties, QasmBackendConfiguration

    from ._context import ClientContext
    from .service import AsyncRuntimeService

__all__ = ["AsyncBackend", "BackendCatalog", "backend_status", "load_backend"]


class AsyncBackend(BackendV2):  # type: ignore[misc]
    """A Runtime backend: name, ``num_qubits`` and a qiskit ``Target`` built from the server's
    ``/configuration`` and ``/properties`` (with the official decoders), so
    ``generate_preset_pass_manager(target=backend.target)`` works.

    It cannot ``run()`` circuits itself: pass it as ``mode`` to :class:`AsyncSamplerV2` or
    :class:`AsyncEstimatorV2`, or to :class:`AsyncSession` / :class:`AsyncBatch`.
    """

    def __init__(
        self,
        *,
        context: ClientContext,
        service: AsyncRuntimeService,
        name: str,
        configuration: QasmBackendConfiguration,
        properties: BackendProperties | None,
        target: Target,
        summary: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(
            provider=None,
            name=name,
            description=getattr(configuration, "description", None),
            online_date=getattr(configuration, "online_date", None),
            backend_version=getattr(configuration, "backend_version", None),
        )
        self._context = context
        self._service = service
        self._configuration = configuration
        self._properties = properties
        self._faulty: _FaultyProperties | None = None
        self._target = target
        self._summary = dict(summary or {})

    def __repr__(self) -> str:
        return f"<AsyncBackend({self.name!r}, num_qubits={self.num_qubits})>"

    @property
    def service(self) -> AsyncRuntimeService:
        """The service this backend was loaded by (as the official ``IBMBackend.service``)."""
        return self._service

    @property
    def context(self) -> ClientContext:
        """What this backend's handles (sessions, primitives, jobs) use of the service."""
        return self._context

    @property
    def target(self) -> Target:
        return self._target

    @property
    def max_circuits(self) -> None:
        return None

    @property
    def simulator(self) -> bool:
        return bool(getattr(self._configuration, "simulator", False))

    @property
    def is_mock(self) -> bool:
        return self._summary.get("class") == "mock"

    @classmethod
    def _default_options(cls) -> Options:
        return Options()

    def configuration(self) -> QasmBackendConfiguration:
        return self._configuration

    def properties(self) -> BackendProperties | None:
        return self._properties

    def check_faulty(self, circuit: Any) -> None:
        """The official ``IBMBackend.check_faulty``, without redoing its work per circuit.

        The official method rebuilds the faulty qubit and gate lists from the properties on every
        call (0.5 ms on a 156-qubit device, per PUB); they are computed once per backend here and
        handed to the same official code. Raises ``ValueError`` like it.
        """
        from qiskit_ibm_runtime.ibm_backend import IBMBackend

        if self._faulty is None:
            props = self._properties
            self._faulty = _FaultyProperties(
                props.faulty_qubits() if props else [], props.faulty_gates() if props else []
            )
        if self._faulty.qubits or self._faulty.gates:
            IBMBackend.check_faulty(self._faulty, circuit)

    def run(self, run_input: Any, **options: Any) -> Any:
        raise UsageError(
            "AsyncBackend does not run circuits directly: use "
            "`await AsyncSamplerV2(mode=backend).run(pubs)` (or AsyncEstimatorV2)."
        )

    async def status(self) -> dict[str, Any]:
        """``GET /backends/{name}/status``, mapped as the official adapter maps it."""
        return await backend_status(self._context, self.name)


async def backend_status(context: ClientContext, name: str) -> dict[str, Any]:
    """``GET /backends/{name}/status`` as the official ``BackendStatus`` fields:
    ``operational``, ``pending_jobs``, ``status_msg``, ``backend_name``, ``backend_version``."""
    body = await context.api.get_json(
        p.path(p.BACKEND_STATUS, name=name),
        errors={404: (BackendNotFoundError, {"backend_name": name})},
    )
    body = body or {}
    return {
        "backend_name": name,
        "backend_version": body.get("backend_version", "0.0.0"),
        "status_msg": body.get("status", ""),
        "operational": bool(body.get("state", False)),
        "pending_jobs": max(int(body.get("length_queue", 0) or 0), 0),
    }


def _decode_configuration(name: str, instance: str, body: bytes) -> QasmBackendConfiguration:
    """Decode ``/configuration`` with the official decoder (runs in a worker thread)."""
    from qiskit_ibm_runtime.utils.backend_decoder import configuration_from_server_data

    configuration = configuration_from_server_data(json.loads(body), instance=instance)
    if configuration is None:
        raise BackendNotFoundError(
            f"Backend {name} has a configuration the official decoder rejects.",
            backend_name=name,
        )
    return configuration


def _build_target(
    name: str, configuration: QasmBackendConfiguration, props_body: bytes | None
) -> tuple[BackendProperties | None, Target]:
    """Decode ``/properties`` and build the Target (runs in a worker thread)."""
    from qiskit_ibm_runtime.utils.backend_converter import convert_to_target
    from qiskit_ibm_runtime.utils.backend_decoder import properties_from_server_data

    properties = None
    if props_body:
        raw_props = json.loads(props_body)
        if isinstance(raw_props, dict) and raw_props:  # {} means "no properties"
            raw_props["backend_name"] = name  # as the official adapter does
            properties = properties_from_server_data(raw_props)
    target = convert_to_target(configuration=configuration, properties=properties)
    return properties, target


async def load_backend(
    context: ClientContext, service: AsyncRuntimeService, summary: Mapping[str, Any]
) -> AsyncBackend:
    """The backend ``summary["name"]`` (an entry of ``GET /backends``), with its Target.

    Raises :class:`BackendNotFoundError` when the server answers 404 or the official decoder
    rejects the configuration."""
    name = str(summary["name"])
    not_found = {404: (BackendNotFoundError, {"backend_name": name})}
    config = await context.api.request(
        "GET", p.path(p.BACKEND_CONFIGURATION, name=name), errors=not_found
    )
    configuration = await context.run_sync(
        _decode_configuration, name, context.instance, config.body
    )
    props_body = None
    if not getattr(configuration, "simulator", False):
        # the official client never reads properties of simulators
        props = await context.api.request(
            "GET", p.path(p.BACKEND_PROPERTIES, name=name), errors=not_found
        )
        props_body = props.body
    properties, target = await context.run_sync(_build_target, name, configuration, props_body)
    return AsyncBackend(
        context=context,
        service=service,
        name=name,
        configuration=configuration,
        properties=properties,
        target=target,
        summary=summary,
    )


class _FaultyProperties:
    """Precomputed faulty qubits and gates, shaped for ``IBMBackend.check_faulty``: it reads
    ``self.properties()`` and calls ``faulty_qubits()`` / ``faulty_gates()`` on the result."""

    def __init__(self, qubits: list[int], gates: list[Any]) -> None:
        self.qubits, self.gates = qubits, gates

    def properties(self) -> _FaultyProperties:
        return self

    def faulty_qubits(self) -> list[int]:
        return self.qubits

    def faulty_gates(self) -> list[Any]:
        return self.gates


class BackendCatalog:
    """The backends of one service, each loaded once and cached for the service's lifetime
    (the official client re-lists ``/backends`` on every ``backend()`` call but caches the
    configurations; the Target is what costs, so it is built once here)."""

    def __init__(self, context: ClientContext, service: AsyncRuntimeService) -> None:
        self._context = context
        self._service = service
        self._loaded: dict[str, AsyncBackend] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def __len__(self) -> int:
        return len(self._loaded)

    @property
    def context(self) -> ClientContext:
        return self._context

    async def devices(self) -> list[dict[str, Any]]:
        """``GET /backends?include_mocks=True``: the summaries of every device, mocks included."""
        self._context.require_open()
        body = await self._context.api.get_json(p.BACKENDS, params={"include_mocks": "True"})
        devices = (body or {}).get("devices") or []
        return [d for d in devices if isinstance(d, dict) and isinstance(d.get("name"), str)]

    async def all(
        self,
        name: str | None = None,
        *,
        min_num_qubits: int | None = None,
        include_mocks: bool = False,
    ) -> list[AsyncBackend]:
        """Every backend that matches, loaded concurrently, each with its Target."""
        devices = await self.devices()
        if name is not None:
            devices = [d for d in devices if d["name"] == name]
        elif not include_mocks:
            devices = [d for d in devices if d.get("class") != "mock"]
        loaded = await asyncio.gather(*(self.load(d) for d in devices))
        if min_num_qubits is not None:
            loaded = [b for b in loaded if b.num_qubits >= min_num_qubits]
        return list(loaded)

    async def get(self, name: str) -> AsyncBackend:
        """The backend ``name``. Raises :class:`BackendNotFoundError` (naming the others)."""
        self._context.require_open()
        if (cached := self._loaded.get(name)) is not None:
            return cached
        devices = await self.devices()
        summary = next((d for d in devices if d["name"] == name), None)
        if summary is None:
            raise BackendNotFoundError(
                f"No backend named {name!r} for instance {self._context.instance}; available: "
                f"{', '.join(sorted(d['name'] for d in devices)) or 'none'}.",
                backend_name=name,
            )
        return await self.load(summary)

    async def get_or_none(self, name: str | None) -> AsyncBackend | None:
        """The backend ``name``, or None when there is no name or no such backend any more (a
        job on a retired backend is still usable)."""
        if not name:
            return None
        try:
            return await self.get(name)
        except BackendNotFoundError:
            return None

    async def load(self, summary: Mapping[str, Any]) -> AsyncBackend:
        """The backend of a ``GET /backends`` entry, from the cache or loaded once."""
        name = str(summary["name"])
        if (cached := self._loaded.get(name)) is not None:
            return cached
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:  # concurrent first uses of one backend load it once
            if (cached := self._loaded.get(name)) is not None:
                return cached
            backend = await load_backend(self._context, self._service, summary)
            self._loaded[name] = backend
            return backend

    async def least_busy(
        self,
        min_num_qubits: int | None = None,
        filters: Callable[[AsyncBackend], bool] | None = None,
    ) -> AsyncBackend:
        """The operational backend with the fewest pending jobs, decided as the official
        ``least_busy``: the non-mock devices of ``GET /backends`` whose ``status.name`` is
        ``online``, with at least ``min_num_qubits`` ``qubits``, ordered by ``queue_length``
        (ties keep the server's order); the first that loads wins. A device the list gives no
        status or queue length for is asked through ``/backends/{name}/status``. The list is
        read afresh on every call (the official client reuses the one it read at start).

        ``filters`` is called with each loaded candidate (so all of them are loaded, as in the
        official client). Raises :class:`BackendNotFoundError` when nothing matches.
        """
        devices = [d for d in await self.devices() if d.get("class") != "mock"]
        queues = await asyncio.gather(*(self._queue(d) for d in devices))
        candidates = [
            (queue, d)
            for queue, d in zip(queues, devices, strict=True)
            if queue is not None and (not min_num_qubits or _qubits(d) >= min_num_qubits)
        ]
        if filters is not None:
            loaded = await asyncio.gather(*(self.load(d) for _, d in candidates))
            candidates = [c for c, b in zip(candidates, loaded, strict=True) if filters(b)]
        for _, summary in sorted(candidates, key=lambda c: c[0]):
            try:
                backend = await self.load(summary)
            except BackendNotFoundError:
                continue  # e.g. a configuration the official decoder rejects
            if not min_num_qubits or backend.num_qubits >= min_num_qubits:
                return backend
        raise BackendNotFoundError("No backend matches the criteria.", backend_name="")

    async def _queue(self, summary: Mapping[str, Any]) -> int | None:
        """Pending jobs of an operational device, from its list entry or its status route;
        None when it is not operational."""
        status, queue = summary.get("status"), summary.get("queue_length")
        if isinstance(status, Mapping) and "name" in status and isinstance(queue, int):
            return queue if status["name"] == "online" else None
        try:
            answer = await backend_status(self._context, str(summary["name"]))
        except BackendNotFoundError:
            return None
        return int(answer["pending_jobs"]) if answer["operational"] else None


def _qubits(summary: Mapping[str, Any]) -> float:
    """A device's qubit count from its list entry; unknown counts pass (checked once loaded)."""
    qubits = summary.get("qubits", summary.get("physical_qubits"))
    return float(qubits) if isinstance(qubits, int) else float("inf")
