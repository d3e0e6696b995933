"""Unit tests of the emulator's small parts: config, clock, auth, the QPU's hand-over."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import click
import jwt
import pytest

from aioruntime import protocol as p
from emulator.auth import AuthError, authenticate, issue_token
from emulator.clock import ManualClock, ScaledClock, make_clock
from emulator.config import ApiKey, ClockSpec, Config, from_args
from emulator.noise import NoiseLevel
from emulator.qpu import QPU

OTHER = "crn:v1:bluemix:public:quantum-computing:us-east:a/other::"


def test_flags_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    config = from_args(
        [
            "--port",
            "0",
            "--lanes",
            "3",
            "--clock",
            "scaled:0.01",
            "--noise",
            "--api-key",
            "k1",
            "--api-key",
            f"k2@{OTHER}",
            "--instance",
            p.DEFAULT_INSTANCE,
            "--instance",
            OTHER,
            "--backends",
            "ibm_fez",
        ]
    )
    assert (config.port, config.lanes, config.backends) == (0, 3, "ibm_fez")
    assert config.noise is NoiseLevel.FULL  # --noise alone: the device's full noise model
    assert config.clock == ClockSpec(mode="scaled", scale=0.01)
    assert config.instances_for_key("k1") == (p.DEFAULT_INSTANCE, OTHER)
    assert config.instances_for_key("k2") == (OTHER,)
    assert config.instances_for_key("nope") is None
    assert from_args(["--ephemeral"]).data_dir == Path(":memory:")
    monkeypatch.setenv("AIORUNTIME_EMULATOR_PORT", "9999")
    monkeypatch.setenv("AIORUNTIME_EMULATOR_CLOCK", "realtime")
    monkeypatch.setenv("AIORUNTIME_EMULATOR_NOISE", "true")
    monkeypatch.setenv("AIORUNTIME_EMULATOR_API_KEY", f"a,b@{OTHER}")
    monkeypatch.setenv("AIORUNTIME_EMULATOR_INSTANCE", f"{p.DEFAULT_INSTANCE},{OTHER}")
    env = from_args([])
    assert env.port == 9999 and str(env.clock) == "realtime" and env.noise is NoiseLevel.FULL
    assert env.instances_for_key("b") == (OTHER,)
    assert from_args(["--port", "1"]).port == 1  # a flag wins over the environment


def test_noise_and_simulation_flags(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert from_args([]).noise is NoiseLevel.NONE
    assert from_args(["--noise", "pauli", "--port", "0"]).noise is NoiseLevel.PAULI
    assert from_args(["--noise", "--port", "0"]).noise is NoiseLevel.FULL
    assert from_args(["--no-noise"]).noise is NoiseLevel.NONE
    assert from_args(["--noise", "none"]).noise is NoiseLevel.NONE
    config = from_args(["--sim-budget", "2.5", "--sim-memory", "512", "--noise-cache", "none"])
    assert (config.sim_budget_s, config.sim_memory_mb, config.noise_cache_dir) == (2.5, 512, None)
    assert config.simulation.budget_s == 2.5 and config.simulation.max_memory_mb == 512
    assert from_args(["--noise-cache", str(tmp_path)]).noise_cache_dir == tmp_path
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert from_args([]).noise_cache_dir == tmp_path / "aioruntime-emulator"
    monkeypatch.setenv("AIORUNTIME_EMULATOR_NOISE", "pauli")
    monkeypatch.setenv("AIORUNTIME_EMULATOR_SIM_BUDGET", "7")
    env = from_args([])
    assert env.noise is NoiseLevel.PAULI and env.simulation.noise is NoiseLevel.PAULI
    assert env.sim_budget_s == 7.0
    assert from_args(["--no-noise"]).noise is NoiseLevel.NONE  # the flag wins
    assert Config(noise=True).noise is NoiseLevel.FULL  # type: ignore[arg-type]  # old boolean
    assert Config().noise_cache_dir is None  # in code: nothing written unless asked


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--noise", "loud"], "--noise"),
        (["--sim-budget", "0"], "--sim-budget"),
        (["--clock", "fast"], "--clock"),
        (["--lanes", "0"], "--lanes"),
        (["--port", "x"], "--port"),
        (["--api-key", "k@crn:nowhere"], "not an --instance"),
    ],
)
def test_bad_flags_name_the_flag(argv: list[str], named: str) -> None:
    with pytest.raises(click.UsageError) as refused:
        from_args(argv)
    assert named in refused.value.format_message()


@pytest.mark.parametrize("text", ["scaled:0", "scaled:x", "fast", "scaled:-1"])
def test_bad_clock_flags_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="clock"):
        ClockSpec.parse(text)


def test_config_refuses_unknown_bound_instance_and_zero_lanes() -> None:
    with pytest.raises(ValueError, match="not an --instance"):
        Config(api_keys=(ApiKey.parse(f"k@{OTHER}"),))
    with pytest.raises(ValueError, match="lanes"):
        Config(lanes=0)


async def test_manual_clock_wakes_sleepers_in_order() -> None:
    clock = ManualClock()
    woke: list[str] = []

    async def sleeper(name: str, t: float) -> None:
        await clock.sleep_until(t)
        woke.append(name)

    tasks = [asyncio.create_task(sleeper(n, t)) for n, t in (("b", 20), ("a", 10), ("c", 30))]
    await asyncio.sleep(0)
    clock.advance(15)
    await asyncio.sleep(0)
    assert woke == ["a"]
    clock.advance(20)
    await asyncio.gather(*tasks)
    assert woke == ["a", "b", "c"]
    with pytest.raises(ValueError):
        clock.advance(-1)


async def test_clock_wait_for_event_or_deadline() -> None:
    clock = ManualClock()
    event = asyncio.Event()
    waiter = asyncio.create_task(clock.wait_for(event, 5.0))
    await asyncio.sleep(0)
    clock.advance(5)
    assert await waiter is False
    waiter = asyncio.create_task(clock.wait_for(event, 100.0))
    await asyncio.sleep(0)
    event.set()
    assert await waiter is True


def test_scaled_and_instant_holds() -> None:
    assert ScaledClock(0.01).hold_s(2.0, 0.005) == pytest.approx(0.015)
    assert ScaledClock(0.01).hold_s(2.0, 1.0) == 0.0  # Aer slower than the model: no extra hold
    assert make_clock(ClockSpec.parse("instant")).hold_s(100.0, 0.0) == 0.0
    assert make_clock(ClockSpec.parse("manual")).name == "manual"


class _NoSessions:
    def activate(self, session_id: str) -> bool:
        return False

    def holds(self, session_id: str) -> bool:
        return False


async def test_the_qpu_hands_over_at_the_end_of_the_span() -> None:
    """A turn granted as another is given back starts where that one's span ended; with no
    such end (a job that failed on the QPU), or with no one waiting then, a grant is stamped
    when it happens."""
    qpu = QPU("b", _NoSessions())
    first = qpu.request(1, "j1", None)
    second = qpu.request(2, "j2", None)
    assert qpu.dispatch() is first and first.start is not None
    first.end = (first.start[0], first.start[1] + 5.0)
    qpu.release(first)
    assert qpu.dispatch() is second and second.start == first.end
    await asyncio.sleep(0)  # the granted futures are set
    assert first.granted.done() and second.granted.done()

    third = qpu.request(3, "j3", None)
    qpu.release(second)  # ended without a span end (failed on the QPU)
    assert qpu.dispatch() is third and third.start != first.end
    assert third.start is not None and third.start[1] <= time.monotonic()

    third.end = (third.start[0], third.start[1] + 1.0)
    qpu.release(third)
    assert qpu.dispatch() is None  # nobody waits: the hand-over is dropped
    fourth = qpu.request(4, "j4", None)
    assert qpu.dispatch() is fourth and fourth.start != third.end


def test_tokens_expire_and_are_bound() -> None:
    config = Config(
        api_keys=(ApiKey("k"), ApiKey("bound", (OTHER,))),
        instances=(p.DEFAULT_INSTANCE, OTHER),
        token_ttl_s=60,
    )
    token, iat, exp = issue_token(config, "bound")
    assert exp - iat == 60
    assert authenticate(config, f"Bearer {token}").instances == (OTHER,)
    assert authenticate(config, "apikey k").instances == (p.DEFAULT_INSTANCE, OTHER)
    expired = jwt.encode(
        {
            "iss": "aioruntime-emulator",
            "sub": "x",
            "iat": int(time.time()) - 100,
            "exp": int(time.time()) - 50,
            "instances": [OTHER],
        },
        config.token_secret,
        algorithm="HS256",
    )
    forged = jwt.encode(
        {
            "iss": "aioruntime-emulator",
            "sub": "x",
            "iat": int(time.time()),
            "exp": int(time.time()) + 50,
            "instances": [OTHER],
        },
        "not-the-secret-" * 4,
        algorithm="HS256",
    )
    for bad in (None, f"Bearer {expired}", f"Bearer {forged}", "apikey nope", "Token x"):
        with pytest.raises(AuthError):
            authenticate(config, bad)
    with pytest.raises(AuthError):
        issue_token(config, "unknown")


def test_cli_generates_a_development_key_kept_in_the_data_dir(tmp_path: Path) -> None:
    first = from_args(["--data-dir", str(tmp_path)])
    again = from_args(["--data-dir", str(tmp_path)])
    key = first.api_keys[0].key
    assert key.startswith("dev-") and key != "emulator-dev-key"
    assert again.api_keys[0].key == key  # a restart keeps it, so clients keep working
    assert from_args([]).api_keys[0].key != from_args([]).api_keys[0].key
    assert from_args(["--api-key", "mine"]).api_keys[0].key == "mine"
