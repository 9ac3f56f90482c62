"""lib.tokenizer: offline token counting. DB-free."""

from __future__ import annotations

import pytest

from lib import tokenizer

FIXED_STRINGS = [
    "hello world",
    "tiktoken is great!",
    "Привет, как дела? Сегодня в Москве облачно.",
    "def add(a, b):\n    return a + b\n",
    "emoji 🚀🔥 and CJK 你好世界",
    "   leading and trailing spaces   ",
    "<|endoftext|> is plain text here",
]


@pytest.fixture(scope="module")
def encodings():
    import warnings

    with warnings.catch_warnings():  # bpe_openai 0.1.x reads its data with a deprecated importlib call
        warnings.simplefilter("ignore", DeprecationWarning)
        import bpe_openai

    return {name: bpe_openai.get_encoding(name) for name in tokenizer.ENCODINGS}


class TestCountText:
    @pytest.mark.parametrize("encoding", tokenizer.ENCODINGS)
    @pytest.mark.parametrize("text", FIXED_STRINGS)
    def test_it_matches_bpe_openai_for_fixed_strings(self, encodings, encoding, text):
        assert tokenizer.count_text(text, encoding=encoding) == len(encodings[encoding].encode_ordinary(text))

    def test_it_agrees_with_known_token_ids(self, encodings):
        assert encodings["cl100k_base"].encode("hello world") == [15339, 1917]
        assert encodings["cl100k_base"].encode("tiktoken is great!") == [83, 1609, 5963, 374, 2294, 0]
        assert tokenizer.count_text("hello world", encoding="cl100k_base") == 2
        assert tokenizer.count_text("tiktoken is great!", encoding="cl100k_base") == 6
        assert tokenizer.count_text("hello world") == 2  # o200k_base by default

    def test_it_counts_special_token_text_as_ordinary_text(self):
        # A user typing "<|endoftext|>" must not crash the count nor be one magic token.
        assert tokenizer.count_text("<|endoftext|>") > 1

    def test_it_counts_nothing_as_zero(self):
        assert tokenizer.count_text("") == 0
        assert tokenizer.count_text(None) == 0

    def test_it_counts_text_past_the_wrapper_caps(self):
        # bpe_openai's Python wrapper refuses 1M+ characters; the counter must not.
        base = tokenizer.count_text("word " * 1000)
        assert tokenizer.count_text("word " * 250_000) == base + 249_000

    def test_it_refuses_an_unknown_encoding(self):
        with pytest.raises(tokenizer.UnknownEncodingError):
            tokenizer.count_text("x", encoding="p50k_base")


