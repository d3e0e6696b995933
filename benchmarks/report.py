"""Results: targets with PASS/MISS, the plain-text table, and the JSON files.

A run yields one :class:`WorkloadResult` per (workload, clock). Each has table rows (one per
mode or client measured), free-form figures for the JSON, and :class:`Target` checks. Targets are
reported, never asserted: a MISS says by how much.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "Target",
    "WorkloadResult",
    "render_results",
    "render_table",
    "render_targets",
    "result_filename",
    "run_stamp",
    "write_json",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class Target:
    """``value op limit``, e.g. wall/bound ``<=`` 1.10. ``margin`` is positive when met: how
    far inside the limit the value is, as a fraction of the limit."""

    name: str
    value: float
    op: Literal["<=", ">=", "=="]
    limit: float
    unit: str = ""

    @property
    def passed(self) -> bool:
        if math.isnan(self.value):
            return False
        if self.op == "<=":
            return self.value <= self.limit
        if self.op == ">=":
            return self.value >= self.limit
        return self.value == self.limit

    @property
    def margin(self) -> float:
        """Relative margin: (limit - value)/|limit| for ``<=``, (value - limit)/|limit| for
        ``>=``; for ``==`` 0 when met, else -|value - limit| (absolute)."""
        if math.isnan(self.value):
            return math.nan
        if self.op == "==":
            return 0.0 if self.passed else -abs(self.value - self.limit)
        scale = abs(self.limit) or 1.0
        diff = self.limit - self.value if self.op == "<=" else self.value - self.limit
        return diff / scale

    def verdict(self) -> str:
        return "PASS" if self.passed else "MISS"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed, "margin": self.margin}


@dataclass(slots=True, kw_only=True)
class WorkloadResult:
    workload: str
    clock: str
    params: dict[str, Any]
    #: Table rows: column → value. Every row of one result has the same columns.
    rows: list[dict[str, Any]]
    figures: dict[str, Any] = field(default_factory=dict)
    targets: list[Target] = field(default_factory=list)
    artifacts: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "workload": self.workload,
            "clock": self.clock,
            "params": self.params,
            "rows": self.rows,
            "figures": self.figures,
            "targets": [t.as_dict() for t in self.targets],
            "artifacts": self.artifacts,
            "notes": self.notes,
            "elapsed_s": self.elapsed_s,
        }


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if math.isinf(value):
            return "inf"
        magnitude = abs(value)
        if magnitude >= 100:
            return f"{value:.1f}"
        if magnitude >= 1:
            return f"{value:.3f}".rstrip("0").rstrip(".") if magnitude >= 10 else f"{value:.3f}"
        return f"{value:.4f}"
    return str(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def render_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """Rows as an aligned plain-text table: text left-aligned, numbers right-aligned."""
    if not rows:
        return "(no rows)"
    cols = list(columns or rows[0].keys())
    cells = [[_cell(row.get(c)) for c in cols] for row in rows]
    numeric = [all(_is_number(row.get(c)) or row.get(c) is None for row in rows) for c in cols]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(cols)]

    def line(values: Sequence[str]) -> str:
        parts = [
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    out = [line(cols), line(["-" * w for w in widths])]
    out.extend(line(r) for r in cells)
    return "\n".join(out)


def render_targets(results: Iterable[WorkloadResult]) -> str:
    rows = []
    for res in results:
        for t in res.targets:
            rows.append(
                {
                    "workload": res.workload,
                    "clock": res.clock,
                    "target": t.name,
                    "measured": f"{_cell(t.value)}{t.unit}",
                    "limit": f"{t.op} {_cell(t.limit)}{t.unit}",
                    "result": t.verdict(),
                    "margin": "-"
                    if math.isnan(t.margin)
                    else f"{t.margin:+.1%}"
                    if t.op != "=="
                    else _cell(t.margin),
                }
            )
    return render_table(rows) if rows else "(no targets)"


def render_results(results: Sequence[WorkloadResult]) -> str:
    """The whole report: one section per (workload, clock), then the targets."""
    parts = []
    for res in results:
        params = ", ".join(f"{k}={v}" for k, v in res.params.items())
        parts.append(f"== {res.workload} | clock {res.clock} | {params}")
        parts.append(render_table(res.rows))
        parts.extend(f"   {note}" for note in res.notes)
        parts.append("")
    parts.append("== targets")
    parts.append(render_targets(results))
    return "\n".join(parts)


def run_stamp(now: datetime | None = None) -> str:
    """``20261121T142530Z``: UTC, sortable, safe in file names."""
    return (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-")


def result_filename(result: WorkloadResult, stamp: str, suffix: str = ".json") -> str:
    return f"{_slug(result.workload)}_{_slug(result.clock)}_{stamp}{suffix}"


def write_json(
    results: Sequence[WorkloadResult],
    out_dir: Path,
    *,
    stamp: str,
    run_info: Mapping[str, Any],
) -> list[Path]:
    """One file per (workload, clock) named ``<workload>_<clock>_<stamp>.json``, and
    ``latest.json`` with the whole run. Returns the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for res in results:
        path = out_dir / result_filename(res, stamp)
        body = {"run": dict(run_info), "stamp": stamp, "result": res.as_dict()}
        path.write_text(_dump(body))
        written.append(path)
    latest = out_dir / "latest.json"
    summary: dict[str, Any] = {
        "run": dict(run_info),
        "stamp": stamp,
        "files": [p.name for p in written],
        "results": [r.as_dict() for r in results],
    }
    latest.write_text(_dump(summary))
    written.append(latest)
    return written


def _finite(value: Any) -> Any:
    """NaN and infinities become null: JSON has no spelling for them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _dump(body: Any) -> str:
    plain = json.loads(json.dumps(body, default=_json_default))
    return json.dumps(_finite(plain), indent=2, allow_nan=False) + "\n"


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return value.tolist()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")
