"""Routing: which deployment serves a request, and what happens when one fails.

* Plan: the model's deployments by priority tier, weighted-random order within a tier, then the
  deployments of its fallback models.
* Circuit breaker per deployment: opens after `threshold` consecutive failures, stays open
  `open_seconds`, then lets exactly one probe through (half-open); the probe's outcome closes
  or re-opens it. State is per process (each replica learns on its own). Only the deployment's
  own failures count: a client error (CLIENT_ERRORS) is the request's fault, and since the
  breaker is shared by every organization, counting it would let one organization's bad
  requests fail everyone else's.
* Retries: the next deployment is tried only while nothing has been sent to the caller. Once
  the first piece went out, a failure ends the stream in-band (never duplicated text).
* Timeouts: a deployment that produces no piece within `first_token_seconds` (or pauses that
  long mid-stream) counts as failed.
* Announcement (`Started`, from which the caller sends the answer's metadata): once the
  deployment that serves is certain. That is at its first piece, or earlier for the last
  deployment of the plan: nothing could follow it, so it is certain once the provider reports
  its request sent (ProviderRequest.on_sent), and the metadata travels while the model works.
  If that deployment then fails before output, the generation fails (no fallback is left).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from functools import partial

import grpc

from services.orchestrator.catalog import Deployment, ModelEntry
from services.orchestrator.providers import (
    Finish,
    Provider,
    ProviderError,
    ProviderRequest,
    StreamItem,
)

log = logging.getLogger("aimesh.orchestrator.routing")

# Any healthy deployment would refuse the same request: no verdict on the deployment.
CLIENT_ERRORS = frozenset({
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.OUT_OF_RANGE,
})


class CircuitBreaker:
    CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"

    def __init__(
        self, threshold: int, open_seconds: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.threshold = threshold
        self.open_seconds = open_seconds
        self.clock = clock
        self.state = self.CLOSED
        self.failures = 0
        self.opened_at = 0.0
        self._probing = False

    def allow(self) -> bool:
        """May a request go to this deployment now? In half-open, only one probe at a time."""
        if self.state == self.OPEN and self.clock() - self.opened_at >= self.open_seconds:
            self.state = self.HALF_OPEN
            self._probing = False
        if self.state == self.CLOSED:
            return True
        if self.state == self.HALF_OPEN and not self._probing:
            self._probing = True
            return True
        return False

    def success(self) -> None:
        self.state, self.failures, self._probing = self.CLOSED, 0, False

    def failure(self) -> None:
        self.failures += 1
        if self.state == self.HALF_OPEN or self.failures >= self.threshold:
            self.state, self.opened_at, self._probing = self.OPEN, self.clock(), False

    def release(self) -> None:
        """An attempt ended without a verdict (caller cancelled): free the probe slot."""
        self._probing = False

    def judge(self, exc: BaseException) -> None:
        """Record a failed attempt: the deployment's failure, or no verdict for a client error."""
        if isinstance(exc, ProviderError) and exc.code in CLIENT_ERRORS:
            self.release()
        else:
            self.failure()


@dataclass
class Attempt:
    provider: str
    deployment: str
    code: grpc.StatusCode
    message: str
    seconds: float


@dataclass
class Served:
    """What the router hands the generation pipeline once a deployment produced output."""

    model: ModelEntry
    deployment: Deployment
    attempts: list[Attempt] = field(default_factory=list)


@dataclass(frozen=True)
class Started:
    """Yielded once per generation, before its first piece: the deployment that serves is
    certain (see the module docstring)."""

    model: ModelEntry
    deployment: Deployment


class AllProvidersFailed(Exception):
    def __init__(self, attempts: list[Attempt]) -> None:
        self.attempts = attempts
        tried = ", ".join(
            f"{a.provider}/{a.deployment} ({a.code.name}: {a.message})" for a in attempts
        )
        super().__init__(
            f"every provider failed: {tried}" if attempts else "no provider deployment"
        )


