"""Retry and circuit breaker behaviour, with an injected clock and sleep (no real waiting)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import pytest

from utils.error_handling import CircuitBreaker, CircuitBreakerOpen, retry_with_backoff


class FakeTime:
    """A clock that only moves when the code under test sleeps; records every sleep."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


def failing(
    times: int, error: BaseException, result: str = "success"
) -> tuple[Callable[[], Awaitable[str]], list[int]]:
    """An async function that raises `error` on its first `times` calls, and records every call."""
    calls: list[int] = []

    async def func() -> str:
        calls.append(1)
        if len(calls) <= times:
            raise error
        return result

    return func, calls


async def test_retry_succeeds_on_second_attempt(fake_time: FakeTime) -> None:
    func, calls = failing(1, ValueError("temporary"))
    wrapped = retry_with_backoff(max_retries=3, base_delay=0.1, sleep=fake_time.sleep, jitter=False)(func)

    assert await wrapped() == "success"
    assert len(calls) == 2
    assert fake_time.sleeps == [0.1]


async def test_retry_gives_up_after_max_attempts_and_reraises_the_last_error(
    fake_time: FakeTime, caplog: pytest.LogCaptureFixture
) -> None:
    errors = [ValueError("first"), ValueError("second"), ValueError("last")]
    calls: list[int] = []

    @retry_with_backoff(max_retries=3, base_delay=1.0, sleep=fake_time.sleep, jitter=False)
    async def func() -> None:
        calls.append(1)
        raise errors[len(calls) - 1]

    with caplog.at_level(logging.WARNING, logger="utils.error_handling"):
        with pytest.raises(ValueError) as exc_info:
            await func()

    assert exc_info.value is errors[-1]
    assert len(calls) == 3
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.args[1] for r in warnings] == [1, 2]  # attempt numbers
    assert [r.levelno for r in caplog.records].count(logging.ERROR) == 1


async def test_backoff_delays_double_and_are_capped_at_max_delay(fake_time: FakeTime) -> None:
    func, _ = failing(10, ConnectionError("down"))
    wrapped = retry_with_backoff(
        max_retries=6, base_delay=1.0, max_delay=5.0, jitter=False, sleep=fake_time.sleep
    )(func)

    with pytest.raises(ConnectionError):
        await wrapped()

    assert fake_time.sleeps == [1.0, 2.0, 4.0, 5.0, 5.0]


async def test_full_jitter_keeps_each_delay_between_zero_and_the_backoff(fake_time: FakeTime) -> None:
    func, _ = failing(1000, ConnectionError("down"))
    wrapped = retry_with_backoff(max_retries=200, base_delay=1.0, max_delay=4.0, sleep=fake_time.sleep)(func)

    with pytest.raises(ConnectionError):
        await wrapped()

    ceilings = [min(2.0**n, 4.0) for n in range(199)]
    assert all(0.0 <= delay <= ceiling for delay, ceiling in zip(fake_time.sleeps, ceilings, strict=True))
    assert len(set(fake_time.sleeps)) > 1, "jitter should vary the delays"


async def test_max_total_s_stops_retrying_before_a_sleep_would_overrun_it(fake_time: FakeTime) -> None:
    func, calls = failing(10, TimeoutError("slow"))
    wrapped = retry_with_backoff(
        max_retries=10, base_delay=1.0, jitter=False, max_total_s=5.0,
        sleep=fake_time.sleep, clock=fake_time.clock,
    )(func)

    with pytest.raises(TimeoutError):
        await wrapped()

    # 1 + 2 = 3 s spent; the next 4 s sleep would end at 7 s > 5 s.
    assert fake_time.sleeps == [1.0, 2.0]
    assert len(calls) == 3


async def test_exceptions_not_listed_are_raised_without_retry(fake_time: FakeTime) -> None:
    func, calls = failing(1, KeyError("bug"))
    wrapped = retry_with_backoff(exceptions=(ConnectionError,), sleep=fake_time.sleep)(func)

    with pytest.raises(KeyError):
        await wrapped()

    assert len(calls) == 1
    assert fake_time.sleeps == []


async def test_should_retry_false_raises_at_once(fake_time: FakeTime) -> None:
    func, calls = failing(1, ValueError("400 bad request"))
    wrapped = retry_with_backoff(
        should_retry=lambda error: "400" not in str(error), sleep=fake_time.sleep
    )(func)

    with pytest.raises(ValueError):
        await wrapped()

    assert len(calls) == 1


async def test_cancelled_error_is_never_retried_even_when_base_exception_is_listed(fake_time: FakeTime) -> None:
    func, calls = failing(1, asyncio.CancelledError())
    wrapped = retry_with_backoff(exceptions=(BaseException,), sleep=fake_time.sleep)(func)

    with pytest.raises(asyncio.CancelledError):
        await wrapped()

    assert len(calls) == 1


