import datetime

from google.api import annotations_pb2 as _annotations_pb2
from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.api import httpbody_pb2 as _httpbody_pb2
from google.api import resource_pb2 as _resource_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import empty_pb2 as _empty_pb2
from google.protobuf import field_mask_pb2 as _field_mask_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.type import date_pb2 as _date_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ResourceType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RESOURCE_TYPE_UNSPECIFIED: _ClassVar[ResourceType]
    RESOURCE_TYPE_PROMPT_TOKENS: _ClassVar[ResourceType]
    RESOURCE_TYPE_COMPLETION_TOKENS: _ClassVar[ResourceType]
    RESOURCE_TYPE_AUDIO_SECONDS: _ClassVar[ResourceType]
    RESOURCE_TYPE_CHARACTERS_SYNTHESIZED: _ClassVar[ResourceType]
    RESOURCE_TYPE_CHUNKS_EMBEDDED: _ClassVar[ResourceType]
    RESOURCE_TYPE_SEARCHES: _ClassVar[ResourceType]
    RESOURCE_TYPE_REQUESTS: _ClassVar[ResourceType]
RESOURCE_TYPE_UNSPECIFIED: ResourceType
RESOURCE_TYPE_PROMPT_TOKENS: ResourceType
RESOURCE_TYPE_COMPLETION_TOKENS: ResourceType
RESOURCE_TYPE_AUDIO_SECONDS: ResourceType
RESOURCE_TYPE_CHARACTERS_SYNTHESIZED: ResourceType
RESOURCE_TYPE_CHUNKS_EMBEDDED: ResourceType
RESOURCE_TYPE_SEARCHES: ResourceType
RESOURCE_TYPE_REQUESTS: ResourceType

class UsageRecord(_message.Message):
    __slots__ = ("name", "organization", "api_key", "user", "resource_type", "model", "quantity_micros", "occur_time", "request_id", "source", "create_time")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ORGANIZATION_FIELD_NUMBER: _ClassVar[int]
    API_KEY_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_MICROS_FIELD_NUMBER: _ClassVar[int]
    OCCUR_TIME_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    name: str
    organization: str
    api_key: str
    user: str
    resource_type: ResourceType
    model: str
    quantity_micros: int
    occur_time: _timestamp_pb2.Timestamp
    request_id: str
    source: str
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., organization: _Optional[str] = ..., api_key: _Optional[str] = ..., user: _Optional[str] = ..., resource_type: _Optional[_Union[ResourceType, str]] = ..., model: _Optional[str] = ..., quantity_micros: _Optional[int] = ..., occur_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., request_id: _Optional[str] = ..., source: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RecordUsageRequest(_message.Message):
    __slots__ = ("records",)
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[UsageRecord]
    def __init__(self, records: _Optional[_Iterable[_Union[UsageRecord, _Mapping]]] = ...) -> None: ...