class TestChatPrompt:
    # OpenAI cookbook "How to count tokens with tiktoken": 129 prompt tokens on gpt-4 / gpt-3.5-turbo
    # (cl100k_base) and 124 on gpt-4o / gpt-4o-mini (o200k_base), as the API reports.
    COOKBOOK = [
        {"role": "system", "content": "You are a helpful, pattern-following assistant that translates corporate jargon into plain English."},
        {"role": "system", "name": "example_user", "content": "New synergies will help drive top-line growth."},
        {"role": "system", "name": "example_assistant", "content": "Things working well together will increase revenue."},
        {"role": "system", "name": "example_user",
         "content": "Let's circle back when we have more time to touch base on opportunities for increased leverage."},
        {"role": "system", "name": "example_assistant", "content": "Let's talk later when we're less busy about how to do better."},
        {"role": "user", "content": "This late pivot means we don't have time to boil the ocean for the client deliverable."},
    ]

    def test_it_reproduces_the_openai_cookbook_counts(self):
        assert tokenizer.count_chat_prompt(self.COOKBOOK, encoding="cl100k_base") == 129
        assert tokenizer.count_chat_prompt(self.COOKBOOK, encoding="o200k_base") == 124

    def test_it_follows_the_recipe(self):
        messages = [{"role": "user", "content": "Hello there"}]
        expected = 3 + tokenizer.count_text("user") + tokenizer.count_text("Hello there") + 3
        assert tokenizer.count_chat_prompt(messages) == expected

    def test_it_adds_one_token_per_name(self):
        plain = tokenizer.count_chat_prompt([{"role": "user", "content": "hi"}])
        named = tokenizer.count_chat_prompt([{"role": "user", "name": "bob", "content": "hi"}])
        assert named == plain + tokenizer.count_text("bob") + 1

    def test_it_counts_text_parts_and_images_and_ignores_unknown_parts(self):
        text_only = tokenizer.count_chat_prompt([{"role": "user", "content": "What is on this picture?"}])
        parts = [
            {"type": "text", "text": "What is on this"},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png", "detail": "high"}},
            {"type": "text", "text": " picture?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
            {"type": "something_new", "payload": [1, 2, 3]},
        ]
        counted = tokenizer.count_chat_prompt([{"role": "user", "content": parts}])
        text_tokens = tokenizer.count_text("What is on this") + tokenizer.count_text(" picture?")
        assert counted == text_only - tokenizer.count_text("What is on this picture?") + text_tokens + 2 * tokenizer.IMAGE_PART_TOKENS

    def test_it_counts_tool_calls_and_function_call_arguments_as_text(self):
        arguments = '{"city": "Москва", "days": 3}'
        messages = [
            {"role": "assistant", "content": None,
             "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": arguments}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "+5, cloudy"},
            {"role": "assistant", "content": None, "function_call": {"name": "get_weather", "arguments": arguments}},
        ]
        call = tokenizer.count_text("get_weather") + tokenizer.count_text(arguments)
        expected = (
            3 + (3 + tokenizer.count_text("assistant") + call)
            + (3 + tokenizer.count_text("tool") + tokenizer.count_text("call_1") + tokenizer.count_text("+5, cloudy"))
            + (3 + tokenizer.count_text("assistant") + call)
        )
        assert tokenizer.count_chat_prompt(messages) == expected

    def test_it_counts_tools_on_their_json(self):
        tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
        assert tokenizer.count_tools(tools) == tokenizer.count_text('[{"type":"function","function":{"name":"get_weather","parameters":'
                                                              '{"type":"object","properties":{"city":{"type":"string"}}}}}]')
        assert tokenizer.count_tools(None) == 0
        assert tokenizer.count_tools([]) == 0

    def test_it_counts_a_chat_request_with_tools_and_functions(self):
        messages = [{"role": "user", "content": "weather?"}]
        tools = [{"type": "function", "function": {"name": "get_weather"}}]
        functions = [{"name": "legacy"}]
        body = {"model": "gpt-4o", "messages": messages, "tools": tools, "functions": functions}
        assert tokenizer.count_chat_request(body) == tokenizer.count_chat_prompt(messages) + tokenizer.count_tools(tools) + tokenizer.count_tools(functions)
        # The encoding follows the model unless given.
        cl = tokenizer.count_chat_request(dict(body, model="gpt-4"))
        assert cl == tokenizer.count_chat_request(body, encoding="cl100k_base")


class TestPromptAndEmbeddingInputs:
    @pytest.mark.parametrize("count", [tokenizer.count_prompt_input, tokenizer.count_embedding_input])
    def test_it_counts_every_input_shape(self, count):
        assert count("hello world") == 2
        assert count(["hello world", "hello"]) == 3
        assert count([15339, 1917, 0]) == 3  # a token array counts its length
        assert count([[1, 2], [3, 4, 5]]) == 5
        assert count([]) == 0
        assert count(None) == 0
        assert count(["hello", [1, 2]]) == 1 + 2

    def test_it_uses_cl100k_by_default_for_legacy_inputs(self):
        text = "Привет, мир! Как дела?"
        assert tokenizer.count_prompt_input(text) == tokenizer.count_text(text, encoding="cl100k_base")
        assert tokenizer.count_embedding_input(text, encoding="o200k_base") == tokenizer.count_text(text, encoding="o200k_base")


