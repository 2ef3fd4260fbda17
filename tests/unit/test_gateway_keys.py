"""services/common/gateway_keys.py without servers: the cache of Auth's API-key verdicts (when a
verdict may be used, what drops it), Check's refusals as the caller gets them, and the server
interceptor admitting a key from Auth then from the held verdict (the end-to-end proof through
Envoy is tests/integration/gateway/test_api_keys_without_check.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

import grpc
import pytest
from aimesh.usage.v1 import usage_pb2  # noqa: F401  (its descriptors: ListBudgets is a read)

from services.auth.check import _deny
from services.common import gateway_jwt, gateway_keys, identity
from services.common.cache import ServiceCache
from services.common.errors import ServiceError, permission_denied, unauthenticated
from services.common.gateway_jwt import GatewayCallerInterceptor, RevokedTokens
from services.common.gateway_keys import ApiKeyCallers, AuthCheck, KeyVerdicts, _refusal
from services.common.identity import Identity, Role, identity_from_metadata
from services.usage.ratelimit import Decision, Status, over_limit

SECRET = "amk_0123abcd_" + "s" * 43
OTHER_SECRET = "amk_0123abcd_" + "t" * 43  # the same lookup prefix
CALLER = Identity("o_1", "apiKeys/key_1", frozenset({Role.MEMBER}), key_id="key_1",
                  scopes=frozenset({"usage.read"}))
LIST_BUDGETS = "/aimesh.usage.v1.UsageService/ListBudgets"
CREATE_BUDGET = "/aimesh.usage.v1.UsageService/CreateBudget"


@pytest.fixture
def verdicts() -> KeyVerdicts:
    held = KeyVerdicts()
    held.subscribed()
    return held


def test_a_verdict_answers_only_for_its_own_secret(verdicts: KeyVerdicts) -> None:
    verdicts.keep(SECRET, CALLER, None, verdicts.generation())
    assert verdicts.admitted(SECRET) == CALLER
    assert verdicts.admitted(OTHER_SECRET) is None
    assert verdicts.admitted("amk_99999999_" + "s" * 43) is None
    assert verdicts.admitted("not a key") is None


def test_verdicts_are_used_only_while_subscribed(verdicts: KeyVerdicts) -> None:
    verdicts.keep(SECRET, CALLER, None, verdicts.generation())
    verdicts.lost()  # Redis away: every request asks Auth
    assert verdicts.admitted(SECRET) is None
    verdicts.keep(SECRET, CALLER, None, verdicts.generation())
    assert verdicts.admitted(SECRET) is None
    verdicts.subscribed()  # what was held before may have missed messages
    assert verdicts.admitted(SECRET) is None
    verdicts.keep(SECRET, CALLER, None, verdicts.generation())
    assert verdicts.admitted(SECRET) == CALLER


def test_an_announcement_drops_the_keys_verdict_and_wins_a_race(verdicts: KeyVerdicts) -> None:
    other = "amk_ffffffff_" + "o" * 43
    verdicts.keep(SECRET, CALLER, None, verdicts.generation())
    verdicts.keep(other, CALLER, None, verdicts.generation())
    verdicts.forget(["amk_0123abcd"])
    assert verdicts.admitted(SECRET) is None and verdicts.admitted(other) == CALLER
    # Auth answered while the revocation arrived: that answer is not kept.
    generation = verdicts.generation()
    verdicts.forget(["amk_0123abcd"])
    verdicts.keep(SECRET, CALLER, None, generation)
    assert verdicts.admitted(SECRET) is None
    # Nor one given just after it (an Auth replica may not have applied the message yet)...
    verdicts.keep(SECRET, CALLER, None, verdicts.generation())
    assert verdicts.admitted(SECRET) is None
    # ...while other keys are held as usual, and this one again a moment later.
    verdicts.keep(other, CALLER, None, verdicts.generation())
    assert verdicts.admitted(other) == CALLER
    verdicts._announced["amk_0123abcd"] -= gateway_keys.ANNOUNCED_SECONDS
    verdicts.keep(SECRET, CALLER, None, verdicts.generation())
    assert verdicts.admitted(SECRET) == CALLER


def test_auths_own_announcement_applies_in_its_process_at_once(verdicts: KeyVerdicts) -> None:
    tokens = RevokedTokens(ServiceCache("redis://127.0.0.1:1/0", "auth"), verdicts)
    gateway_jwt._listeners.append(tokens)
    try:
        verdicts.keep(SECRET, CALLER, None, verdicts.generation())
        gateway_jwt.announced_here([f"{gateway_jwt.API_KEY}amk_0123abcd"])
        assert verdicts.admitted(SECRET) is None
    finally:
        gateway_jwt._listeners.remove(tokens)


def test_verdicts_expire_with_the_key_and_after_a_short_time() -> None:
    short = KeyVerdicts(seconds=0.0)
    short.subscribed()
    short.keep(SECRET, CALLER, None, short.generation())
    assert short.admitted(SECRET) is None
    held = KeyVerdicts()
    held.subscribed()
    held.keep(SECRET, CALLER, time.time() - 1, held.generation())  # the key has expired
    assert held.admitted(SECRET) is None
    held.keep(SECRET, CALLER, time.time() + 60, held.generation())
    assert held.admitted(SECRET) == CALLER
    # Only API keys are held (a user's identity never is).
    user = Identity("o_1", "users/u_1", frozenset({Role.OWNER}))
    held.forget()
    held.keep(SECRET, user, None, held.generation())
    assert held.admitted(SECRET) is None


def _decision(over: bool) -> Decision:
    return Decision(over, [Status(over, 5, 0 if over else 3, "api_key")], 12.3)


def test_checks_refusals_reach_the_caller_as_auth_words_them() -> None:
    for refused in (
        unauthenticated("API key revoked", reason="API_KEY_REVOKED"),
        permission_denied("this API key's scopes (usage.read) do not allow X",
                          reason="SCOPE_REQUIRED", metadata={"required_scope": "inference"}),
        over_limit(_decision(True)),
    ):
        got = _refusal(_deny(refused, grpc_caller=True))
        assert (got.code, got.message, got.reason) == (refused.code, refused.message,
                                                       refused.reason)
        assert got.metadata.items() >= refused.metadata.items()
        assert got.retry_after_seconds == refused.retry_after_seconds
        sent = dict(got.headers)
        if refused.code == grpc.StatusCode.UNAUTHENTICATED:
            assert sent["www-authenticate"].startswith("Bearer")
        if refused.code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            assert sent["x-ratelimit-remaining"] == "0" and sent["x-ratelimit-reset"] == "13"
            assert sent["x-ratelimit-limit"] == "5, 5;w=60"
        assert "grpc-status" not in sent and "content-type" not in sent


class FakeCheck(AuthCheck):
    """Auth's Check answering from a table, counting how often it was asked."""

    def __init__(self, answers: dict[str, Identity]) -> None:
        super().__init__(lambda: None)  # type: ignore[arg-type, return-value]
        self.answers = answers
        self.asked: list[str] = []

    async def admit(self, headers: Mapping[str, str], method: str
                    ) -> tuple[Identity, float | None, tuple[tuple[str, str], ...]]:
        self.asked.append(method)
        caller = self.answers.get(headers.get("x-api-key", ""))
        if caller is None:
            raise unauthenticated("invalid API key", reason="API_KEY_INVALID")
        return caller, None, (("x-ratelimit-remaining", "4"),)


