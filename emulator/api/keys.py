"""Typed application keys shared by the app factory and the handlers."""

from __future__ import annotations

import dataclasses
from typing import Any

from aiohttp import web

from ..backends import Device
from ..clock import Clock
from ..config import Config
from ..dashboard.model import DashboardModel
from ..events import Events
from ..faults import Faults
from ..metrics import EmulatorMetrics
from ..scheduler import Scheduler
from ..store import Store

CONFIG = web.AppKey("config", Config)
STORE = web.AppKey("store", Store)
SCHEDULER = web.AppKey("scheduler", Scheduler)
CLOCK = web.AppKey("clock", Clock)
DEVICES = web.AppKey("devices", dict[str, Device])
REQUEST_LOG = web.AppKey("request_log", list[dict[str, Any]])
FAULTS = web.AppKey("faults", Faults)
EVENTS = web.AppKey("events", Events)
DASHBOARD = web.AppKey("dashboard", DashboardModel)
METRICS = web.AppKey("metrics", EmulatorMetrics)


@dataclasses.dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling: the instance (CRN) the request acts for."""

    instance: str
    key_id: str


CALLER = web.RequestKey("caller", Caller)
