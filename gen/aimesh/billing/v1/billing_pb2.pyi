import datetime

from aimesh.usage.v1 import usage_pb2 as _usage_pb2
from google.api import annotations_pb2 as _annotations_pb2
from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.api import httpbody_pb2 as _httpbody_pb2
from google.api import resource_pb2 as _resource_pb2
from google.protobuf import field_mask_pb2 as _field_mask_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PlanPrice(_message.Message):
    __slots__ = ("resource_type", "model", "included_quantity_micros", "overage_unit_price_micros", "price_unit_quantity")
    RESOURCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INCLUDED_QUANTITY_MICROS_FIELD_NUMBER: _ClassVar[int]
    OVERAGE_UNIT_PRICE_MICROS_FIELD_NUMBER: _ClassVar[int]
    PRICE_UNIT_QUANTITY_FIELD_NUMBER: _ClassVar[int]
    resource_type: _usage_pb2.ResourceType
    model: str
    included_quantity_micros: int
    overage_unit_price_micros: int
    price_unit_quantity: int
    def __init__(self, resource_type: _Optional[_Union[_usage_pb2.ResourceType, str]] = ..., model: _Optional[str] = ..., included_quantity_micros: _Optional[int] = ..., overage_unit_price_micros: _Optional[int] = ..., price_unit_quantity: _Optional[int] = ...) -> None: ...

class Plan(_message.Message):
    __slots__ = ("name", "display_name", "description", "currency_code", "monthly_fee_micros", "prices", "organization_requests_per_minute", "api_key_requests_per_minute", "tax_rate_micros", "publicly_available", "archived", "create_time", "update_time", "etag")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_CODE_FIELD_NUMBER: _ClassVar[int]
    MONTHLY_FEE_MICROS_FIELD_NUMBER: _ClassVar[int]
    PRICES_FIELD_NUMBER: _ClassVar[int]
    ORGANIZATION_REQUESTS_PER_MINUTE_FIELD_NUMBER: _ClassVar[int]
    API_KEY_REQUESTS_PER_MINUTE_FIELD_NUMBER: _ClassVar[int]
    TAX_RATE_MICROS_FIELD_NUMBER: _ClassVar[int]
    PUBLICLY_AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    ARCHIVED_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    name: str
    display_name: str
    description: str
    currency_code: str
    monthly_fee_micros: int
    prices: _containers.RepeatedCompositeFieldContainer[PlanPrice]
    organization_requests_per_minute: int
    api_key_requests_per_minute: int
    tax_rate_micros: int
    publicly_available: bool
    archived: bool
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    etag: str
    def __init__(self, name: _Optional[str] = ..., display_name: _Optional[str] = ..., description: _Optional[str] = ..., currency_code: _Optional[str] = ..., monthly_fee_micros: _Optional[int] = ..., prices: _Optional[_Iterable[_Union[PlanPrice, _Mapping]]] = ..., organization_requests_per_minute: _Optional[int] = ..., api_key_requests_per_minute: _Optional[int] = ..., tax_rate_micros: _Optional[int] = ..., publicly_available: bool = ..., archived: bool = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., etag: _Optional[str] = ...) -> None: ...

class ListPlansRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "show_all")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    SHOW_ALL_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    show_all: bool
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., show_all: bool = ...) -> None: ...