class FakeLimiter:
    def __init__(self) -> None:
        self.counted: list[tuple[str, str | None]] = []

    def spend(self, org: str, key_id: str | None) -> Decision | None:
        return None  # no lease held: every request is counted by admit()

    async def admit(self, org: str, key_id: str | None) -> Decision:
        self.counted.append((org, key_id))
        return _decision(False)

    def refused_recently(self, org: str, key_id: str | None) -> ServiceError | None:
        return None


class FakeContext:
    def __init__(self) -> None:
        self.initial: list[tuple[tuple[str, str], ...]] = []

    async def send_initial_metadata(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.initial.append(metadata)


class Details:
    def __init__(self, method: str, metadata: tuple[tuple[str, str], ...]) -> None:
        self.method, self.invocation_metadata = method, metadata


def _served_by(handler: grpc.RpcMethodHandler) -> Any:
    async def continuation(details: Details) -> grpc.RpcMethodHandler:
        return handler

    return continuation


async def test_the_interceptor_asks_auth_once_then_admits_from_the_verdict() -> None:
    verdicts = KeyVerdicts()
    verdicts.subscribed()
    check, limiter = FakeCheck({SECRET: CALLER}), FakeLimiter()
    tokens = RevokedTokens(ServiceCache("redis://127.0.0.1:1/0", "auth"), verdicts)
    interceptor = GatewayCallerInterceptor(tokens, limiter, ApiKeyCallers(verdicts, check))
    seen: list[Identity | None] = []

    def call(method: str, secret: str) -> Any:
        metadata = (("x-api-key", secret), ("content-type", "application/grpc"))

        async def servicer(request: Any, context: Any) -> str:
            seen.append(identity_from_metadata(metadata))
            return "reply"

        async def run(request: Any, context: Any) -> Any:
            # As grpc.aio does: the interceptor, then the handler, in the call's own task.
            handler = await interceptor.intercept_service(
                _served_by(grpc.unary_unary_rpc_method_handler(servicer)),
                Details(method, metadata))  # type: ignore[arg-type]
            return await handler.unary_unary(request, context)

        return run

    first, second = FakeContext(), FakeContext()
    assert await call(LIST_BUDGETS, SECRET)(None, first) == "reply"
    assert await call(LIST_BUDGETS, SECRET)(None, second) == "reply"
    assert seen == [CALLER, CALLER]
    assert check.asked == [LIST_BUDGETS]  # the second request used the held verdict
    assert limiter.counted == [("o_1", "key_1")]  # Auth counted the first itself
    assert first.initial == [(("x-ratelimit-remaining", "4"),)]
    assert dict(second.initial[0])["x-ratelimit-remaining"] == "3"
    # A method the key's scopes do not grant: refused from the verdict, before the servicer.
    with pytest.raises(ServiceError) as refused:
        await call(CREATE_BUDGET, SECRET)(None, FakeContext())
    assert refused.value.reason == "SCOPE_REQUIRED" and len(seen) == 2
    # Another secret under the same prefix goes to Auth, which refuses it; nothing is held.
    with pytest.raises(ServiceError) as refused:
        await call(LIST_BUDGETS, OTHER_SECRET)(None, FakeContext())
    assert refused.value.reason == "API_KEY_INVALID" and check.asked == [LIST_BUDGETS] * 2
    assert verdicts.admitted(OTHER_SECRET) is None
    # The identity belongs to the call that presented the key, not to other metadata.
    assert identity_from_metadata((("x-api-key", OTHER_SECRET),)) is None
    identity._admitted_key.set(None)


class LeasedLimiter(FakeLimiter):
    """A limiter whose process holds `held` leased hits: those are spent without waiting."""

    def __init__(self, held: int) -> None:
        super().__init__()
        self.held = held

    def spend(self, org: str, key_id: str | None) -> Decision | None:
        if not self.held:
            return None
        self.held -= 1
        return _decision(False)


async def test_a_lease_hit_is_counted_synchronously_and_a_miss_waits_for_the_limiter() -> None:
    verdicts = KeyVerdicts()
    verdicts.subscribed()
    verdicts.keep(SECRET, CALLER, None, verdicts.generation())
    limiter = LeasedLimiter(held=1)
    tokens = RevokedTokens(ServiceCache("redis://127.0.0.1:1/0", "auth"), verdicts)
    interceptor = GatewayCallerInterceptor(tokens, limiter,
                                           ApiKeyCallers(verdicts, FakeCheck({})))
    metadata = (("x-api-key", SECRET), ("content-type", "application/grpc"))
    tasks_started: list[int] = []

    async def servicer(request: Any, context: Any) -> str:
        tasks_started.append(len(asyncio.all_tasks()))
        return "reply"

    async def call(context: FakeContext) -> Any:
        handler = await interceptor.intercept_service(
            _served_by(grpc.unary_unary_rpc_method_handler(servicer)),
            Details(LIST_BUDGETS, metadata))  # type: ignore[arg-type]
        return await handler.unary_unary(None, context)

    hit, miss = FakeContext(), FakeContext()
    assert await call(hit) == "reply"
    assert limiter.counted == [] and limiter.held == 0  # spent from the lease: no admit()
    assert dict(hit.initial[0])["x-ratelimit-remaining"] == "3"
    assert await call(miss) == "reply"
    assert limiter.counted == [("o_1", "key_1")]  # no hit left: counted by admit()
    # The read of the miss ran alongside its count (one more task); the hit's started none.
    assert tasks_started[1] == tasks_started[0] + 1
    identity._admitted_key.set(None)
