"""AIP-158 pagination, tested once for every List method of every service (the real services in
the test mesh, called as the gateway calls them): negative page_size, a bit-flipped or truncated
page_token, another organization's token, a token reused with other filters, and a real walk
over several pages. The case table must name every List RPC in the descriptors, so a new List
method without a case fails `test_every_list_method_has_a_case`.

Issue 12 item 8's exact cases are among the parameters: page_size=-1 on ListConversations and
ListMessages, and a bit-flipped ListApiKeys page token.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import math
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from aimesh.auth.v1 import auth_pb2, auth_pb2_grpc
from aimesh.billing.v1 import billing_pb2, billing_pb2_grpc
from aimesh.conversation.v1 import conversation_pb2, conversation_pb2_grpc
from aimesh.knowledge.v1 import knowledge_pb2, knowledge_pb2_grpc
from aimesh.orchestrator.v1 import orchestrator_pb2, orchestrator_pb2_grpc
from aimesh.speech.v1 import speech_pb2, speech_pb2_grpc
from aimesh.usage.v1 import usage_pb2, usage_pb2_grpc
from google.protobuf import timestamp_pb2
from google.protobuf.message import Message

from scripts.stack import Stack
from services.common.channels import open_channel
from services.common.errors import field_violations, status_from_rpc_error
from tests.support.mesh import TestMesh, free_port

Headers = tuple[tuple[str, str], ...]
PROTO_MODULES = (auth_pb2, billing_pb2, conversation_pb2, knowledge_pb2, orchestrator_pb2, speech_pb2, usage_pb2)


def headers(org: str, subject: str = "users/pager", role: str = "owner", admin: bool = False) -> Headers:
    out = [("x-aimesh-org", org), ("x-aimesh-subject", subject), ("x-aimesh-roles", role)]
    if admin:
        out.append(("x-aimesh-scopes", "platform:admin"))
    return tuple(out)


def new_org() -> str:
    return f"org-pg-{uuid.uuid4().hex[:10]}"


def ts(when: dt.datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(when)
    return stamp


@dataclass
class Tenant:
    """One organization as a List call sees it: who calls, and the request's fixed fields."""

    headers: Headers
    fields: dict[str, Any] = field(default_factory=dict)
    other_fields: dict[str, Any] = field(default_factory=dict)  # a different filter, same tenant
    seeded: set[str] = field(default_factory=set)  # names of items this tenant must see
    channel: grpc.aio.Channel | None = None  # None: the session mesh's service


@dataclass
class ListCase:
    rpc: str  # full method name, e.g. aimesh.auth.v1.AuthService/ListApiKeys
    services: tuple[str, ...]  # mesh services the case needs (first one is called)
    stub: type
    items: str  # repeated field of the response
    # Creates a tenant; with seed=False only what a List call needs (no items).
    tenant: Callable[[TestMesh, bool], Awaitable[Tenant]]
    triton: bool = False
    caller: str = "gateway"  # the mesh identity that really calls this method

    @property
    def method(self) -> str:
        return self.rpc.rsplit("/", 1)[1]

    def request_type(self) -> type[Message]:
        service, method = self.rpc.split("/")
        package, _, name = service.rpartition(".")
        for module in PROTO_MODULES:
            if module.DESCRIPTOR.package == package:
                return module.DESCRIPTOR.services_by_name[name].methods_by_name[method].input_type._concrete_class  # type: ignore[no-any-return]
        raise KeyError(service)

    def request(self, fields: dict[str, Any], **paging: Any) -> Message:
        return self.request_type()(**fields, **paging)

    async def call(self, mesh: TestMesh, tenant: Tenant, fields: dict[str, Any] | None = None, **paging: Any) -> Any:
        stub = self.stub(tenant.channel or mesh.channel(self.services[0], identity=self.caller))
        rpc = getattr(stub, self.method)
        request = self.request(tenant.fields if fields is None else fields, **paging)
        return await rpc(request, metadata=tenant.headers, timeout=60)


# --- tenants, one maker per List method -------------------------------------------------------


