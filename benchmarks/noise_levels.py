"""Noisy simulation at device scale: what the ``pauli`` level costs and how close it is to ``full``.

``python -m benchmarks.noise_levels [--cold] [--out DIR]`` runs, in this process, the exact
functions the emulator's workers run (``classical.preprocess`` in a lane,
``classical.sample`` in the QPU worker, ``classical.postprocess``), so the times are the QPU
worker's own, conversion included, without the HTTP and scheduling around them:

1. the twirled noise table of ``ibm_fez``: built from scratch (``--cold``, ~10 s) for every
   instruction and for only those a 156-qubit GHZ job runs (what its first job pays), and read
   back from the on-disk cache by a fresh table, as a restarted emulator does;
2. GHZ on 156 and 20 qubits of ``ibm_fez``, 1000 shots, ``pauli``: the QPU stage, first call
   (table from disk) and steady state, with a profile of the 156-qubit case; and the 156-qubit
   GHZ with every ``rz`` a parameter, 100 parameter sets (what an executor's twirls look like);
3. the same 20-qubit GHZ at ``full``: the plan's prediction, what 3 shots really take, and how
   fast the over-budget job is refused;
4. accuracy, ``pauli`` against ``full``: GHZ-5 success probability and a 4-qubit Estimator on
   a non-Clifford ansatz, 4000 shots each.

Results: a table on stdout and ``noise-levels_<UTC stamp>.json`` in ``--out``.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import math
import pstats
import statistics
import tempfile
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

FEZ = "fez"
SHOTS = 1000
ACCURACY_SHOTS = 4000


def _isa(circuit: Any) -> Any:
    from qiskit.transpiler import generate_preset_pass_manager

    from emulator.targets import device_target

    pm = generate_preset_pass_manager(
        optimization_level=1, target=device_target(FEZ), seed_transpiler=1
    )
    return pm.run(circuit)


def _ghz(n: int) -> Any:
    from qiskit import QuantumCircuit

    qc = QuantumCircuit(n)
    qc.h(0)
    for q in range(n - 1):
        qc.cx(q, q + 1)
    qc.measure_all()
    return qc


def _params(pubs: list[Any], level: str, shots: int | None = None, **options: Any) -> str:
    from qiskit_ibm_runtime.json import RuntimeEncoder

    opts: dict[str, Any] = {
        "experimental": {"noise_level": level},
        "simulator": {"seed_simulator": 5},
    }
    if shots is not None:
        opts["default_shots"] = shots
    opts.update(options)
    return json.dumps({"pubs": pubs, "options": opts, "version": 2}, cls=RuntimeEncoder)


def _clear_caches() -> None:
    from emulator import noise, targets

    noise.pauli_noise_for.cache_clear()
    noise.table_for.cache_clear()
    targets.device_noise_model_for.cache_clear()


def table(cache: Path, cold: bool) -> dict[str, Any]:
    """Building ``ibm_fez``'s twirled table, and reading it back from disk."""
    from emulator import noise

    out: dict[str, Any] = {}
    everything = tuple(range(156))
    if cold:
        _clear_caches()
        start = time.perf_counter()
        noise.DeviceTable(FEZ, cache).ensure(everything)
        out["build_s"] = time.perf_counter() - start
        names = noise.instruction_names([_isa(_ghz(156))])
        start = time.perf_counter()
        noise.DeviceTable(FEZ, None).ensure(everything, names)  # no cache: computed again
        out["build_ghz156_s"] = time.perf_counter() - start
        out["ghz156_instructions"] = sorted(names)
    else:
        noise.DeviceTable(FEZ, cache).ensure(everything)  # make sure the file is there
    start = time.perf_counter()
    fresh = noise.DeviceTable(FEZ, cache)
    fresh.ensure(everything)
    fresh.restricted(everything)
    out["load_s"] = time.perf_counter() - start
    return out


def qpu_stage(n: int, cache: Path, profile: bool = False) -> dict[str, Any]:
    """``classical.sample`` of a GHZ-n job at ``pauli``: first call, then steady state."""
    from emulator.classical import preprocess, sample
    from emulator.simulation import NoiseLevel, SimulationSettings

    settings = SimulationSettings(noise=NoiseLevel.PAULI, cache_dir=cache)
    params = _params([(_isa(_ghz(n)), None, SHOTS)], "pauli")
    start = time.perf_counter()
    prepared = preprocess("sampler", params, FEZ, settings=settings)
    pre_s = time.perf_counter() - start
    _clear_caches()
    # The garbage of the previous steps (a whole table built, a profile) is collected first:
    # otherwise a full collection of this process's large heap (0.3-0.4 s) can land inside the
    # first call and be timed as the table's load. The QPU worker freezes its heap after its
    # warm-up (emulator.worker.warm), so it does not pay such a collection there.
    gc.collect()
    start = time.perf_counter()
    sampled = sample(prepared)
    first = time.perf_counter() - start
    runs = []
    for _ in range(5):
        start = time.perf_counter()
        sampled = sample(prepared)
        runs.append(time.perf_counter() - start)
    bits = sampled.data[0].meas.to_bool_array()
    weights = bits.sum(axis=1)
    out: dict[str, Any] = {
        "qubits": n,
        "method": prepared.simulation.methods[0] if prepared.simulation else None,
        "predicted_s": prepared.simulation.predicted_s if prepared.simulation else None,
        "preprocess_s": pre_s,
        "sample_first_s": first,
        "sample_median_s": statistics.median(runs),
        "all_equal_fraction": float(np.mean((weights == 0) | (weights == n))),
        "distinct_outcomes": len({row.tobytes() for row in bits}),
    }
    if profile:
        prof = cProfile.Profile()
        prof.enable()
        sample(prepared)
        prof.disable()
        text = io.StringIO()
        pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(8)
        out["profile"] = text.getvalue()
    return out


