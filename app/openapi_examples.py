"""The examples ``/schema/openapi.json`` shows: a request body and a success answer for each
admin operation and each tenant call but the audio ones (``openapi.py`` documents those).

They tell one story, so ids agree from one operation to the next: the tenant Acme Corp, its
key ``prod-transcriber``, their budgets and a call. Values are written as the API writes
them: ULIDs whose time is the record's ``created_at``, times in UTC with ``Z``, USD as
strings of nano-dollars, a secret that passes the key format's checksum (shown only by
creation and rotation). ``tests/test_openapi_examples.py`` holds each to its documented
schema, to its handler's msgspec types and to a real answer of the service.
"""

from __future__ import annotations

from typing import Any, NamedTuple


class OperationExample(NamedTuple):
    request: Any = None  # the JSON body, for an operation that takes one
    response: Any = None  # the success answer's JSON body


_TENANT_ID = "ten_01K7H4FWGEW6M9WESEEZGBJFDF"
_KEY_ID = "key_01K94FXCD28C55W4Q3RYEB15EV"
# Well formed, made for these pages: no gateway holds their digests.
_SECRET = "sk-bf-FnaWQQKNvAPWsiELwoXgAeNkESfRZ0tvTAWfwVOAFrW45qxyX"  # noqa: S105
_ROTATED_SECRET = "sk-bf-kjVjr8QOarW790ZIQfPYzzjKVKn3y7KOXXUxO5Ukrh04c8iyM"  # noqa: S105
_CALL_ID = "req_01KAV8R98M52WNDZ64J3Q7T72J"
_ZERO = "0.000000000"

_TENANT = {
    "id": _TENANT_ID,
    "name": "Acme Corp",
    "status": "active",
    "metadata": {"plan": "enterprise", "billing_id": "ACME-0042"},
    "created_at": "2025-10-14T10:33:09.902215Z",
    "updated_at": "2025-10-14T10:33:09.902215Z",
}

_WEBHOOK = {
    "id": "whk_01K9A56E1NRMG72XJJGBVW6J36",
    "url": "https://hooks.acme.example/earmark",
    "event_types": ["key.revoked", "tenant.deactivated"],
    "tenant_id": _TENANT_ID,
    "enabled": True,
    "failing": False,
    "created_at": "2025-11-05T14:02:11.381907Z",
    "updated_at": "2025-11-05T14:02:11.381907Z",
}

_DELIVERY = {
    "id": "dlv_01KAX14Z0PKGZZ0SBAR3THMEQC",
    "event_id": "msg_01KAX14Z0PDWSYKFQMMT77B5HV",
    "event_type": "key.revoked",
    "status": "succeeded",
    "attempts": 1,
    "next_attempt_at": None,
    "last_attempt_at": "2025-11-25T08:12:45.201377Z",
    "last_status": 204,
    "last_error": None,
    "created_at": "2025-11-25T08:12:44.950318Z",
}

_RATE_LIMITS = {
    "requests_per_minute": 120,
    "audio_seconds_per_window": 36000,
    "window_seconds": 3600,
    "max_concurrent": 8,
}

_KEY = {
    "id": _KEY_ID,
    "tenant_id": _TENANT_ID,
    "name": "prod-transcriber",
    "display_prefix": _SECRET[:12],
    "status": "active",
    "metadata": {"env": "production", "cost_center": "CC-4210"},
    "allowed_models": ["openai/whisper-1", "gpt-4o-transcribe"],
    "rate_limits": _RATE_LIMITS,
    "cache": True,
    "expires_at": "2026-11-03T00:00:00Z",
    "revoked_at": None,
    "rotated_at": None,
    "created_at": "2025-11-03T09:14:02.530871Z",
    "updated_at": "2025-11-03T09:14:02.530871Z",
}

_NOVEMBER = {"period_start": "2025-11-01T00:00:00Z", "period_end": "2025-12-01T00:00:00Z"}