class RecordUsageResponse(_message.Message):
    __slots__ = ("accepted_count", "duplicate_count", "duplicate_request_ids")
    ACCEPTED_COUNT_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_COUNT_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_REQUEST_IDS_FIELD_NUMBER: _ClassVar[int]
    accepted_count: int
    duplicate_count: int
    duplicate_request_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, accepted_count: _Optional[int] = ..., duplicate_count: _Optional[int] = ..., duplicate_request_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class GetUsageSummaryRequest(_message.Message):
    __slots__ = ("organization", "start_time", "end_time", "group_by", "api_key", "resource_types")
    class GroupBy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        GROUP_BY_UNSPECIFIED: _ClassVar[GetUsageSummaryRequest.GroupBy]
        GROUP_BY_RESOURCE_TYPE: _ClassVar[GetUsageSummaryRequest.GroupBy]
        GROUP_BY_MODEL: _ClassVar[GetUsageSummaryRequest.GroupBy]
        GROUP_BY_DAY: _ClassVar[GetUsageSummaryRequest.GroupBy]
        GROUP_BY_API_KEY: _ClassVar[GetUsageSummaryRequest.GroupBy]
    GROUP_BY_UNSPECIFIED: GetUsageSummaryRequest.GroupBy
    GROUP_BY_RESOURCE_TYPE: GetUsageSummaryRequest.GroupBy
    GROUP_BY_MODEL: GetUsageSummaryRequest.GroupBy
    GROUP_BY_DAY: GetUsageSummaryRequest.GroupBy
    GROUP_BY_API_KEY: GetUsageSummaryRequest.GroupBy
    ORGANIZATION_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    GROUP_BY_FIELD_NUMBER: _ClassVar[int]
    API_KEY_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_TYPES_FIELD_NUMBER: _ClassVar[int]
    organization: str
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    group_by: _containers.RepeatedScalarFieldContainer[GetUsageSummaryRequest.GroupBy]
    api_key: str
    resource_types: _containers.RepeatedScalarFieldContainer[ResourceType]
    def __init__(self, organization: _Optional[str] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., group_by: _Optional[_Iterable[_Union[GetUsageSummaryRequest.GroupBy, str]]] = ..., api_key: _Optional[str] = ..., resource_types: _Optional[_Iterable[_Union[ResourceType, str]]] = ...) -> None: ...

class UsageSummary(_message.Message):
    __slots__ = ("organization", "start_time", "end_time", "rows")
    class Row(_message.Message):
        __slots__ = ("resource_type", "model", "day", "api_key", "quantity_micros", "record_count")
        RESOURCE_TYPE_FIELD_NUMBER: _ClassVar[int]
        MODEL_FIELD_NUMBER: _ClassVar[int]
        DAY_FIELD_NUMBER: _ClassVar[int]
        API_KEY_FIELD_NUMBER: _ClassVar[int]
        QUANTITY_MICROS_FIELD_NUMBER: _ClassVar[int]
        RECORD_COUNT_FIELD_NUMBER: _ClassVar[int]
        resource_type: ResourceType
        model: str
        day: _date_pb2.Date
        api_key: str
        quantity_micros: int
        record_count: int
        def __init__(self, resource_type: _Optional[_Union[ResourceType, str]] = ..., model: _Optional[str] = ..., day: _Optional[_Union[_date_pb2.Date, _Mapping]] = ..., api_key: _Optional[str] = ..., quantity_micros: _Optional[int] = ..., record_count: _Optional[int] = ...) -> None: ...
    ORGANIZATION_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    organization: str
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    rows: _containers.RepeatedCompositeFieldContainer[UsageSummary.Row]
    def __init__(self, organization: _Optional[str] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., rows: _Optional[_Iterable[_Union[UsageSummary.Row, _Mapping]]] = ...) -> None: ...