class ListPlansResponse(_message.Message):
    __slots__ = ("plans", "next_page_token")
    PLANS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    plans: _containers.RepeatedCompositeFieldContainer[Plan]
    next_page_token: str
    def __init__(self, plans: _Optional[_Iterable[_Union[Plan, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetPlanRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class CreatePlanRequest(_message.Message):
    __slots__ = ("plan", "plan_id", "request_id")
    PLAN_FIELD_NUMBER: _ClassVar[int]
    PLAN_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    plan: Plan
    plan_id: str
    request_id: str
    def __init__(self, plan: _Optional[_Union[Plan, _Mapping]] = ..., plan_id: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class UpdatePlanRequest(_message.Message):
    __slots__ = ("plan", "update_mask")
    PLAN_FIELD_NUMBER: _ClassVar[int]
    UPDATE_MASK_FIELD_NUMBER: _ClassVar[int]
    plan: Plan
    update_mask: _field_mask_pb2.FieldMask
    def __init__(self, plan: _Optional[_Union[Plan, _Mapping]] = ..., update_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ...) -> None: ...

class Subscription(_message.Message):
    __slots__ = ("name", "organization", "plan", "pending_plan", "current_period_start_time", "current_period_end_time", "state", "create_time", "update_time")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATE_UNSPECIFIED: _ClassVar[Subscription.State]
        STATE_ACTIVE: _ClassVar[Subscription.State]
        STATE_PAST_DUE: _ClassVar[Subscription.State]
        STATE_CANCELED: _ClassVar[Subscription.State]
    STATE_UNSPECIFIED: Subscription.State
    STATE_ACTIVE: Subscription.State
    STATE_PAST_DUE: Subscription.State
    STATE_CANCELED: Subscription.State
    NAME_FIELD_NUMBER: _ClassVar[int]
    ORGANIZATION_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    PENDING_PLAN_FIELD_NUMBER: _ClassVar[int]
    CURRENT_PERIOD_START_TIME_FIELD_NUMBER: _ClassVar[int]
    CURRENT_PERIOD_END_TIME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    name: str
    organization: str
    plan: str
    pending_plan: str
    current_period_start_time: _timestamp_pb2.Timestamp
    current_period_end_time: _timestamp_pb2.Timestamp
    state: Subscription.State
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., organization: _Optional[str] = ..., plan: _Optional[str] = ..., pending_plan: _Optional[str] = ..., current_period_start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., current_period_end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., state: _Optional[_Union[Subscription.State, str]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetSubscriptionRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ChangePlanRequest(_message.Message):
    __slots__ = ("plan", "request_id")
    PLAN_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    plan: str
    request_id: str
    def __init__(self, plan: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class InvoiceLineItem(_message.Message):
    __slots__ = ("kind", "description", "resource_type", "model", "quantity_micros", "included_quantity_micros", "billable_quantity_micros", "unit_price_micros", "price_unit_quantity", "amount_micros")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[InvoiceLineItem.Kind]
        KIND_SUBSCRIPTION_FEE: _ClassVar[InvoiceLineItem.Kind]
        KIND_USAGE: _ClassVar[InvoiceLineItem.Kind]
    KIND_UNSPECIFIED: InvoiceLineItem.Kind
    KIND_SUBSCRIPTION_FEE: InvoiceLineItem.Kind
    KIND_USAGE: InvoiceLineItem.Kind
    KIND_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_MICROS_FIELD_NUMBER: _ClassVar[int]
    INCLUDED_QUANTITY_MICROS_FIELD_NUMBER: _ClassVar[int]
    BILLABLE_QUANTITY_MICROS_FIELD_NUMBER: _ClassVar[int]
    UNIT_PRICE_MICROS_FIELD_NUMBER: _ClassVar[int]
    PRICE_UNIT_QUANTITY_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_MICROS_FIELD_NUMBER: _ClassVar[int]
    kind: InvoiceLineItem.Kind
    description: str
    resource_type: _usage_pb2.ResourceType
    model: str
    quantity_micros: int
    included_quantity_micros: int
    billable_quantity_micros: int
    unit_price_micros: int
    price_unit_quantity: int
    amount_micros: int
    def __init__(self, kind: _Optional[_Union[InvoiceLineItem.Kind, str]] = ..., description: _Optional[str] = ..., resource_type: _Optional[_Union[_usage_pb2.ResourceType, str]] = ..., model: _Optional[str] = ..., quantity_micros: _Optional[int] = ..., included_quantity_micros: _Optional[int] = ..., billable_quantity_micros: _Optional[int] = ..., unit_price_micros: _Optional[int] = ..., price_unit_quantity: _Optional[int] = ..., amount_micros: _Optional[int] = ...) -> None: ...

class Invoice(_message.Message):
    __slots__ = ("name", "number", "organization", "plan", "period_start_time", "period_end_time", "state", "currency_code", "line_items", "subtotal_micros", "tax_rate_micros", "tax_micros", "total_micros", "create_time", "update_time", "finalize_time", "due_time", "paid_time", "payment_reference", "void_time", "void_reason")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATE_UNSPECIFIED: _ClassVar[Invoice.State]
        STATE_DRAFT: _ClassVar[Invoice.State]
        STATE_FINALIZED: _ClassVar[Invoice.State]
        STATE_PAID: _ClassVar[Invoice.State]
        STATE_VOID: _ClassVar[Invoice.State]
    STATE_UNSPECIFIED: Invoice.State
    STATE_DRAFT: Invoice.State
    STATE_FINALIZED: Invoice.State
    STATE_PAID: Invoice.State
    STATE_VOID: Invoice.State
    NAME_FIELD_NUMBER: _ClassVar[int]
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    ORGANIZATION_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    PERIOD_START_TIME_FIELD_NUMBER: _ClassVar[int]
    PERIOD_END_TIME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_CODE_FIELD_NUMBER: _ClassVar[int]
    LINE_ITEMS_FIELD_NUMBER: _ClassVar[int]
    SUBTOTAL_MICROS_FIELD_NUMBER: _ClassVar[int]
    TAX_RATE_MICROS_FIELD_NUMBER: _ClassVar[int]
    TAX_MICROS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MICROS_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    FINALIZE_TIME_FIELD_NUMBER: _ClassVar[int]
    DUE_TIME_FIELD_NUMBER: _ClassVar[int]
    PAID_TIME_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_REFERENCE_FIELD_NUMBER: _ClassVar[int]
    VOID_TIME_FIELD_NUMBER: _ClassVar[int]
    VOID_REASON_FIELD_NUMBER: _ClassVar[int]
    name: str
    number: str
    organization: str
    plan: str
    period_start_time: _timestamp_pb2.Timestamp
    period_end_time: _timestamp_pb2.Timestamp
    state: Invoice.State
    currency_code: str
    line_items: _containers.RepeatedCompositeFieldContainer[InvoiceLineItem]
    subtotal_micros: int
    tax_rate_micros: int
    tax_micros: int
    total_micros: int
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    finalize_time: _timestamp_pb2.Timestamp
    due_time: _timestamp_pb2.Timestamp
    paid_time: _timestamp_pb2.Timestamp
    payment_reference: str
    void_time: _timestamp_pb2.Timestamp
    void_reason: str
    def __init__(self, name: _Optional[str] = ..., number: _Optional[str] = ..., organization: _Optional[str] = ..., plan: _Optional[str] = ..., period_start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., period_end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., state: _Optional[_Union[Invoice.State, str]] = ..., currency_code: _Optional[str] = ..., line_items: _Optional[_Iterable[_Union[InvoiceLineItem, _Mapping]]] = ..., subtotal_micros: _Optional[int] = ..., tax_rate_micros: _Optional[int] = ..., tax_micros: _Optional[int] = ..., total_micros: _Optional[int] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finalize_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., due_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., paid_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., payment_reference: _Optional[str] = ..., void_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., void_reason: _Optional[str] = ...) -> None: ...

class GenerateInvoiceRequest(_message.Message):
    __slots__ = ("organization", "period_start_time", "allow_open_period")
    ORGANIZATION_FIELD_NUMBER: _ClassVar[int]
    PERIOD_START_TIME_FIELD_NUMBER: _ClassVar[int]
    ALLOW_OPEN_PERIOD_FIELD_NUMBER: _ClassVar[int]
    organization: str
    period_start_time: _timestamp_pb2.Timestamp
    allow_open_period: bool
    def __init__(self, organization: _Optional[str] = ..., period_start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., allow_open_period: bool = ...) -> None: ...

class GetInvoiceRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListInvoicesRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "state")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    state: Invoice.State
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., state: _Optional[_Union[Invoice.State, str]] = ...) -> None: ...

class ListInvoicesResponse(_message.Message):
    __slots__ = ("invoices", "next_page_token")
    INVOICES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    invoices: _containers.RepeatedCompositeFieldContainer[Invoice]
    next_page_token: str
    def __init__(self, invoices: _Optional[_Iterable[_Union[Invoice, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class FinalizeInvoiceRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class MarkInvoicePaidRequest(_message.Message):
    __slots__ = ("name", "payment_reference", "paid_time")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_REFERENCE_FIELD_NUMBER: _ClassVar[int]
    PAID_TIME_FIELD_NUMBER: _ClassVar[int]
    name: str
    payment_reference: str
    paid_time: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., payment_reference: _Optional[str] = ..., paid_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class VoidInvoiceRequest(_message.Message):
    __slots__ = ("name", "reason")
    NAME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    name: str
    reason: str
    def __init__(self, name: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class RenderInvoiceRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...