# The key's monthly budget as it stands on 24 November: one call in flight holds $0.0042.
_KEY_BUDGET = {
    "id": "bud_01K94FXCD6XZ34QW4M6VAMC9VN",
    "owner": "key",
    "key_id": _KEY_ID,
    "tenant_id": None,
    "limit_usd": "50.000000000",
    "period": "month",
    **_NOVEMBER,
    "spent_usd": "12.384210000",
    "held_usd": "0.004200000",
    "top_up_usd": _ZERO,
    "remaining_usd": "37.611590000",
    "thresholds": [],
    "created_at": "2025-11-03T09:14:02.534112Z",
    "updated_at": "2025-11-03T09:14:02.534112Z",
}

_DAILY_BUDGET = {
    "id": "bud_01KATGCT0K7B4R689NM4DJZGQY",
    "owner": "key",
    "key_id": _KEY_ID,
    "tenant_id": None,
    "limit_usd": "5.000000000",
    "period": "day",
    "period_start": "2025-11-24T00:00:00Z",
    "period_end": "2025-11-25T00:00:00Z",
    "spent_usd": _ZERO,
    "held_usd": _ZERO,
    "top_up_usd": _ZERO,
    "remaining_usd": "5.000000000",
    "thresholds": [80],
    "created_at": "2025-11-24T08:41:27.315904Z",
    "updated_at": "2025-11-24T08:41:27.315904Z",
}

# The tenant's monthly budget: what its keys spent in November, that key's call held.
_TENANT_BUDGET = {
    "id": "bud_01K7H4MQ9Q6PCPRDC3PKRVR3RC",
    "owner": "tenant",
    "key_id": None,
    "tenant_id": _TENANT_ID,
    "limit_usd": "500.000000000",
    "period": "month",
    **_NOVEMBER,
    "spent_usd": "18.250306000",
    "held_usd": "0.004200000",
    "top_up_usd": _ZERO,
    "remaining_usd": "481.745494000",
    "thresholds": [50, 80, 100],
    "created_at": "2025-10-14T10:35:48.407113Z",
    "updated_at": "2025-10-14T10:35:48.407113Z",
}

_CALL = {
    "id": _CALL_ID,
    "key_id": _KEY_ID,
    "tenant_id": _TENANT_ID,
    "endpoint": "transcription",
    "status": "succeeded",
    "http_status": 200,
    "error_code": None,
    "model_requested": "openai/whisper-1",
    "provider": "openai",
    "model": "whisper-1",
    "attempts": 1,
    "response_format": "json",
    "stream": False,
    "upload_bytes": 1339884,
    "probed_audio_ms": 41870,
    "audio_ms": 42000,
    "input_text_tokens": None,
    "input_audio_tokens": None,
    "output_tokens": None,
    "total_tokens": None,
    "usage_source": "provider",
    "review": None,
    "replays": 0,
    "cost_usd": "0.004200000",
    "expected_usd": "0.004200000",
    "hold_usd": "0.004200000",
    "latency_ms": 1858,
    "upstream_latency_ms": 1790,
    "created_at": "2025-11-24T15:47:09.204316Z",
    "completed_at": "2025-11-24T15:47:11.062871Z",
    "upstream_attempts": [
        {
            "n": 1,
            "provider": "openai",
            "model": "whisper-1",
            "started_at": "2025-11-24T15:47:09.262530Z",
            "outcome": "answered",
            "http_status": 200,
            "error": None,
            "bytes_sent": 1340250,
            "latency_ms": 1790,
            "charged_nanos": 0,
        }
    ],
}
_CALLS = {"data": [_CALL], "next_cursor": _CALL_ID}  # older calls on the next page

_KEY_CREATE = {
    "tenant_id": _TENANT_ID,
    "name": "prod-transcriber",
    "metadata": {"env": "production", "cost_center": "CC-4210"},
    "expires_at": "2026-11-03T00:00:00Z",
    "allowed_models": ["openai/whisper-1", "gpt-4o-transcribe"],
    "rate_limits": _RATE_LIMITS,
    "cache": True,
    "budgets": [{"limit_usd": "50.00", "period": "month"}],
}

