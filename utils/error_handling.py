"""Retry and circuit breaking: the bridge's policy for failures that may pass.

What is retried, and why:
    Only errors a second attempt can fix (for LM Studio: connect errors, timeouts, 429, 5xx;
    `llm.exceptions.RETRYABLE_ERRORS`). Callers name them in `exceptions` and can narrow further
    with `should_retry`; anything else is re-raised at once, because retrying a 4xx or a bug only
    delays the error. `asyncio.CancelledError` (and KeyboardInterrupt, SystemExit) is never
    retried, even under `exceptions=(BaseException,)`: a cancelled call must stop now.

    Retries are bounded twice: by attempts (`max_retries` counts attempts, not retries) and,
    optionally, by total time including the sleeps (`max_total_s`). Delays grow as
    `base_delay * 2**n`, capped at `max_delay`; with `jitter` each delay is drawn uniformly from
    [0, that value] ("full jitter") so clients that failed together do not retry together.
    The last error is re-raised unchanged, so callers catch the same types with or without retry.

    `CircuitBreaker` is the complement: once a server has failed `failure_threshold` times in a
    row, calls fail fast with `CircuitBreakerOpen` instead of each waiting out its own retries,
    and after `reset_timeout_s` a single probe call finds out whether the server is back.

The clock and the sleep functions are injectable so tests never sleep.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Literal, ParamSpec, TypeVar

logger = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

_NEVER_RETRIED: tuple[type[BaseException], ...] = (asyncio.CancelledError, KeyboardInterrupt, SystemExit)


def retry_with_backoff(
    max_retries: int = 3,
    base_delay: float = 1.0,
    max_delay: float = 60.0,
    exceptions: tuple[type[BaseException], ...] = (Exception,),
    *,
    jitter: bool = True,
    max_total_s: float | None = None,
    should_retry: Callable[[BaseException], bool] | None = None,
    on_retry: Callable[[BaseException, int, float], None] | None = None,
    sleep: Callable[[float], Awaitable[None]] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Callable[[Callable[P, Awaitable[T]]], Callable[P, Awaitable[T]]]:
    """Decorate an async function to retry it with exponential backoff.

    Args:
        max_retries: attempts in all (1 means no retry).
        base_delay: the first delay in seconds; it doubles with each retry.
        max_delay: the cap on one delay.
        exceptions: what may be retried; anything else propagates at once.
        jitter: draw each delay uniformly from [0, delay] (full jitter).
        on_retry: told (error, attempt, delay) before each retry, e.g. to count retries.

    An error with a `retry_after_s` attribute (a 429's Retry-After) waits at least that long,
    or is not retried when that is longer than `max_delay`.
        max_total_s: give up rather than start a sleep that would end past this many seconds
            since the first attempt.
        should_retry: a further filter on retryable errors (e.g. "not a 4xx").
        sleep: replaces `asyncio.sleep` (tests).
        clock: the monotonic clock that `max_total_s` is measured with.

    Raises:
        ValueError: a bound is out of range (at decoration time).
    """
    if max_retries < 1:
        raise ValueError(f"max_retries counts attempts and must be >= 1, got {max_retries}")
    if base_delay < 0 or max_delay < 0:
        raise ValueError(f"delays must be >= 0, got base_delay={base_delay}, max_delay={max_delay}")

    def decorator(func: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
        name = getattr(func, "__qualname__", repr(func))

        def next_delay(error: BaseException, attempt: int, started: float) -> float | None:
            """Seconds to wait before attempt `attempt + 1`, or None to re-raise `error` now."""
            if isinstance(error, _NEVER_RETRIED) or (should_retry is not None and not should_retry(error)):
                return None
            if attempt >= max_retries:
                logger.error("%s failed after %d attempts, giving up: %r", name, attempt, error)
                return None
            delay = min(base_delay * 2 ** (attempt - 1), max_delay)
            if jitter:
                delay = random.uniform(0.0, delay)
            hinted = getattr(error, "retry_after_s", None)
            if isinstance(hinted, int | float) and hinted > 0:
                # The server said when to come back (Retry-After): sooner is pointless, later than
                # max_delay is more than this caller agreed to wait.
                if hinted > max_delay:
                    logger.error("%s: the server asks to wait %.1f s, more than max_delay: giving up: %r", name, hinted, error)
                    return None
                delay = max(delay, float(hinted))
            elapsed = clock() - started
            if max_total_s is not None and elapsed + delay > max_total_s:
                logger.error(
                    "%s failed after %d attempts (%.2f s of a %.2f s budget spent), giving up: %r",
                    name, attempt, elapsed, max_total_s, error,
                )
                return None
            logger.warning(
                "%s failed (attempt %d of %d), retrying in %.2f s: %r", name, attempt, max_retries, delay, error
            )
            if on_retry is not None:
                on_retry(error, attempt, delay)
            return delay

        @functools.wraps(func)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
            started = clock()
            attempt = 0
            while True:
                attempt += 1
                try:
                    return await func(*args, **kwargs)
                except exceptions as error:
                    delay = next_delay(error, attempt, started)
                    if delay is None:
                        raise
                await (sleep if sleep is not None else asyncio.sleep)(delay)

        return wrapper


    return decorator


class CircuitBreakerOpen(Exception):
    """The breaker is open: the call was not made. Try again in `retry_after_s` seconds."""

    def __init__(self, name: str, retry_after_s: float) -> None:
        self.name = name
        self.retry_after_s = retry_after_s
        label = f"Circuit '{name}'" if name else "Circuit"
        super().__init__(f"{label} is open after repeated failures; retry in {retry_after_s:.1f} s")


BreakerState = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    """Fail fast after `failure_threshold` consecutive failures; probe once after `reset_timeout_s`.

    closed -> open (threshold reached) -> half_open (timeout passed; exactly one probe call is let
    through, others fail fast while it is out) -> closed (probe succeeded) or open again with the
    timer restarted (probe failed). Callers bracket each call with `before_call()` and then
    `record_success()` or `record_failure()`. Meant for one event loop; it holds no lock.
    """

    def __init__(
        self,
        failure_threshold: int = 5,
        reset_timeout_s: float = 30.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        name: str = "",
    ) -> None:
        if failure_threshold < 1:
            raise ValueError(f"failure_threshold must be >= 1, got {failure_threshold}")
        self.failure_threshold = failure_threshold
        self.reset_timeout_s = reset_timeout_s
        self.name = name
        self._clock = clock
        self._state: BreakerState = "closed"
        self._failures = 0
        self._opened_at = 0.0
        self._probe_started_at: float | None = None

    @property
    def state(self) -> BreakerState:
        """'half_open' once the open timeout has passed, even before the probe is made."""
        if self._state == "open" and self._clock() - self._opened_at >= self.reset_timeout_s:
            return "half_open"
        return self._state

    def before_call(self) -> None:
        """Let a call through, or refuse it.

        Raises:
            CircuitBreakerOpen: the breaker is open, or half-open with its probe still out.
        """
        now = self._clock()
        if self._state == "closed":
            return
        if self._state == "open":
            remaining = self.reset_timeout_s - (now - self._opened_at)
            if remaining > 0:
                raise CircuitBreakerOpen(self.name, remaining)
            self._state = "half_open"
            logger.info("Circuit %r half-open: letting one probe call through", self.name)
        elif self._probe_started_at is not None and now - self._probe_started_at < self.reset_timeout_s:
            raise CircuitBreakerOpen(self.name, self.reset_timeout_s - (now - self._probe_started_at))
        # A probe that never reported back (its caller was cancelled) must not jam the breaker
        # half-open forever: after reset_timeout_s another probe is allowed.
        self._probe_started_at = now

    def record_success(self) -> None:
        """The call worked: close the breaker and forget past failures."""
        if self._state != "closed":
            logger.info("Circuit %r closed: the probe call succeeded", self.name)
        self._state = "closed"
        self._failures = 0
        self._probe_started_at = None

    def record_failure(self) -> None:
        """The call failed: count it, and open the breaker at the threshold or on a failed probe."""
        self._failures += 1
        if self._state == "half_open" or (self._state == "closed" and self._failures >= self.failure_threshold):
            why = "the probe call failed" if self._state == "half_open" else f"{self._failures} failures in a row"
            self._state = "open"
            self._opened_at = self._clock()
            self._probe_started_at = None
            logger.warning("Circuit %r open (%s): failing fast for %.1f s", self.name, why, self.reset_timeout_s)