class TestEncodingForModel:
    @pytest.mark.parametrize("model", [
        "gpt-4o", "gpt-4o-mini-2024-07-18", "chatgpt-4o-latest", "gpt-4.1", "gpt-4.1-nano", "o1", "o1-mini", "o3-mini", "o4-mini",
        "gpt-5", "gpt-5-mini", "GPT-4O", "openai/gpt-4o",
    ])
    def test_it_uses_o200k_for_new_families(self, model):
        assert tokenizer.encoding_for_model(model) == "o200k_base"

    @pytest.mark.parametrize("model", ["gpt-4", "gpt-4-turbo", "gpt-3.5-turbo", "gpt-3.5-turbo-instruct", "text-embedding-3-small",
                                       "deepseek-chat", "", None, 42])
    def test_it_uses_cl100k_otherwise(self, model):
        assert tokenizer.encoding_for_model(model) == "cl100k_base"


def _circular():
    value: list = []
    value.append(value)
    return value


class TestOddInput:
    @pytest.mark.parametrize("value", [
        None, 5, 3.5, True, {"a": 1}, [None, 1, "x"], {1: "non-string key"}, "\ud800lone surrogate", _circular(), object(), b"bytes",
        2**80,
    ])
    def test_it_never_raises(self, value):
        for count in (tokenizer.count_text, tokenizer.count_chat_prompt, tokenizer.count_tools, tokenizer.count_prompt_input,
                      tokenizer.count_embedding_input, tokenizer.count_completion_output, tokenizer.count_chat_request):
            assert count(value) >= 0

    @pytest.mark.parametrize("message", [
        "just a string", None, 7, {"role": "user"}, {"role": "user", "content": None}, {"role": "user", "content": ""},
        {"role": "user", "content": []}, {"role": "user", "content": [None, 5, "bare string part", {"no": "type"}]},
        {"role": "user", "content": {"weird": "object"}}, {"role": "user", "content": [{"type": "text", "text": None}]},
        {"role": "assistant", "tool_calls": "not a list"}, {"role": "assistant", "tool_calls": [None, {"function": "x"}, 3]},
        {"role": "assistant", "function_call": "oops"}, {"role": 5, "name": ["a"], "extra": {"k": [1]}},
    ])
    def test_it_counts_odd_messages_without_raising(self, message):
        assert tokenizer.count_chat_prompt([message]) >= tokenizer.REPLY_PRIMING_TOKENS + tokenizer.TOKENS_PER_MESSAGE

    def test_it_counts_a_non_string_content_as_its_json(self):
        content = {"weird": "object"}
        plain = tokenizer.count_chat_prompt([{"role": "user", "content": ""}])
        assert tokenizer.count_chat_prompt([{"role": "user", "content": content}]) == plain + tokenizer.count_text('{"weird":"object"}')


class TestCompletionOutput:
    def test_it_counts_content_refusal_and_calls(self):
        message = {
            "role": "assistant", "content": "Sure.", "refusal": None,
            "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}],
        }
        assert tokenizer.count_completion_output(message) == tokenizer.count_text("Sure.") + tokenizer.count_text("f") + tokenizer.count_text('{"a":1}')
        assert tokenizer.count_completion_output({"refusal": "I can't help with that."}) == tokenizer.count_text("I can't help with that.")
        assert tokenizer.count_completion_output("plain text") == tokenizer.count_text("plain text")


class TestTruncate:
    TEXT = "Привет, как дела? Hello world, this is a test of truncation. 🚀 done"

    def test_it_keeps_a_prefix_within_the_limit(self):
        full = tokenizer.count_text(self.TEXT)
        for limit in range(0, full + 3):
            cut = tokenizer.truncate_text(self.TEXT, limit)
            assert self.TEXT.startswith(cut)
            assert tokenizer.count_text(cut) <= limit
        assert tokenizer.truncate_text(self.TEXT, full) == self.TEXT
        assert tokenizer.truncate_text(self.TEXT, full - 1) != self.TEXT

    def test_it_cuts_at_exactly_the_limit_on_plain_words(self):
        text = "one two three four five six seven eight"
        assert tokenizer.count_text(tokenizer.truncate_text(text, 5)) == 5
        assert tokenizer.truncate_text(text, 3) == "one two three"
