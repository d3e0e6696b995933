"""A gate for calls on a worker plane: the test's TCP server that calls stop at.

A call running ``plane_funcs.wait_at_gate(port, tag)`` connects and says which process runs
it, then waits. The test so learns, without polling or sleeping, that the call runs and where;
it lets the call through (:meth:`Arrival.release`), or kills that process, or cancels the call,
and sees the connection drop when the process is gone (:meth:`Arrival.gone`).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

__all__ = ["WAIT_S", "Arrival", "Gate"]

#: A bound on every wait: a hang fails by name instead of at pytest's timeout.
WAIT_S = 120


@dataclass(eq=False)
class Arrival:
    """A call waiting at the gate: its worker's pid and its tag."""

    pid: int
    tag: str
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    def release(self) -> None:
        self.writer.write(b"g")

    async def gone(self) -> None:
        """Return once the worker process that ran the call has closed the connection."""
        async with asyncio.timeout(WAIT_S):
            assert await self.reader.read() == b""


class Gate:
    def __init__(self) -> None:
        self._arrivals: asyncio.Queue[Arrival] = asyncio.Queue()
        self._writers: list[asyncio.StreamWriter] = []
        self.port = 0

    async def __aenter__(self) -> Gate:
        self._server = await asyncio.start_server(self._arrive, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for writer in self._writers:
            writer.close()
        self._server.close()

    async def _arrive(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        pid, tag = (await reader.readline()).decode().split()
        await self._arrivals.put(Arrival(int(pid), tag, reader, writer))

    async def next(self) -> Arrival:
        async with asyncio.timeout(WAIT_S):
            return await self._arrivals.get()