def test_retry_rejects_zero_attempts() -> None:
    with pytest.raises(ValueError, match="max_retries"):
        retry_with_backoff(max_retries=0)


def make_breaker(fake_time: FakeTime) -> CircuitBreaker:
    return CircuitBreaker(failure_threshold=3, reset_timeout_s=10.0, clock=fake_time.clock, name="lmstudio")


def test_breaker_opens_after_threshold_consecutive_failures_and_fails_fast(fake_time: FakeTime) -> None:
    breaker = make_breaker(fake_time)
    for _ in range(2):
        breaker.before_call()
        breaker.record_failure()
    assert breaker.state == "closed"

    breaker.before_call()
    breaker.record_failure()
    assert breaker.state == "open"

    fake_time.now += 4.0
    with pytest.raises(CircuitBreakerOpen) as exc_info:
        breaker.before_call()
    assert exc_info.value.retry_after_s == pytest.approx(6.0)


def test_breaker_success_resets_the_consecutive_failure_count(fake_time: FakeTime) -> None:
    breaker = make_breaker(fake_time)
    for outcome in ["fail", "fail", "ok", "fail", "fail"]:
        breaker.before_call()
        if outcome == "fail":
            breaker.record_failure()
        else:
            breaker.record_success()

    assert breaker.state == "closed"


def test_half_open_breaker_lets_exactly_one_probe_through(fake_time: FakeTime) -> None:
    breaker = make_breaker(fake_time)
    for _ in range(3):
        breaker.record_failure()
    fake_time.now += 10.0
    assert breaker.state == "half_open"

    breaker.before_call()  # the probe
    with pytest.raises(CircuitBreakerOpen):
        breaker.before_call()


def test_successful_probe_closes_the_breaker(fake_time: FakeTime) -> None:
    breaker = make_breaker(fake_time)
    for _ in range(3):
        breaker.record_failure()
    fake_time.now += 10.0

    breaker.before_call()
    breaker.record_success()

    assert breaker.state == "closed"
    breaker.before_call()
    breaker.before_call()


def test_failed_probe_reopens_the_breaker_and_restarts_the_timer(fake_time: FakeTime) -> None:
    breaker = make_breaker(fake_time)
    for _ in range(3):
        breaker.record_failure()
    fake_time.now += 10.0

    breaker.before_call()
    fake_time.now += 2.0
    breaker.record_failure()

    assert breaker.state == "open"
    fake_time.now += 9.0
    with pytest.raises(CircuitBreakerOpen) as exc_info:
        breaker.before_call()
    assert exc_info.value.retry_after_s == pytest.approx(1.0)
    fake_time.now += 1.0
    breaker.before_call()


def test_probe_that_never_reports_does_not_jam_the_breaker(fake_time: FakeTime) -> None:
    breaker = make_breaker(fake_time)
    for _ in range(3):
        breaker.record_failure()
    fake_time.now += 10.0
    breaker.before_call()  # its caller is cancelled and records nothing

    fake_time.now += 10.0
    breaker.before_call()

    assert breaker.state == "half_open"


def test_breaker_logs_its_transitions(fake_time: FakeTime, caplog: pytest.LogCaptureFixture) -> None:
    breaker = make_breaker(fake_time)
    with caplog.at_level(logging.INFO, logger="utils.error_handling"):
        for _ in range(3):
            breaker.record_failure()
        fake_time.now += 10.0
        breaker.before_call()
        breaker.record_success()

    assert [(r.levelno, r.getMessage().split(":")[0]) for r in caplog.records] == [
        (logging.WARNING, "Circuit 'lmstudio' open (3 failures in a row)"),
        (logging.INFO, "Circuit 'lmstudio' half-open"),
        (logging.INFO, "Circuit 'lmstudio' closed"),
    ]


async def test_a_retry_after_hint_is_waited_for() -> None:
    waits: list[float] = []

    async def record(delay: float) -> None:
        waits.append(delay)

    class Busy(Exception):
        retry_after_s = 2.0

    attempts = []

    @retry_with_backoff(max_retries=2, base_delay=0.1, max_delay=5.0, exceptions=(Busy,), jitter=False, sleep=record)
    async def busy_once() -> str:
        attempts.append(1)
        if len(attempts) == 1:
            raise Busy()
        return "ok"

    assert await busy_once() == "ok"
    assert waits == [2.0]


async def test_a_retry_after_longer_than_max_delay_is_not_waited_for() -> None:
    class Busy(Exception):
        retry_after_s = 60.0

    attempts = []

    async def never(delay: float) -> None:
        raise AssertionError("should not sleep")

    @retry_with_backoff(max_retries=3, base_delay=0.1, max_delay=5.0, exceptions=(Busy,), sleep=never)
    async def busy() -> None:
        attempts.append(1)
        raise Busy()

    with pytest.raises(Busy):
        await busy()
    assert len(attempts) == 1