def plan(chain: list[ModelEntry], rng: random.Random) -> list[tuple[ModelEntry, Deployment]]:
    """Deployments to try, in order (see module docstring)."""
    out: list[tuple[ModelEntry, Deployment]] = []
    for model in chain:
        for tier in sorted({d.priority for d in model.deployments}):
            pool = [d for d in model.deployments if d.priority == tier]
            while pool:
                pick = rng.choices(pool, weights=[d.weight for d in pool])[0]
                pool.remove(pick)
                out.append((model, pick))
    return out


class Router:
    def __init__(
        self,
        providers: Mapping[str, Provider],
        threshold: int,
        open_seconds: float,
        first_token_seconds: float,
        rng: random.Random | None = None,
    ) -> None:
        self.providers = providers
        self.threshold = threshold
        self.open_seconds = open_seconds
        self.first_token_seconds = first_token_seconds
        self.rng = rng or random.Random()
        self.breakers: dict[str, CircuitBreaker] = {}

    def breaker(self, deployment: Deployment) -> CircuitBreaker:
        b = self.breakers.get(deployment.key)
        if b is None:
            b = self.breakers[deployment.key] = CircuitBreaker(self.threshold, self.open_seconds)
        return b

    async def generate(
        self,
        chain: list[ModelEntry],
        make_request: Callable[[ModelEntry], ProviderRequest],
        served: list[Served],
        announce_early: bool = True,
    ) -> AsyncIterator[StreamItem | Started]:
        """Stream from the first deployment that produces output, after one Started. `served`
        receives the Served record before the first piece is yielded (metering goes by it).
        With `announce_early`, the last deployment of the plan is announced once its request
        is sent (module docstring), else every deployment at its first piece.

        Raises AllProvidersFailed if none produced output; ProviderError after output started.
        """
        attempts: list[Attempt] = []
        candidates = plan(chain, self.rng)
        loop = asyncio.get_running_loop()
        for index, (model, deployment) in enumerate(candidates):
            breaker = self.breaker(deployment)
            if not breaker.allow():
                attempts.append(Attempt(deployment.provider, deployment.deployment,
                                        grpc.StatusCode.UNAVAILABLE, "circuit open", 0.0))
                continue
            started = time.monotonic()
            deadline = loop.time() + self.first_token_seconds
            request = make_request(model)
            sent: asyncio.Future[None] | None = None
            if announce_early and index == len(candidates) - 1:
                sent = loop.create_future()
                request.on_sent = partial(_resolve, sent)
            stream = self.providers[deployment.provider].stream(deployment, request)
            pieces = stream.__aiter__()
            announcement = Started(model, deployment)
            announce: Started | None = announcement  # still to yield, before the first piece
            if sent is None:
                next_piece: Awaitable[StreamItem] = pieces.__anext__()
            else:
                # The first piece is awaited by a task of its own, so that the announcement can
                # go out between the request being sent and that piece.
                fetch = asyncio.ensure_future(_next_piece(pieces))
                next_piece = fetch
                try:
                    if await _sent_first(fetch, sent, deadline):
                        yield announcement
                        announce = None
                except BaseException:
                    breaker.release()
                    await _abandon(fetch)
                    await _close(pieces)
                    raise
            first = await self._first_piece(
                deployment, breaker, next_piece, pieces, attempts, started, deadline
            )
            if first is None:
                continue  # that deployment failed before any output: try the next one
            # Output has started (or the provider finished with nothing): no more fallback.
            attempts.append(Attempt(deployment.provider, deployment.deployment,
                                    grpc.StatusCode.OK, "", time.monotonic() - started))
            served.append(Served(model, deployment, attempts))
            rest = self._rest(deployment, breaker, first, pieces, attempts, started, announce)
            async for item in rest:
                yield item
            return
        raise AllProvidersFailed(attempts)

    async def _first_piece(
        self,
        deployment: Deployment,
        breaker: CircuitBreaker,
        next_piece: Awaitable[StreamItem],
        pieces: AsyncIterator[StreamItem],
        attempts: list[Attempt],
        started: float,
        deadline: float,
    ) -> StreamItem | None:
        """The deployment's first piece (`next_piece`) before `deadline` (loop time); None
        (closed, judged and recorded in `attempts`) when it failed first."""
        try:
            async with asyncio.timeout_at(deadline):
                return await next_piece
        except asyncio.CancelledError:
            breaker.release()
            await _close(pieces)
            raise
        except (TimeoutError, ProviderError, StopAsyncIteration) as exc:
            await _close(pieces)
            breaker.judge(exc)
            attempts.append(
                _attempt(deployment, exc, time.monotonic() - started, self.first_token_seconds)
            )
            return None

    async def _rest(
        self,
        deployment: Deployment,
        breaker: CircuitBreaker,
        first: StreamItem,
        pieces: AsyncIterator[StreamItem],
        attempts: list[Attempt],
        started: float,
        announce: Started | None,
    ) -> AsyncIterator[StreamItem | Started]:
        """`announce` (unless already sent), `first`, then the deployment's pieces until it
        finishes; a pause longer than first_token_seconds or an end without Finish fails it
        (in-band: output has started)."""
        loop = asyncio.get_running_loop()
        try:
            if announce is not None:
                yield announce
            item = first
            # One timeout for the whole stream, pushed back as each piece arrives (cheaper per
            # token than a wait_for, which wraps every read in a task).
            async with asyncio.timeout(None) as pause:
                while True:
                    yield item
                    if isinstance(item, Finish):
                        breaker.success()
                        return
                    pause.reschedule(loop.time() + self.first_token_seconds)
                    try:
                        item = await pieces.__anext__()
                    except StopAsyncIteration:
                        raise ProviderError(
                            f"{deployment.provider}: stream ended without finishing"
                        ) from None
                    pause.reschedule(None)
        except TimeoutError:
            exc = ProviderError(
                f"{deployment.provider}: no output for {self.first_token_seconds:g}s",
                grpc.StatusCode.DEADLINE_EXCEEDED,
            )
            breaker.judge(exc)
            attempts[-1] = _attempt(
                deployment, exc, time.monotonic() - started, self.first_token_seconds
            )
            raise exc from None
        except ProviderError as exc:
            breaker.judge(exc)
            attempts[-1] = _attempt(
                deployment, exc, time.monotonic() - started, self.first_token_seconds
            )
            raise
        except BaseException:
            breaker.release()
            raise
        finally:
            await _close(pieces)


