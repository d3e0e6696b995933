"""Helpers for the dashboard and metrics tests: jobs and sessions made straight through the
emulator's scheduler (no client in between), a reader of the server-sent event stream, and the
headless Chromium the browser tests drive.

Chromium is Debian's ``chromium`` package (``make test`` installs it when run as root); Playwright's
own browser download is not used. Its flags keep it off the network: without the
background-networking ones it keeps calling home.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import shutil
import urllib.request
from collections.abc import Generator
from typing import Any

from circuits import bell, sampler_params, to_isa

from aioruntime.protocol import DEFAULT_INSTANCE
from emulator.store import JobRecord, SessionRecord
from emulator.testing import EmulatorThread

BACKEND = "ibm_manila"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]


def find_chromium() -> str | None:
    """Debian's ``/usr/bin/chromium``, else a Chromium or Chrome on ``PATH``
    (``AIORUNTIME_CHROMIUM`` names another)."""
    candidates = [os.environ.get("AIORUNTIME_CHROMIUM", ""), "/usr/bin/chromium"]
    candidates += [shutil.which(n) or "" for n in ("chromium", "chromium-browser", "google-chrome")]
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


@functools.cache
def bell_params(shots: int = 10) -> str:
    return sampler_params([(to_isa(bell(), "manila"),)], {"default_shots": shots})


def submit(emu: EmulatorThread, session: SessionRecord | None = None, **kwargs: Any) -> JobRecord:
    """Submit a Bell Sampler job on ``ibm_manila`` (in ``session`` if given)."""

    async def go() -> JobRecord:
        return await emu.scheduler.submit(
            instance=kwargs.pop("instance", DEFAULT_INSTANCE),
            backend=BACKEND,
            program_id="sampler",
            params_json=bell_params(),
            session_id=session.id if session else None,
            **kwargs,
        )

    return emu.run(go)


def submit_many(emu: EmulatorThread, n: int) -> list[JobRecord]:
    """``n`` job-mode jobs, submitted together (the store commits them in a few writes)."""

    async def go() -> list[JobRecord]:
        return list(
            await asyncio.gather(
                *(
                    emu.scheduler.submit(
                        instance=DEFAULT_INSTANCE,
                        backend=BACKEND,
                        program_id="sampler",
                        params_json=bell_params(),
                    )
                    for _ in range(n)
                )
            )
        )

    jobs: list[JobRecord] = emu.run(go, timeout=120)
    return jobs


def open_session(emu: EmulatorThread, mode: str = "dedicated") -> SessionRecord:
    async def go() -> SessionRecord:
        return await emu.scheduler.sessions.create(
            instance=DEFAULT_INSTANCE, backend=BACKEND, mode=mode, max_ttl=None
        )

    return emu.run(go)


def sse_frames(
    url: str, headers: dict[str, str] | None = None
) -> Generator[dict[str, Any], None, None]:
    """The ``state`` frames of the dashboard's event stream, decoded, as they arrive."""
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=60) as response:
        event, data = "", ""
        for raw in response:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                data = line[6:]
            elif not line:
                if event == "state" and data:
                    yield json.loads(data)
                event, data = "", ""