def sweep(cache: Path, sets: int = 100, shots: int = 100) -> dict[str, Any]:
    """What an executor's twirled item looks like to the QPU: the 156-qubit GHZ with every
    ``rz`` a parameter, ``sets`` parameter sets of random multiples of π/2, ``shots`` each."""
    from qiskit.circuit import ParameterVector

    from emulator.classical import preprocess, sample
    from emulator.simulation import NoiseLevel, SimulationSettings

    isa = _isa(_ghz(156))
    out = isa.copy_empty_like()
    angles = ParameterVector("a", sum(1 for i in isa.data if i.operation.name == "rz"))
    k = 0
    for inst in isa.data:
        if inst.operation.name == "rz":
            out.rz(angles[k], inst.qubits[0])
            k += 1
        else:
            out.append(inst)
    values = np.random.default_rng(1).integers(0, 4, size=(sets, k)) * (np.pi / 2)
    settings = SimulationSettings(noise=NoiseLevel.PAULI, cache_dir=cache)
    start = time.perf_counter()
    prepared = preprocess(
        "sampler", _params([(out, values, shots)], "pauli"), FEZ, settings=settings
    )
    pre_s = time.perf_counter() - start
    sample(prepared)  # the table, from this process's cache after the first
    start = time.perf_counter()
    sample(prepared)
    return {
        "parameters": k,
        "sets": sets,
        "shots": shots,
        "method": prepared.simulation.methods[0] if prepared.simulation else None,
        "preprocess_s": pre_s,
        "sample_s": time.perf_counter() - start,
    }


def full_level(n: int) -> dict[str, Any]:
    """GHZ-n at ``full``: the prediction, 3 measured shots, the refusal."""
    from emulator.classical import preprocess, sample
    from emulator.simulation import NoiseLevel, SimulationSettings
    from emulator.validation import JobInputError

    circuit = _isa(_ghz(n))
    unlimited = SimulationSettings(noise=NoiseLevel.FULL, budget_s=math.inf)
    prepared = preprocess(
        "sampler", _params([(circuit, None, SHOTS)], "full"), FEZ, settings=unlimited
    )
    predicted = prepared.simulation.predicted_s if prepared.simulation else math.nan
    few = preprocess("sampler", _params([(circuit, None, 3)], "full"), FEZ, settings=unlimited)
    sample(few)  # builds the full model of these qubits
    start = time.perf_counter()
    sample(few)
    per_shot = (time.perf_counter() - start) / 3
    start = time.perf_counter()
    try:
        preprocess(
            "sampler", _params([(circuit, None, SHOTS)], "full"), FEZ, settings=SimulationSettings()
        )
        refused: str | None = None
    except JobInputError as exc:
        refused = exc.message
    return {
        "qubits": n,
        "predicted_s": predicted,
        "measured_per_shot_s": per_shot,
        "extrapolated_s": per_shot * SHOTS,
        "refused_in_s": time.perf_counter() - start,
        "refusal": refused,
    }