async def _auth_tenant(mesh: TestMesh, seed: bool, keys: bool) -> Tenant:
    stub = auth_pb2_grpc.AuthServiceStub(mesh.channel("auth"))
    pair = await stub.SignUp(auth_pb2.SignUpRequest(
        email=f"pager-{uuid.uuid4().hex[:10]}@example.com", password="correct horse battery staple",
        organization_display_name="Pager"), timeout=30)
    tenant = Tenant(headers(pair.organization.split("/")[1], pair.user), {"parent": pair.organization})
    for i in range(3 if seed else 0):
        if keys:
            key = await stub.CreateApiKey(auth_pb2.CreateApiKeyRequest(
                parent=pair.organization, api_key=auth_pb2.ApiKey(display_name=f"k{i}")),
                metadata=tenant.headers, timeout=30)
            tenant.seeded.add(key.name)
        else:
            member = await stub.CreateMembership(auth_pb2.CreateMembershipRequest(
                parent=pair.organization, membership=auth_pb2.Membership(
                    email=f"m{i}-{uuid.uuid4().hex[:8]}@example.com", role=auth_pb2.ROLE_MEMBER)),
                metadata=tenant.headers, timeout=30)
            tenant.seeded.add(member.name)
    if keys:
        tenant.other_fields = {**tenant.fields, "show_inactive": True}
    else:
        tenant.other_fields = {**tenant.fields, "role": auth_pb2.ROLE_MEMBER}
    return tenant


async def _memberships(mesh: TestMesh, seed: bool) -> Tenant:
    return await _auth_tenant(mesh, seed, keys=False)


async def _api_keys(mesh: TestMesh, seed: bool) -> Tenant:
    return await _auth_tenant(mesh, seed, keys=True)


async def _audit_events(mesh: TestMesh, seed: bool) -> Tenant:
    """Sign-up and (seeded) three API keys: that many audit events."""
    tenant = await _auth_tenant(mesh, seed, keys=True)
    stub = auth_pb2_grpc.AuthServiceStub(mesh.channel("auth"))
    listed = await stub.ListAuditEvents(auth_pb2.ListAuditEventsRequest(**tenant.fields),
                                        metadata=tenant.headers, timeout=30)
    tenant.seeded = {e.name for e in listed.audit_events} if seed else set()
    tenant.other_fields = {**tenant.fields, "action": "auth.CreateApiKey"}
    return tenant


async def _plans(mesh: TestMesh, seed: bool) -> Tenant:
    tenant = Tenant(headers(new_org(), admin=True), {"show_all": True}, {"show_all": False})
    stub = billing_pb2_grpc.BillingServiceStub(mesh.channel("billing"))
    for i in range(2 if seed else 0):
        plan_id = f"pg-{uuid.uuid4().hex[:12]}"
        plan = await stub.CreatePlan(billing_pb2.CreatePlanRequest(plan_id=plan_id, plan=billing_pb2.Plan(
            display_name=f"pager {i}", currency_code="USD", organization_requests_per_minute=60,
            api_key_requests_per_minute=60, publicly_available=False, archived=True)),
            metadata=tenant.headers, timeout=30)
        tenant.seeded.add(plan.name)
    return tenant


async def _invoices(mesh: TestMesh, seed: bool) -> Tenant:
    tenant = Tenant(headers(new_org()), {}, {"state": billing_pb2.Invoice.STATE_DRAFT})
    stub = billing_pb2_grpc.BillingServiceStub(mesh.channel("billing"))
    if seed:
        now = dt.datetime.now(dt.UTC)
        this_month = dt.datetime(now.year, now.month, 1, tzinfo=dt.UTC)
        last_month = (this_month - dt.timedelta(days=1)).replace(day=1)
        for start, open_period in ((last_month, False), (this_month, True)):
            invoice = await stub.GenerateInvoice(billing_pb2.GenerateInvoiceRequest(
                period_start_time=ts(start), allow_open_period=open_period), metadata=tenant.headers, timeout=60)
            tenant.seeded.add(invoice.name)
    return tenant


