"""The dashboard under load, and its screenshot: ``python -m benchmarks.dashboard load|screenshot``.

``load`` runs 1,000 Sampler jobs (a Bell circuit on ``ibm_manila``, submitted at once, straight
to the scheduler) twice: with nobody watching, then with a headless Chromium on the dashboard,
five more stream readers and one connection that never reads. It prints, for both runs, the
wall time until the last job finished and how late the emulator's event loop woke up (a 5 ms
ticker), and, for the watched run, the frames each viewer got and their sizes, the browser's
long tasks and how fast the page still answers.

``screenshot PATH`` takes the picture in the README: a session, a batch and job-mode jobs in
flight under ``scaled:0.1``.

Both need the test extra (Playwright) and Debian's ``/usr/bin/chromium``.
"""

from __future__ import annotations

import asyncio
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
BACKEND = "ibm_manila"
INSTANCE = "crn:v1:bluemix:public:quantum-computing:us-east:a/0123456789abcdef::"


def _params(shots: int) -> str:
    from qiskit import QuantumCircuit
    from qiskit.primitives.containers.sampler_pub import SamplerPub
    from qiskit.transpiler import generate_preset_pass_manager
    from qiskit_ibm_runtime.json import RuntimeEncoder

    from emulator.backends import device_target

    qc = QuantumCircuit(2)
    qc.h(0)
    qc.cx(0, 1)
    qc.measure_all()
    pm = generate_preset_pass_manager(optimization_level=1, target=device_target("manila"))
    body = {
        "pubs": [SamplerPub.coerce((pm.run(qc),))],
        "options": {"default_shots": shots},
        "version": 2,
        "support_qiskit": True,
    }
    return json.dumps(body, cls=RuntimeEncoder)


def _emulator(clock: str) -> Any:
    from emulator.config import ClockSpec, Config
    from emulator.testing import EmulatorThread

    return EmulatorThread(
        Config(port=0, backends=BACKEND, clock=ClockSpec.parse(clock), data_dir=Path(":memory:"))
    )


async def _submit(emu: Any, params: str, n: int, session_id: str | None = None) -> list[Any]:
    return list(
        await asyncio.gather(
            *(
                emu.scheduler.submit(
                    instance=INSTANCE,
                    backend=BACKEND,
                    program_id="sampler",
                    params_json=params,
                    session_id=session_id,
                )
                for _ in range(n)
            )
        )
    )