def accuracy(cache: Path) -> dict[str, Any]:
    """``pauli`` against ``full`` on circuits small enough for ``full``."""
    from qiskit.circuit.library import n_local
    from qiskit.quantum_info import SparsePauliOp

    from aioruntime.protocol import loads
    from emulator.classical import postprocess, preprocess, sample
    from emulator.simulation import SimulationSettings

    settings = SimulationSettings(cache_dir=cache, budget_s=math.inf)
    now = datetime.now(UTC)

    def result(program: str, params: str) -> Any:
        prepared = preprocess(program, params, FEZ, settings=settings)
        return loads(postprocess(prepared, sample(prepared), now, now))

    rows = []
    ghz5 = _isa(_ghz(5))
    for level in ("pauli", "full"):
        bits = result("sampler", _params([(ghz5, None, ACCURACY_SHOTS)], level))[0].data.meas
        b = bits.to_bool_array()
        p = float(np.mean(np.all(b == b[:, :1], axis=1)))
        rows.append(
            {
                "what": "GHZ-5 success",
                "level": level,
                "value": p,
                "std": math.sqrt(p * (1 - p) / ACCURACY_SHOTS),
            }
        )
    ansatz = n_local(4, "ry", "cz", entanglement="linear", reps=2)
    values = np.linspace(0.3, 2.1, ansatz.num_parameters)
    state = _isa(ansatz)
    labels = ("ZZII", "IIXX", "ZIIZ", "YYII")
    observables = [SparsePauliOp(label).apply_layout(state.layout) for label in labels]
    from qiskit.primitives.containers.estimator_pub import EstimatorPub

    pub = EstimatorPub.coerce((state, observables, values))
    for level in ("pauli", "full"):
        data = result("estimator", _params([pub], level, shots=ACCURACY_SHOTS))[0].data
        for label, ev, std in zip(labels, data.evs, data.stds, strict=True):
            rows.append(
                {"what": f"<{label}>", "level": level, "value": float(ev), "std": float(std)}
            )
    table = []
    for what in dict.fromkeys(r["what"] for r in rows):
        pauli, full = (
            next(r for r in rows if r["what"] == what and r["level"] == lv)
            for lv in ("pauli", "full")
        )
        delta = abs(float(pauli["value"]) - float(full["value"]))
        tolerance = 3 * math.hypot(float(pauli["std"]), float(full["std"])) + 0.03
        table.append(
            {
                "what": what,
                "pauli": pauli["value"],
                "full": full["value"],
                "delta": delta,
                "tolerance": tolerance,
                "agree": delta <= tolerance,
            }
        )
    return {"rows": table}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.noise_levels", description=__doc__)
    parser.add_argument(
        "--cold", action="store_true", help="also build ibm_fez's table from scratch (~10 s)"
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument(
        "--cache", type=Path, default=None, help="noise cache (default: a fresh temporary one)"
    )
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    from benchmarks.machine import describe

    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache or Path(tmp)
        report: dict[str, Any] = {"machine": describe()}
        report["table"] = table(cache, cold=args.cold or args.cache is None)
        report["ghz156"] = qpu_stage(156, cache, profile=True)
        report["ghz20"] = qpu_stage(20, cache)
        report["sweep"] = sweep(cache)
        report["full20"] = full_level(20)
        report["accuracy"] = accuracy(cache)
    _print(report)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    (args.out / f"noise-levels_{stamp}.json").write_text(json.dumps(report, indent=2, default=str))
    return 0


def _print(r: dict[str, Any]) -> None:
    t = r["table"]
    if "build_s" in t:
        print(f"ibm_fez twirled table: built in {t['build_s']:.1f} s ", end="")
        print(f"(GHZ-156's {', '.join(t['ghz156_instructions'])} only: ", end="")
        print(f"{t['build_ghz156_s']:.1f} s), ", end="")
        print(f"read back from disk in {t['load_s'] * 1e3:.0f} ms")
    else:
        print(f"ibm_fez twirled table: read back from disk in {t['load_s'] * 1e3:.0f} ms")
    print("\nQPU stage (classical.sample), pauli, 1000 shots")
    print(
        f"{'circuit':<10}{'method':<8}{'predicted':>11}{'first':>10}{'median':>10}{'all-equal':>11}{'distinct':>10}"
    )
    for key in ("ghz156", "ghz20"):
        g = r[key]
        print(
            f"GHZ-{g['qubits']:<6}{g['method']:<8}{g['predicted_s']:>10.3f}s{g['sample_first_s']:>9.3f}s"
            f"{g['sample_median_s']:>9.3f}s{g['all_equal_fraction']:>11.3f}{g['distinct_outcomes']:>10}"
        )
    w = r["sweep"]
    print(
        f"GHZ-156, {w['parameters']} rz parameters, {w['sets']} sets x {w['shots']} shots "
        f"({w['method']}): pre-processing {w['preprocess_s']:.2f} s, QPU {w['sample_s']:.2f} s"
    )
    f = r["full20"]
    print(
        f"\nGHZ-20 at full: predicted {f['predicted_s']:.0f} s; measured "
        f"{f['measured_per_shot_s']:.2f} s/shot (x1000 = {f['extrapolated_s']:.0f} s); "
        f"refused by pre-processing in {f['refused_in_s']:.2f} s"
    )
    print("\nAccuracy, pauli vs full (tolerance: 3 standard errors + 0.03)")
    print(f"{'':<15}{'pauli':>9}{'full':>9}{'|delta|':>9}{'tol':>8}  agree")
    for row in r["accuracy"]["rows"]:
        numbers = (row["pauli"], row["full"], row["delta"])
        print(f"{row['what']:<15}" + "".join(f"{v:>9.4f}" for v in numbers), end="")
        print(f"{row['tolerance']:>8.4f}  {row['agree']}")
    print("\nProfile of the 156-qubit QPU stage (steady state):")
    print("\n".join(r["ghz156"]["profile"].splitlines()[:22]))


if __name__ == "__main__":
    raise SystemExit(main())
