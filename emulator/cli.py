"""The command line: ``python -m emulator`` / ``aioruntime-emulator`` serve the emulated service."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

import click

from aioruntime import protocol as p

from .config import Config, from_args

if TYPE_CHECKING:
    from .backends import Device

log = logging.getLogger("emulator")


def connection_snippet(config: Config, base_url: str) -> str:
    key, crn = config.api_keys[0].key, config.instances[0]
    return f"""\
Point the official client at it, either with arguments:

    import os
    os.environ.update(IAM_URL="{base_url}", GLOBAL_SEARCH_URL="{base_url}",
                      GLOBAL_CATALOG_URL="{base_url}{p.CATALOG_PREFIX}")
    from qiskit_ibm_runtime import QiskitRuntimeService
    service = QiskitRuntimeService(
        channel="ibm_quantum_platform", token="{key}",
        instance="{crn}",
        url="{base_url}{p.RUNTIME_PREFIXES[0]}",
        url_resolver=lambda url, instance, private_endpoint=False, channel=None: url,
    )

or with the environment only (then QiskitRuntimeService() needs no arguments):

    export QISKIT_IBM_TOKEN={key}
    export QISKIT_IBM_INSTANCE={crn}
    export QISKIT_IBM_URL={base_url}{p.RUNTIME_PREFIXES[1]}
    export IAM_URL={base_url} GLOBAL_SEARCH_URL={base_url}
    export GLOBAL_CATALOG_URL={base_url}{p.CATALOG_PREFIX}

or as a saved account (its url must contain "experimental"; IAM_URL, GLOBAL_SEARCH_URL and
GLOBAL_CATALOG_URL as above), then QiskitRuntimeService(name="emulator"):

    QiskitRuntimeService.save_account(
        channel="ibm_quantum_platform", token="{key}",
        instance="{crn}",
        url="{base_url}{p.RUNTIME_PREFIXES[2]}", name="emulator", overwrite=True,
    )
"""


async def serve(config: Config) -> None:
    # The server's modules are imported here, not at the top: main() starts the workers'
    # zygote first, so that its imports run beside these (see Zygote.prestart).
    from aiohttp import web

    from .api.keys import DEVICES, SCHEDULER
    from .app import create_app
    from .dashboard.web import is_loopback

    app = create_app(config)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()  # opens the store, starts the scheduler; workers warm in the background
    try:
        site = web.TCPSite(runner, config.host, config.port)
        await site.start()
        port = runner.addresses[0][1]
        base_url = f"http://{config.host}:{port}"
        print(f"aioruntime emulator listening on {base_url}", flush=True)
        devices: dict[str, Device] = app[DEVICES]
        print(
            f"  backends: {', '.join(n for n, d in devices.items() if not d.mock)} (dry runs on "
            f"their mock_ twins); clock {config.clock}; {config.lanes} lanes per backend; "
            f"noise {config.noise}, simulation budget {config.sim_budget_s:g} s per job"
        )
        print(connection_snippet(config, base_url), flush=True)
        # beyond loopback the dashboard wants the admin key (once; it becomes a cookie)
        key = "" if is_loopback(config.host) else f"?key={config.admin_key}"
        print(f"Dashboard: {base_url}/{key}  (Prometheus metrics: {base_url}/metrics)", flush=True)
        print(
            f"Admin API: {base_url}/admin/... with 'Authorization: Bearer {config.admin_key}'",
            flush=True,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        fatal = app[SCHEDULER].fatal
        fatal.add_done_callback(lambda _: stop.set())
        await stop.wait()
        if fatal.done():
            # A supervised service kept crashing (see emulator.supervise): stop rather than
            # serve with TTLs no longer enforced. Unfinished jobs are re-queued at the next start.
            log.critical("stopping: %r", fatal.result())
            raise SystemExit(70)
        # Drain: refuse new jobs, let those in flight finish within the bound. Whatever is
        # still unfinished stays in the store and is re-queued at the next start.
        log.info("draining (up to %g s)", config.drain_timeout_s)
        try:
            async with asyncio.timeout(config.drain_timeout_s):
                await app[SCHEDULER].drain()
        except TimeoutError:
            log.warning("drain timed out; unfinished jobs will be re-queued at the next start")
    finally:
        await runner.cleanup()
        log.info("stopped")


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        config = from_args(argv)
    except click.ClickException as exc:
        exc.show()
        return 2
    try:
        if config.workers == "process":
            from .backends import DEFAULT_BACKENDS, served_sources
            from .zygote import shared_zygote

            shared_zygote().prestart(served_sources(config.backends or DEFAULT_BACKENDS))
        asyncio.run(serve(config))
    except ValueError as exc:  # e.g. an unknown backend name
        print(f"aioruntime-emulator: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