def _run_jobs(emu: Any, params: str, n: int) -> dict[str, float]:
    """Submit ``n`` jobs at once; wall seconds until all are final, the loop's lag, and how
    long one dashboard snapshot takes to build and encode with them all in flight."""
    from emulator.api.keys import DASHBOARD

    lags: list[float] = []
    encode: list[float] = []

    async def go() -> float:
        async def ticker() -> None:
            while True:
                start = time.perf_counter()
                await asyncio.sleep(0.005)
                lags.append(time.perf_counter() - start - 0.005)

        tick = asyncio.create_task(ticker())
        start = time.perf_counter()
        jobs = await _submit(emu, params, n)
        t0 = time.perf_counter()
        json.dumps(emu.app[DASHBOARD].snapshot())
        encode.append(time.perf_counter() - t0)
        await asyncio.gather(*(emu.store.wait_final(j.id) for j in jobs))
        wall = time.perf_counter() - start
        tick.cancel()
        return wall

    wall = emu.run(go, timeout=1800)
    lags.sort()
    return {
        "wall_s": wall,
        "lag_p50_ms": lags[len(lags) // 2] * 1e3,
        "lag_p99_ms": lags[int(len(lags) * 0.99)] * 1e3,
        "lag_max_ms": lags[-1] * 1e3,
        "snapshot_ms": encode[0] * 1e3,
    }


def _frame_sizes(path: Path) -> list[int]:
    """Sizes of the ``data:`` lines a stream reader saved."""
    return [len(line) for line in path.read_bytes().splitlines() if line.startswith(b"data: ")]


def load(n: int = 1000) -> None:
    from playwright.sync_api import sync_playwright

    params = _params(shots=100)
    with _emulator("instant") as emu:
        _run_jobs(emu, params, 20)  # warm the workers
        alone = _run_jobs(emu, params, n)
        # stream readers in their own processes (curl), so they take nothing from this one
        tmp = Path(tempfile.mkdtemp(prefix="dashboard-load-"))
        readers = [
            subprocess.Popen(
                ["curl", "-sN", "-o", str(tmp / f"reader{i}"), emu.base_url + "/dashboard/events"]
            )
            for i in range(5)
        ]
        stalled = socket.create_connection(("127.0.0.1", emu.port))
        stalled.sendall(b"GET /dashboard/events HTTP/1.1\r\nHost: localhost\r\n\r\n")
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(emu.base_url + "/")
            page.wait_for_selector("#connection[data-state=live]")
            page.evaluate(
                """window.__long = [];
                new PerformanceObserver((l) => window.__long.push(...l.getEntries().map(
                  (e) => e.duration))).observe({entryTypes: ["longtask"]});"""
            )
            before = int(page.evaluate("document.documentElement.dataset.frames"))
            watched = _run_jobs(emu, params, n)
            frames = int(page.evaluate("document.documentElement.dataset.frames")) - before
            long_tasks = page.evaluate("window.__long")
            t0 = time.perf_counter()
            page.evaluate("1")
            answer_ms = (time.perf_counter() - t0) * 1e3
            rows = page.locator("#jobs tbody tr").count()
            costs = page.evaluate("window.dashboardStats")
            browser.close()
        for reader in readers:
            reader.terminate()
            reader.wait()
        stalled.close()
    per_reader = [_frame_sizes(tmp / f"reader{i}") for i in range(len(readers))]
    sizes = [size for frames_of in per_reader for size in frames_of]
    print(f"{n} jobs, instant clock, 5 lanes, {BACKEND}")
    print(f"  nobody watching: {json.dumps({k: round(v, 2) for k, v in alone.items()})}")
    print(f"  watched:         {json.dumps({k: round(v, 2) for k, v in watched.items()})}")
    print(
        f"  browser: {frames} frames ({frames / watched['wall_s']:.1f}/s), "
        f"{len(long_tasks)} long tasks (max {max(long_tasks, default=0):.0f} ms), "
        f"jobs table {rows} rows, page answered in {answer_ms:.1f} ms"
    )
    for what in ("frame", "draw"):
        count, total, most = costs[what]
        print(
            f"  browser {what}s: {int(count)}, mean {total / max(count, 1):.1f} ms, "
            f"max {most:.1f} ms"
        )
    print(
        f"  stream readers: frames {[len(f) for f in per_reader]}, frame size mean "
        f"{statistics.mean(sizes) / 1024:.1f} KiB, max {max(sizes) / 1024:.1f} KiB"
    )


def screenshot(path: Path) -> None:
    from playwright.sync_api import sync_playwright

    params = _params(shots=1000)
    with _emulator("scaled:0.1") as emu:

        async def scene() -> None:
            book = emu.scheduler.sessions
            session = await book.create(
                instance=INSTANCE, backend=BACKEND, mode="dedicated", max_ttl=None
            )
            batch = await book.create(
                instance=INSTANCE, backend=BACKEND, mode="batch", max_ttl=None
            )
            await _submit(emu, params, 4)
            await asyncio.sleep(1.0)
            await _submit(emu, params, 6, batch.id)
            await asyncio.sleep(2.5)
            await _submit(emu, params, 3, session.id)
            await asyncio.sleep(2.0)
            await _submit(emu, params, 5, session.id)
            await _submit(emu, params, 3)

        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            page = browser.new_page(viewport={"width": 1280, "height": 1180})
            page.goto(emu.base_url + "/")
            page.wait_for_selector("#connection[data-state=live]")
            page.select_option("#window", "10")
            emu.run(scene)
            page.wait_for_timeout(600)  # the session's last jobs in the lanes and on the QPU
            path.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(path), full_page=False)
            browser.close()
    print(f"wrote {path}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["load"]:
        load(int(sys.argv[2]) if len(sys.argv) > 2 else 1000)
    elif sys.argv[1:2] == ["screenshot"] and len(sys.argv) == 3:
        screenshot(Path(sys.argv[2]))
    else:
        raise SystemExit("usage: python -m benchmarks.dashboard load [N] | screenshot PATH")
