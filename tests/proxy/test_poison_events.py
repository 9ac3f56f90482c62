"""Poison events through the real gateway: what a client or an upstream sends that PostgreSQL cannot
store (a NUL, an integer beyond its column) gets its correct answer, and its usage record lands —
beside every other request's, with the ledger intact and nothing left pending in the stream.

The normalisation itself is tested in tests/billing/test_usage.py, the dead-letter path in
tests/proxy/test_metering.py, and every value PostgreSQL can refuse in tests/billing/test_usage_fuzz.py.
"""

from __future__ import annotations

import redis
from django.conf import settings

from apps.billing import services as ledger
from apps.billing.models import Transfer, UsageRecord
from apps.proxy import redis_scripts
from apps.proxy.metering import DEAD_LETTER_KEY, GROUP
from lib import tokenizer
from tests.proxy.helpers import GOOD, expected_cost, post

INT32 = 2**31 - 1


def served(gateway, n: int) -> None:
    for _ in range(n):
        assert post(gateway, GOOD).status_code == 200


def assert_meter_clean(gateway, *, records: int) -> None:
    """Every request recorded once, no transfer without its record, nothing pending, nothing set aside."""
    gateway.drain(expect=records)
    assert UsageRecord.objects.count() == records
    assert ledger.verify_ledger() == []
    client = redis.Redis.from_url(settings.REDIS_URL)
    assert client.xpending(redis_scripts.STREAM_KEY, GROUP)["pending"] == 0
    assert client.xlen(DEAD_LETTER_KEY) == 0
    client.close()
    charged = {t.metadata["request_id"] for t in Transfer.objects.filter(kind="usage")}
    assert charged == set(UsageRecord.objects.filter(sell_cost__gt=0).values_list("request_id", flat=True))


def test_a_model_name_with_a_nul_byte_gets_its_404_and_its_record_lands(gateway, fake_openai):
    served(gateway, 2)
    response = post(gateway, {**GOOD, "model": "demo\u0000chat"})
    assert response.status_code == 404, response.text
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("model_not_found", "model")
    served(gateway, 2)  # requests behind the poison one are recorded and charged too
    assert_meter_clean(gateway, records=5)
    record = UsageRecord.objects.get(http_status=404)
    assert (record.model_name, record.error_code, record.sell_cost, record.usage_clamped) == (
        "demo\ufffdchat", "model_not_found", 0, False)
    assert UsageRecord.objects.filter(status="ok", sell_cost__gt=0).count() == 4


def test_completion_tokens_beyond_int32_from_an_upstream_are_clamped_flagged_and_recorded(gateway, fake_openai):
    served(gateway, 1)
    huge = {"id": "chatcmpl-x", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 8, "completion_tokens": 2**31, "total_tokens": 2**31 + 8}}
    fake_openai.behavior(response_body=huge)
    completion = gateway.client().chat.completions.create(**GOOD, max_tokens=5)
    assert completion.usage.completion_tokens == 2**31  # the client sees what the upstream said
    fake_openai.reset()
    served(gateway, 1)
    assert_meter_clean(gateway, records=3)
    record = UsageRecord.objects.get(usage_clamped=True)
    assert (record.status, record.input_tokens, record.output_tokens) == ("ok", 8, INT32)
    # The company pays at most its reservation; what the supplier is owed is the pipeline's to say.
    assert record.sell_cost == expected_cost(tokenizer.count_chat_prompt(GOOD["messages"]), 5)
    assert Transfer.objects.get(idempotency_id=f"usage:{record.request_id}:sell").amount == record.sell_cost
    assert UsageRecord.objects.filter(usage_clamped=False, status="ok").count() == 2


def test_a_nul_in_an_upstream_error_code_and_type_is_recorded(gateway, fake_openai):
    served(gateway, 1)
    fake_openai.behavior(status=400, error_body={"error": {"message": "bad\u0000request", "type": "invalid\u0000request",
                                                           "param": None, "code": "bad\u0000code"}})
    response = post(gateway, GOOD)
    assert response.status_code == 400, response.text
    fake_openai.reset()
    served(gateway, 1)
    assert_meter_clean(gateway, records=3)
    record = UsageRecord.objects.get(http_status=400)
    assert record.status == "upstream_error" and record.sell_cost == 0
    assert "\x00" not in record.error_code and "\x00" not in record.error_type
    assert record.error_code  # not silently emptied