_KEY_UPDATE = {
    "name": "prod-transcriber-eu",
    "metadata": {"env": "production", "cost_center": "CC-4210", "region": "eu-west-1"},
    "expires_at": None,
    "allowed_models": ["openai/whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe"],
    "rate_limits": {**_RATE_LIMITS, "requests_per_minute": 240},
    "cache": False,
}

# The story after creation: on 24 November the key is rotated (its old secret kept an hour
# more), then the key and the tenant are updated; on the 25th both are switched off.
_ROTATED_AT = "2025-11-24T09:30:00.512730Z"
_ROTATED_KEY = {
    **_KEY,
    "display_prefix": _ROTATED_SECRET[:12],
    "rotated_at": _ROTATED_AT,
    "updated_at": _ROTATED_AT,
}
_UPDATED_KEY = {**_ROTATED_KEY, **_KEY_UPDATE, "updated_at": "2025-11-24T16:20:05.774120Z"}
_TENANT_UPDATE = {
    "name": "Acme Corporation",
    "metadata": {"plan": "enterprise", "billing_id": "ACME-0042", "region": "eu"},
    "status": "active",
}
_UPDATED_TENANT = {**_TENANT, **_TENANT_UPDATE, "updated_at": "2025-11-24T16:18:37.220981Z"}