async def _conversations(mesh: TestMesh, seed: bool) -> Tenant:
    tenant = Tenant(headers(new_org()), {}, {"show_deleted": True})
    stub = conversation_pb2_grpc.ConversationServiceStub(mesh.channel("conversation"))
    for i in range(3 if seed else 0):
        conv = await stub.CreateConversation(conversation_pb2.CreateConversationRequest(
            conversation=conversation_pb2.Conversation(title=f"c{i}")), metadata=tenant.headers, timeout=30)
        tenant.seeded.add(conv.name)
    return tenant


async def _messages(mesh: TestMesh, seed: bool) -> Tenant:
    tenant = Tenant(headers(new_org()))
    stub = conversation_pb2_grpc.ConversationServiceStub(mesh.channel("conversation"))
    convs = [await stub.CreateConversation(conversation_pb2.CreateConversationRequest(
        conversation=conversation_pb2.Conversation(title=t, system_prompt="The gateway listens on port 8080.")),
        metadata=tenant.headers, timeout=30) for t in ("walked", "other")]
    tenant.fields, tenant.other_fields = {"parent": convs[0].name}, {"parent": convs[1].name}
    if seed:  # one turn stores two messages: the user's and the assistant's answer
        async for event in stub.SendMessage(conversation_pb2.SendMessageRequest(
                conversation=convs[0].name, content="Which port does the gateway listen on?"),
                metadata=tenant.headers, timeout=180):
            for kind in ("user_message", "assistant_message"):
                if event.HasField(kind):
                    tenant.seeded.add(getattr(event, kind).name)
    return tenant


async def _documents(mesh: TestMesh, seed: bool) -> Tenant:
    tenant = Tenant(headers(new_org()), {}, {"state": knowledge_pb2.Document.STATE_READY})
    stub = knowledge_pb2_grpc.KnowledgeServiceStub(mesh.channel("knowledge"))
    for i in range(3 if seed else 0):
        doc = await stub.CreateDocument(knowledge_pb2.CreateDocumentRequest(
            document=knowledge_pb2.Document(display_name=f"d{i}", mime_type="text/plain"),
            content=f"Page walking document number {i}.".encode()), metadata=tenant.headers, timeout=60)
        tenant.seeded.add(doc.name)
    return tenant


_EXTRA_STACKS: list[Stack] = []


async def _models(mesh: TestMesh, seed: bool) -> Tenant:
    """The default catalog lists one model without provider keys: this Orchestrator's catalog
    adds four more Triton-served entries, so the catalog spans several pages."""
    if not _EXTRA_STACKS:
        data = json.loads(Path(mesh.settings.orchestrator_catalog).read_text())
        base = next(m for m in data["models"] if m["name"] == "grounded-extractive-v1")
        data["models"].extend({**base, "name": f"pager-{i}", "display_name": f"pager {i}"} for i in range(4))
        catalog = mesh.var_dir / "pagination-catalog.json"
        catalog.write_text(json.dumps(data))
        overrides = {**mesh.env, "AIMESH_ORCHESTRATOR_ADDR": f"127.0.0.1:{free_port()}",
                     "AIMESH_ORCHESTRATOR_CATALOG": str(catalog)}
        stack = Stack.create(overrides, log_dir=mesh.var_dir / "log" / "pagination")
        _EXTRA_STACKS.append(stack)
        stack.start_service("orchestrator")
        stack.wait_ready(["orchestrator"], timeout=60)
    channel = open_channel(_EXTRA_STACKS[0].settings, "orchestrator", caller="conversation")
    return Tenant(headers(new_org()), channel=channel)


async def _voices(mesh: TestMesh, seed: bool) -> Tenant:
    return Tenant(headers(new_org()), {}, {"language_code": "en"})