class ListUsageRecordsRequest(_message.Message):
    __slots__ = ("organization", "start_time", "end_time", "resource_type", "model", "api_key", "user", "page_size", "page_token")
    ORGANIZATION_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    API_KEY_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    organization: str
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    resource_type: ResourceType
    model: str
    api_key: str
    user: str
    page_size: int
    page_token: str
    def __init__(self, organization: _Optional[str] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., resource_type: _Optional[_Union[ResourceType, str]] = ..., model: _Optional[str] = ..., api_key: _Optional[str] = ..., user: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListUsageRecordsResponse(_message.Message):
    __slots__ = ("usage_records", "next_page_token")
    USAGE_RECORDS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    usage_records: _containers.RepeatedCompositeFieldContainer[UsageRecord]
    next_page_token: str
    def __init__(self, usage_records: _Optional[_Iterable[_Union[UsageRecord, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ExportUsageRecordsRequest(_message.Message):
    __slots__ = ("organization", "start_time", "end_time", "resource_type", "model", "api_key")
    ORGANIZATION_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    API_KEY_FIELD_NUMBER: _ClassVar[int]
    organization: str
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    resource_type: ResourceType
    model: str
    api_key: str
    def __init__(self, organization: _Optional[str] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., resource_type: _Optional[_Union[ResourceType, str]] = ..., model: _Optional[str] = ..., api_key: _Optional[str] = ...) -> None: ...

class Budget(_message.Message):
    __slots__ = ("name", "display_name", "scope", "api_key", "monthly_limit_micros", "currency_code", "monthly_token_limit", "period_start_time", "period_end_time", "spent_micros", "reserved_micros", "used_tokens", "create_time", "update_time", "etag")
    class Scope(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        SCOPE_UNSPECIFIED: _ClassVar[Budget.Scope]
        SCOPE_ORGANIZATION: _ClassVar[Budget.Scope]
        SCOPE_API_KEY: _ClassVar[Budget.Scope]
    SCOPE_UNSPECIFIED: Budget.Scope
    SCOPE_ORGANIZATION: Budget.Scope
    SCOPE_API_KEY: Budget.Scope
    NAME_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    API_KEY_FIELD_NUMBER: _ClassVar[int]
    MONTHLY_LIMIT_MICROS_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_CODE_FIELD_NUMBER: _ClassVar[int]
    MONTHLY_TOKEN_LIMIT_FIELD_NUMBER: _ClassVar[int]
    PERIOD_START_TIME_FIELD_NUMBER: _ClassVar[int]
    PERIOD_END_TIME_FIELD_NUMBER: _ClassVar[int]
    SPENT_MICROS_FIELD_NUMBER: _ClassVar[int]
    RESERVED_MICROS_FIELD_NUMBER: _ClassVar[int]
    USED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    name: str
    display_name: str
    scope: Budget.Scope
    api_key: str
    monthly_limit_micros: int
    currency_code: str
    monthly_token_limit: int
    period_start_time: _timestamp_pb2.Timestamp
    period_end_time: _timestamp_pb2.Timestamp
    spent_micros: int
    reserved_micros: int
    used_tokens: int
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    etag: str
    def __init__(self, name: _Optional[str] = ..., display_name: _Optional[str] = ..., scope: _Optional[_Union[Budget.Scope, str]] = ..., api_key: _Optional[str] = ..., monthly_limit_micros: _Optional[int] = ..., currency_code: _Optional[str] = ..., monthly_token_limit: _Optional[int] = ..., period_start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., period_end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., spent_micros: _Optional[int] = ..., reserved_micros: _Optional[int] = ..., used_tokens: _Optional[int] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., etag: _Optional[str] = ...) -> None: ...

class CreateBudgetRequest(_message.Message):
    __slots__ = ("budget", "request_id")
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    budget: Budget
    request_id: str
    def __init__(self, budget: _Optional[_Union[Budget, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class GetBudgetRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListBudgetsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListBudgetsResponse(_message.Message):
    __slots__ = ("budgets", "next_page_token")
    BUDGETS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    budgets: _containers.RepeatedCompositeFieldContainer[Budget]
    next_page_token: str
    def __init__(self, budgets: _Optional[_Iterable[_Union[Budget, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class UpdateBudgetRequest(_message.Message):
    __slots__ = ("budget", "update_mask")
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    UPDATE_MASK_FIELD_NUMBER: _ClassVar[int]
    budget: Budget
    update_mask: _field_mask_pb2.FieldMask
    def __init__(self, budget: _Optional[_Union[Budget, _Mapping]] = ..., update_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ...) -> None: ...

class DeleteBudgetRequest(_message.Message):
    __slots__ = ("name", "allow_missing")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ALLOW_MISSING_FIELD_NUMBER: _ClassVar[int]
    name: str
    allow_missing: bool
    def __init__(self, name: _Optional[str] = ..., allow_missing: bool = ...) -> None: ...

class Reservation(_message.Message):
    __slots__ = ("name", "organization", "api_key", "amount_micros", "currency_code", "tokens", "state", "budgets", "expire_time", "settled_amount_micros", "settled_tokens", "create_time", "close_time")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATE_UNSPECIFIED: _ClassVar[Reservation.State]
        STATE_OPEN: _ClassVar[Reservation.State]
        STATE_SETTLED: _ClassVar[Reservation.State]
        STATE_RELEASED: _ClassVar[Reservation.State]
        STATE_EXPIRED: _ClassVar[Reservation.State]
    STATE_UNSPECIFIED: Reservation.State
    STATE_OPEN: Reservation.State
    STATE_SETTLED: Reservation.State
    STATE_RELEASED: Reservation.State
    STATE_EXPIRED: Reservation.State
    NAME_FIELD_NUMBER: _ClassVar[int]
    ORGANIZATION_FIELD_NUMBER: _ClassVar[int]
    API_KEY_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_MICROS_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_CODE_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    BUDGETS_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    SETTLED_AMOUNT_MICROS_FIELD_NUMBER: _ClassVar[int]
    SETTLED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    CLOSE_TIME_FIELD_NUMBER: _ClassVar[int]
    name: str
    organization: str
    api_key: str
    amount_micros: int
    currency_code: str
    tokens: int
    state: Reservation.State
    budgets: _containers.RepeatedScalarFieldContainer[str]
    expire_time: _timestamp_pb2.Timestamp
    settled_amount_micros: int
    settled_tokens: int
    create_time: _timestamp_pb2.Timestamp
    close_time: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., organization: _Optional[str] = ..., api_key: _Optional[str] = ..., amount_micros: _Optional[int] = ..., currency_code: _Optional[str] = ..., tokens: _Optional[int] = ..., state: _Optional[_Union[Reservation.State, str]] = ..., budgets: _Optional[_Iterable[str]] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., settled_amount_micros: _Optional[int] = ..., settled_tokens: _Optional[int] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., close_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ReserveBudgetRequest(_message.Message):
    __slots__ = ("organization", "api_key", "estimated_amount_micros", "currency_code", "estimated_tokens", "ttl", "request_id")
    ORGANIZATION_FIELD_NUMBER: _ClassVar[int]
    API_KEY_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_AMOUNT_MICROS_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_CODE_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    organization: str
    api_key: str
    estimated_amount_micros: int
    currency_code: str
    estimated_tokens: int
    ttl: _duration_pb2.Duration
    request_id: str
    def __init__(self, organization: _Optional[str] = ..., api_key: _Optional[str] = ..., estimated_amount_micros: _Optional[int] = ..., currency_code: _Optional[str] = ..., estimated_tokens: _Optional[int] = ..., ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class SettleReservationRequest(_message.Message):
    __slots__ = ("name", "actual_amount_micros", "actual_tokens", "request_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ACTUAL_AMOUNT_MICROS_FIELD_NUMBER: _ClassVar[int]
    ACTUAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    actual_amount_micros: int
    actual_tokens: int
    request_id: str
    def __init__(self, name: _Optional[str] = ..., actual_amount_micros: _Optional[int] = ..., actual_tokens: _Optional[int] = ..., request_id: _Optional[str] = ...) -> None: ...

class ReleaseReservationRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class RateLimitPolicy(_message.Message):
    __slots__ = ("name", "organization_requests_per_minute", "api_key_requests_per_minute", "plan", "update_time")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ORGANIZATION_REQUESTS_PER_MINUTE_FIELD_NUMBER: _ClassVar[int]
    API_KEY_REQUESTS_PER_MINUTE_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    name: str
    organization_requests_per_minute: int
    api_key_requests_per_minute: int
    plan: str
    update_time: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., organization_requests_per_minute: _Optional[int] = ..., api_key_requests_per_minute: _Optional[int] = ..., plan: _Optional[str] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetRateLimitPolicyRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class SetRateLimitPolicyRequest(_message.Message):
    __slots__ = ("policy",)
    POLICY_FIELD_NUMBER: _ClassVar[int]
    policy: RateLimitPolicy
    def __init__(self, policy: _Optional[_Union[RateLimitPolicy, _Mapping]] = ...) -> None: ...