# Keyed by the handler's function name.
EXAMPLES: dict[str, OperationExample] = {
    "create_tenant": OperationExample(
        request={
            "name": "Acme Corp",
            "metadata": {"plan": "enterprise", "billing_id": "ACME-0042"},
        },
        response=_TENANT,
    ),
    "list_tenants": OperationExample(response={"data": [_TENANT], "next_cursor": None}),
    "get_tenant": OperationExample(response=_TENANT),
    "update_tenant": OperationExample(request=_TENANT_UPDATE, response=_UPDATED_TENANT),
    "deactivate_tenant": OperationExample(
        response={
            **_UPDATED_TENANT,
            "status": "inactive",
            "updated_at": "2025-11-25T08:13:02.117564Z",
        }
    ),
    "create_key": OperationExample(
        request=_KEY_CREATE,
        response={
            **_KEY,
            "secret": _SECRET,
            "previous_secret_valid_until": None,
            "budgets": [
                {
                    **_KEY_BUDGET,
                    "spent_usd": _ZERO,
                    "held_usd": _ZERO,
                    "remaining_usd": "50.000000000",
                }
            ],
        },
    ),
    "list_keys": OperationExample(response={"data": [_KEY], "next_cursor": None}),
    "get_key": OperationExample(response=_KEY),
    "rotate_key": OperationExample(
        request={"grace_seconds": 3600},
        response={
            **_ROTATED_KEY,
            "secret": _ROTATED_SECRET,
            "previous_secret_valid_until": "2025-11-24T10:30:00.512730Z",
            "budgets": [
                _KEY_BUDGET,
                {**_DAILY_BUDGET, "spent_usd": "1.204300000", "remaining_usd": "3.795700000"},
            ],
        },
    ),
    "update_key": OperationExample(request=_KEY_UPDATE, response=_UPDATED_KEY),
    "revoke_key": OperationExample(
        response={
            **_UPDATED_KEY,
            "status": "revoked",
            "revoked_at": "2025-11-25T08:12:44.950318Z",
            "updated_at": "2025-11-25T08:12:44.950318Z",
        }
    ),
    "list_key_calls": OperationExample(response=_CALLS),
    "list_calls": OperationExample(response=_CALLS),
    "add_key_budget": OperationExample(
        request={"limit_usd": "5.00", "period": "day", "thresholds": [80]}, response=_DAILY_BUDGET
    ),
    "add_tenant_budget": OperationExample(
        request={"limit_usd": "500.00", "period": "month", "thresholds": [50, 80, 100]},
        response={
            **_TENANT_BUDGET,
            "period_start": "2025-10-01T00:00:00Z",
            "period_end": "2025-11-01T00:00:00Z",
            "spent_usd": _ZERO,
            "held_usd": _ZERO,
            "remaining_usd": "500.000000000",
        },
    ),
    # GET /admin/budgets?key_id=key_01K94FXCD28C55W4Q3RYEB15EV
    "list_budgets": OperationExample(
        response={"data": [_KEY_BUDGET, _DAILY_BUDGET], "next_cursor": None}
    ),
    "get_budget": OperationExample(response=_KEY_BUDGET),
    "update_budget": OperationExample(
        request={"limit_usd": "75.00"},
        response={
            **_KEY_BUDGET,
            "limit_usd": "75.000000000",
            "remaining_usd": "62.611590000",
            "updated_at": "2025-11-24T16:02:40.118733Z",
        },
    ),
    "top_up": OperationExample(
        request={"amount_usd": "25.50"},
        response={**_TENANT_BUDGET, "top_up_usd": "25.500000000", "remaining_usd": "507.245494000"},
    ),
    "reset": OperationExample(
        response={
            **_TENANT_BUDGET,
            "spent_usd": _ZERO,
            "top_up_usd": "25.500000000",
            "remaining_usd": "525.495800000",
        }
    ),
    "budget_periods": OperationExample(
        response={
            "data": [
                {
                    "period_start": "2025-11-01T00:00:00Z",
                    "spent_usd": "18.250306000",
                    "held_usd": "0.004200000",
                    "top_up_usd": _ZERO,
                },
                {
                    "period_start": "2025-10-01T00:00:00Z",
                    "spent_usd": "9.117045000",
                    "held_usd": _ZERO,
                    "top_up_usd": _ZERO,
                },
            ],
            "next_cursor": None,
        }
    ),
    "budget_events": OperationExample(
        response={
            "data": [
                {
                    "id": "aud_01K7H4MQ9QYR0FTB9BPJNDKFM0",
                    "action": "create",
                    "actor": "token",
                    "details": {
                        "limit_usd": "500.00",
                        "period": "month",
                        "thresholds": [50, 80, 100],
                    },
                    "created_at": "2025-10-14T10:35:48.407692Z",
                },
                {
                    "id": "aud_01KAV9SAZNT7WF64ECRMMY1BSK",
                    "action": "top_up",
                    "actor": "user:alice",
                    "details": {"amount_usd": "25.50"},
                    "created_at": "2025-11-24T16:05:12.309447Z",
                },
            ],
            "next_cursor": None,
        }
    ),
    # GET /admin/audit?target=key_…&action=key.revoke
    "list_audit": OperationExample(
        response={
            "data": [
                {
                    "id": "aud_01KAX14Z0PBPRYHMQ4Z6HYPEBJ",
                    "created_at": "2025-11-25T08:12:44.950318Z",
                    "actor": "user:alice",
                    "action": "key.revoke",
                    "target_type": "key",
                    "target_id": _KEY_ID,
                    "before": {"revoked_at": None, "status": "active"},
                    "after": {"revoked_at": "2025-11-25T08:12:44.950318Z", "status": "revoked"},
                    "details": None,
                    "request_id": "req_01KAX14Z0MA0N67KFPK99YQ6FX",
                    "source": "203.0.113.7",
                }
            ],
            "next_cursor": None,
        }
    ),
    "create_webhook": OperationExample(
        request={
            "url": "https://hooks.acme.example/earmark",
            "event_types": ["key.revoked", "tenant.deactivated"],
            "tenant_id": _TENANT_ID,
        },
        response={**_WEBHOOK, "secret": "whsec_nYlxoAeXnzfg+F1lJm/84zvGj13XUg/iv3rF41cpfBo="},
    ),
    "list_webhooks": OperationExample(response={"data": [_WEBHOOK], "next_cursor": None}),
    "get_webhook": OperationExample(response=_WEBHOOK),
    "update_webhook": OperationExample(
        request={"event_types": ["key.created", "key.revoked", "key.rotated"]},
        response={
            **_WEBHOOK,
            "event_types": ["key.created", "key.revoked", "key.rotated"],
            "updated_at": "2025-11-20T11:47:30.004512Z",
        },
    ),
    "rotate_webhook_secret": OperationExample(
        response={
            **_WEBHOOK,
            "updated_at": "2025-11-26T09:00:02.118730Z",
            "secret": "whsec_iUnAV8ZLrF+DtMa75/tTujZDIuf9UEc7pp5u0t+Jvvs=",
        }
    ),
    "list_webhook_deliveries": OperationExample(
        response={"data": [_DELIVERY], "next_cursor": None}
    ),
    "redeliver_webhook": OperationExample(
        response={
            **_DELIVERY,
            "status": "pending",
            "next_attempt_at": "2025-11-26T09:01:15.220193Z",
        }
    ),
    # GET /admin/usage?group_by=tenant,model&from=2025-11-01T00:00:00Z&to=2025-12-01T00:00:00Z
    "usage_report": OperationExample(
        response={
            "group_by": ["tenant", "model"],
            "start": "2025-11-01T00:00:00Z",
            "end": "2025-12-01T00:00:00Z",
            "data": [
                {
                    "tenant": _TENANT_ID,
                    "model": "gpt-4o-transcribe",
                    "calls": 411,
                    "refused": 1,
                    "audio_seconds": "21904.800",
                    "input_text_tokens": 1840,
                    "input_audio_tokens": 412650,
                    "output_tokens": 96310,
                    "cost_usd": "3.443600000",
                    "tenant_name": "Acme Corp",
                },
                {
                    "tenant": _TENANT_ID,
                    "model": "whisper-1",
                    "calls": 2460,
                    "refused": 11,
                    "audio_seconds": "148067.060",
                    "input_text_tokens": 0,
                    "input_audio_tokens": 0,
                    "output_tokens": 0,
                    "cost_usd": "14.806706000",
                    "tenant_name": "Acme Corp",
                },
            ],
            "totals": {
                "calls": 2871,
                "refused": 12,
                "audio_seconds": "169971.860",
                "input_text_tokens": 1840,
                "input_audio_tokens": 412650,
                "output_tokens": 96310,
                "cost_usd": "18.250306000",
            },
        }
    ),
    "quota": OperationExample(
        response={
            "key_id": _KEY_ID,
            "key_name": _KEY["name"],
            "display_prefix": _ROTATED_KEY["display_prefix"],
            "tenant_id": _TENANT_ID,
            "tenant_name": _TENANT["name"],
            "status": "active",
            "expires_at": _KEY["expires_at"],
            "allowed_models": _KEY["allowed_models"],
            "budgets": [_TENANT_BUDGET, _KEY_BUDGET],
            "rate_limits": _RATE_LIMITS,
            "rate_use": {
                "requests_last_minute": 17,
                "audio_seconds_in_window": 2410.5,
                "in_flight": 1,
            },
            "usage_this_month": {
                "calls": 1318,
                "refused": 4,
                "audio_seconds": "111310.900",
                "input_text_tokens": 1840,
                "input_audio_tokens": 412650,
                "output_tokens": 96310,
                "cost_usd": "12.384210000",
            },
        }
    ),
    "models": OperationExample(
        response={
            "object": "list",
            "data": [
                {"id": "openai/whisper-1", "object": "model", "created": 0, "owned_by": "openai"},
                {
                    "id": "openai/gpt-4o-transcribe",
                    "object": "model",
                    "created": 0,
                    "owned_by": "openai",
                },
            ],
        }
    ),
}