async def _usage_records(mesh: TestMesh, seed: bool) -> Tenant:
    org = new_org()
    tenant = Tenant(headers(org), {}, {"resource_type": usage_pb2.RESOURCE_TYPE_PROMPT_TOKENS})
    if seed:
        recorder = usage_pb2_grpc.UsageServiceStub(mesh.channel("usage", identity="orchestrator"))
        now = dt.datetime.now(dt.UTC)
        records = [usage_pb2.UsageRecord(
            organization=f"organizations/{org}", request_id=f"pg-{i}", model="models/pager",
            resource_type=usage_pb2.RESOURCE_TYPE_COMPLETION_TOKENS, quantity_micros=1000 + i,
            occur_time=ts(now - dt.timedelta(seconds=i))) for i in range(3)]
        await recorder.RecordUsage(usage_pb2.RecordUsageRequest(records=records), timeout=30)
        listed = await usage_pb2_grpc.UsageServiceStub(mesh.channel("usage")).ListUsageRecords(
            usage_pb2.ListUsageRecordsRequest(), metadata=tenant.headers, timeout=30)
        tenant.seeded = {r.name for r in listed.usage_records}
    return tenant


async def _budgets(mesh: TestMesh, seed: bool) -> Tenant:
    tenant = Tenant(headers(new_org()))
    stub = usage_pb2_grpc.UsageServiceStub(mesh.channel("usage"))
    for currency in ("USD", "EUR", "GBP") if seed else ():
        budget = await stub.CreateBudget(usage_pb2.CreateBudgetRequest(budget=usage_pb2.Budget(
            scope=usage_pb2.Budget.SCOPE_ORGANIZATION, monthly_limit_micros=1_000_000, currency_code=currency)),
            metadata=tenant.headers, timeout=30)
        tenant.seeded.add(budget.name)
    return tenant


CASES = [
    ListCase("aimesh.auth.v1.AuthService/ListMemberships", ("auth",), auth_pb2_grpc.AuthServiceStub,
             "memberships", _memberships),
    ListCase("aimesh.auth.v1.AuthService/ListApiKeys", ("auth",), auth_pb2_grpc.AuthServiceStub,
             "api_keys", _api_keys),
    ListCase("aimesh.auth.v1.AuthService/ListAuditEvents", ("auth",), auth_pb2_grpc.AuthServiceStub,
             "audit_events", _audit_events),
    ListCase("aimesh.billing.v1.BillingService/ListPlans", ("billing", "usage"),
             billing_pb2_grpc.BillingServiceStub, "plans", _plans),
    ListCase("aimesh.billing.v1.BillingService/ListInvoices", ("billing", "usage"),
             billing_pb2_grpc.BillingServiceStub, "invoices", _invoices),
    ListCase("aimesh.conversation.v1.ConversationService/ListConversations", ("conversation",),
             conversation_pb2_grpc.ConversationServiceStub, "conversations", _conversations),
    ListCase("aimesh.conversation.v1.ConversationService/ListMessages",
             ("conversation", "orchestrator", "usage"), conversation_pb2_grpc.ConversationServiceStub,
             "messages", _messages, triton=True),
    ListCase("aimesh.knowledge.v1.KnowledgeService/ListDocuments", ("knowledge", "usage"),
             knowledge_pb2_grpc.KnowledgeServiceStub, "documents", _documents, triton=True),
    ListCase("aimesh.orchestrator.v1.OrchestratorService/ListModels", ("orchestrator", "usage"),
             orchestrator_pb2_grpc.OrchestratorServiceStub, "models", _models,
             triton=True, caller="conversation"),  # no public route: Conversation and Speech list models
    ListCase("aimesh.speech.v1.SpeechService/ListVoices", ("speech", "usage"), speech_pb2_grpc.SpeechServiceStub,
             "voices", _voices, triton=True),
    ListCase("aimesh.usage.v1.UsageService/ListUsageRecords", ("usage",), usage_pb2_grpc.UsageServiceStub,
             "usage_records", _usage_records),
    ListCase("aimesh.usage.v1.UsageService/ListBudgets", ("usage",), usage_pb2_grpc.UsageServiceStub,
             "budgets", _budgets),
]
FILTERED = [c for c in CASES if c.method not in ("ListModels", "ListBudgets")]