def _attempt(deployment: Deployment, exc: BaseException, seconds: float, limit: float) -> Attempt:
    if isinstance(exc, ProviderError):
        code, message = exc.code, exc.message
    elif isinstance(exc, asyncio.TimeoutError):
        code, message = grpc.StatusCode.DEADLINE_EXCEEDED, f"no first token within {limit:g}s"
    else:
        code, message = grpc.StatusCode.UNAVAILABLE, "stream ended without output"
    return Attempt(deployment.provider, deployment.deployment, code, message, seconds)


def _resolve(future: asyncio.Future[None], *_: object) -> None:
    if not future.done():
        future.set_result(None)


async def _next_piece(pieces: AsyncIterator[StreamItem]) -> StreamItem:
    return await pieces.__anext__()


async def _sent_first(fetch: asyncio.Future[StreamItem], sent: asyncio.Future[None],
                      deadline: float) -> bool:
    """Wait until the request is sent or the first piece (or failure) came; True unless the
    deployment already failed (then nothing is announced). A timeout is left to the caller's
    wait for the first piece, which ends at the same deadline."""
    fetch.add_done_callback(partial(_resolve, sent))
    try:
        async with asyncio.timeout_at(deadline):
            await sent
    except TimeoutError:
        return False
    return not fetch.done() or (not fetch.cancelled() and fetch.exception() is None)


async def _abandon(fetch: asyncio.Future[StreamItem]) -> None:
    """Cancel a pending first-piece task and wait until it has let go of the provider stream."""
    fetch.cancel()
    await asyncio.wait([fetch])
    if not fetch.cancelled():
        fetch.exception()  # retrieved: the attempt is abandoned, its outcome does not matter


async def _close(stream: AsyncIterator[object]) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        try:
            await aclose()
        except Exception as exc:  # noqa: BLE001 - the attempt's outcome is already decided
            log.debug("closing a provider stream failed: %s", exc)
