"""The LLM moderator and the external /v1/moderations layer against a local fake server."""

from __future__ import annotations

import time

import pytest

from apps.moderation.detectors.remote import ExternalModeration, LlmModerator, parse_llm_answer
from apps.moderation.exceptions import RemoteLayerError
from apps.moderation.findings import Category
from apps.moderation.policies import EndpointConfig

from .fake_moderator import FakeModerator


@pytest.fixture
def moderator():
    with FakeModerator() as fake:
        yield fake


def config(fake: FakeModerator, **kwargs) -> EndpointConfig:
    values = {"base_url": fake.base_url, "model": "guard", "api_key": "moderator-key-123", "timeout_seconds": 2.0,
              "internal": True, "prompt": "Decide."}
    return EndpointConfig(**(values | kwargs))


def test_it_asks_the_llm_with_the_policy_prompt_and_reads_allow(moderator):
    assert LlmModerator(config(moderator)).detect("Привет, как дела?") == []
    [request] = moderator.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["body"]["model"] == "guard"
    assert request["body"]["messages"][0] == {"role": "system", "content": "Decide."}
    assert request["body"]["messages"][1]["content"] == "Привет, как дела?"
    assert moderator.headers[0]["Authorization"] == "Bearer moderator-key-123"


def test_a_block_is_one_whole_text_detection_of_its_category(moderator):
    moderator.verdict = 'Verdict: {"action": "block", "category": "secret", "reason": "a key"}'
    [detection] = LlmModerator(config(moderator)).detect("my key is hunter2")
    assert (detection.category, detection.start, detection.end, detection.detector) == (Category.SECRET, 0, 17, "llm")
    moderator.verdict = '{"action": "block", "category": "violence", "reason": "x"}'
    [detection] = LlmModerator(config(moderator)).detect("text")
    assert detection.category == Category.HARMFUL


def test_it_times_out_within_the_limit(moderator):
    moderator.delay = 1.0
    started = time.monotonic()
    with pytest.raises(RemoteLayerError) as caught:
        LlmModerator(config(moderator, timeout_seconds=0.2)).detect("hello")
    assert time.monotonic() - started < 0.9
    assert caught.value.layer == "llm" and "0.2" in caught.value.reason
    assert "moderator-key-123" not in str(caught.value)


def test_a_failing_or_unparsable_answer_is_an_error(moderator):
    moderator.status = 500
    with pytest.raises(RemoteLayerError, match="HTTP 500"):
        LlmModerator(config(moderator)).detect("hello")
    with pytest.raises(RemoteLayerError):
        list(parse_llm_answer({"choices": [{"message": {"content": "I think it is fine"}}]}, "hello"))
    with pytest.raises(RemoteLayerError):
        LlmModerator(config(moderator, base_url="http://127.0.0.1:9/v1")).detect("hello")


def test_the_external_api_flags_harmful_content(moderator):
    external = ExternalModeration(config(moderator, model="omni-moderation-latest"))
    assert external.detect("a calm text") == []
    moderator.flagged = True
    [detection] = external.detect("a violent text")
    assert (detection.category, detection.detector) == (Category.HARMFUL, "external")
    assert moderator.requests[-1]["path"] == "/v1/moderations"
    assert moderator.requests[-1]["body"] == {"input": "a violent text", "model": "omni-moderation-latest"}