def _ids(case: ListCase) -> str:
    return case.method


class Tenants:
    """Seeded tenants, made once per case per session (seeding is the slow part)."""

    def __init__(self, mesh: TestMesh) -> None:
        self.mesh = mesh
        self.cache: dict[tuple[str, bool], Tenant] = {}

    async def get(self, case: ListCase, seed: bool = True) -> Tenant:
        key = (case.rpc, seed)
        if key not in self.cache:
            if case.triton:
                self.mesh.ensure_triton()
            self.mesh.ensure(*case.services)
            self.cache[key] = await case.tenant(self.mesh, seed)
        return self.cache[key]


@pytest.fixture(scope="session")
def tenants(mesh: TestMesh) -> Iterator[Tenants]:
    yield Tenants(mesh)
    for stack in _EXTRA_STACKS:
        stack.stop_all()


def _expect_page_error(caught: pytest.ExceptionInfo[grpc.aio.AioRpcError], field_name: str) -> str:
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value
    status = status_from_rpc_error(caught.value)
    assert status is not None, "no google.rpc.Status details"
    violations = dict(field_violations(status))
    assert field_name in violations, violations
    return violations[field_name]


async def _first_token(case: ListCase, mesh: TestMesh, tenant: Tenant) -> str:
    first = await case.call(mesh, tenant, page_size=1)
    assert len(getattr(first, case.items)) == 1 and first.next_page_token, f"{case.method}: needs 2+ items"
    return str(first.next_page_token)


def _flip(token: str, index: int) -> str:
    """The token with one bit changed in byte `index` of its decoded form (payload or MAC)."""
    body, mac = token.split(".")
    part = body if index >= 0 else mac
    raw = bytearray(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    raw[index] ^= 0x01
    flipped = base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("=")
    return f"{flipped}.{mac}" if index >= 0 else f"{body}.{flipped}"


def test_every_list_method_has_a_case() -> None:
    """Every List RPC of every service is in CASES; those without a filter case have no filter."""
    rpcs = {f"{s.full_name}/{m.name}" for module in PROTO_MODULES for s in module.DESCRIPTOR.services_by_name.values()
            for m in s.methods if m.name.startswith("List")}
    assert rpcs == {c.rpc for c in CASES}
    for case in CASES:
        if case not in FILTERED:
            names = {f.name for f in case.request_type().DESCRIPTOR.fields}
            assert names == {"page_size", "page_token"}, f"{case.method} has filters {names}: add a filter case"


@pytest.mark.parametrize("case", CASES, ids=_ids)
async def test_negative_page_size_is_invalid_argument(case: ListCase, mesh: TestMesh, tenants: Tenants) -> None:
    tenant = await tenants.get(case, seed=False)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await case.call(mesh, tenant, page_size=-1)
    _expect_page_error(caught, "page_size")


@pytest.mark.parametrize("case", CASES, ids=_ids)
async def test_walk_visits_every_item_once_over_several_pages(case: ListCase, mesh: TestMesh, tenants: Tenants) -> None:
    tenant = await tenants.get(case)
    everything = await case.call(mesh, tenant, page_size=5000)  # above the maximum: coerced, not refused
    total = len(getattr(everything, case.items))
    assert total >= 2 and tenant.seeded <= {item.name for item in getattr(everything, case.items)}
    size = max(1, math.ceil(total / 3))
    seen: list[str] = []
    token, pages = "", 0
    while True:
        page = await case.call(mesh, tenant, page_size=size, page_token=token)
        items = getattr(page, case.items)
        assert len(items) <= size
        seen.extend(item.name for item in items)
        pages += 1
        token = page.next_page_token
        if not token:
            break
        assert pages < 50, "pagination does not terminate"
    assert pages >= 2
    assert len(seen) == len(set(seen)), f"{case.method} returned an item twice"
    assert tenant.seeded <= set(seen)
    if case.method not in ("ListPlans",):  # plans are global: other tests add some meanwhile
        assert len(seen) == total


@pytest.mark.parametrize("case", CASES, ids=_ids)
@pytest.mark.parametrize("where", [0, 5, -1], ids=["payload-first-byte", "payload-cursor", "signature"])
async def test_bit_flipped_token_is_invalid_argument(case: ListCase, where: int, mesh: TestMesh, tenants: Tenants) -> None:
    tenant = await tenants.get(case)
    token = await _first_token(case, mesh, tenant)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await case.call(mesh, tenant, page_size=1, page_token=_flip(token, where))
    _expect_page_error(caught, "page_token")


@pytest.mark.parametrize("case", CASES, ids=_ids)
async def test_garbage_and_truncated_tokens_are_invalid_argument(case: ListCase, mesh: TestMesh, tenants: Tenants) -> None:
    tenant = await tenants.get(case)
    token = await _first_token(case, mesh, tenant)
    for bad in ("garbage", token[:-3], token.split(".")[0], "bm90LWpzb24=", "\u00e9\u0000"):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await case.call(mesh, tenant, page_size=1, page_token=bad)
        _expect_page_error(caught, "page_token")


@pytest.mark.parametrize("case", CASES, ids=_ids)
async def test_other_organizations_token_is_invalid_argument(case: ListCase, mesh: TestMesh, tenants: Tenants) -> None:
    owner = await tenants.get(case)
    token = await _first_token(case, mesh, owner)
    other = await tenants.get(case, seed=False)
    # The other organization sends the same request (its own parent, if any) with the stolen token.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await case.call(mesh, other, page_size=1, page_token=token)
    why = _expect_page_error(caught, "page_token")
    assert "must match" not in why  # refused as foreign, not merely as a filter change
    assert dict(other.headers)["x-aimesh-org"] != dict(owner.headers)["x-aimesh-org"]


@pytest.mark.parametrize("case", FILTERED, ids=_ids)
async def test_token_reused_with_other_filters_is_invalid_argument(case: ListCase, mesh: TestMesh, tenants: Tenants) -> None:
    tenant = await tenants.get(case)
    token = await _first_token(case, mesh, tenant)
    assert tenant.other_fields != tenant.fields
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await case.call(mesh, tenant, tenant.other_fields, page_size=1, page_token=token)
    why = _expect_page_error(caught, "page_token")
    assert "must match" in why  # refused as a filter change, not as a forgery
    # A different page size with the same filters is fine (AIP-158).
    page = await case.call(mesh, tenant, page_size=2, page_token=token)
    assert len(getattr(page, case.items)) >= 1


async def test_page_size_above_maximum_is_coerced_to_1000(mesh: TestMesh) -> None:
    mesh.ensure("usage")
    org = new_org()
    recorder = usage_pb2_grpc.UsageServiceStub(mesh.channel("usage", identity="orchestrator"))
    now = dt.datetime.now(dt.UTC)
    for batch in range(2):
        records = [usage_pb2.UsageRecord(
            organization=f"organizations/{org}", request_id=f"max-{batch}-{i}", resource_type=usage_pb2.RESOURCE_TYPE_SEARCHES,
            quantity_micros=1, occur_time=ts(now - dt.timedelta(seconds=i))) for i in range(501)]
        await recorder.RecordUsage(usage_pb2.RecordUsageRequest(records=records), timeout=60)
    stub = usage_pb2_grpc.UsageServiceStub(mesh.channel("usage"))
    page = await stub.ListUsageRecords(usage_pb2.ListUsageRecordsRequest(page_size=100_000), metadata=headers(org), timeout=60)
    assert len(page.usage_records) == 1000 and page.next_page_token
    rest = await stub.ListUsageRecords(usage_pb2.ListUsageRecordsRequest(page_size=100_000, page_token=page.next_page_token),
                                       metadata=headers(org), timeout=60)
    assert len(rest.usage_records) == 2 and not rest.next_page_token
    default = await stub.ListUsageRecords(usage_pb2.ListUsageRecordsRequest(), metadata=headers(org), timeout=60)
    assert len(default.usage_records) == 50
