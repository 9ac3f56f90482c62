"""lib.scrub: upstream error text without keys, URLs, hosts, addresses or credentials."""

from __future__ import annotations

import pytest

from lib.scrub import MASK, MAX_LENGTH, scrub

# A key with no recognisable shape: only the ``secrets`` argument can catch it.
SHAPELESS = "q7Zt!supplier-key-of-no-known-shape"
SIBLING = "another:key/of.the.same.provider"


@pytest.mark.parametrize(("text", "gone"), [
    (f"key {SHAPELESS} is over quota", SHAPELESS),
    (f"sibling {SIBLING} rejected", SIBLING),
    ("see https://api.supplier.example/v1/chat?key=abc for details", "api.supplier.example"),
    ("dsn postgres://jet:hunter2@pg-main.svc:5432/billing failed", "hunter2"),
    ("dsn postgres://jet:hunter2@pg-main.svc:5432/billing failed", "pg-main.svc"),
    ("cache redis://:pw@cache.cluster.local:6379/0 down", "cache.cluster.local"),
    ("broker amqp://guest@rabbit:5672 unreachable", "rabbit"),
    ("mirror at ftp://files.example.org/x", "files.example.org"),
    ("login admin:s3cret@db.example.com refused", "s3cret"),
    ("via pg-7.prod.internal timed out", "pg-7.prod.internal"),
    ("via ip-10-0-0-1.ec2.internal:8080", "ip-10-0-0-1"),
    ("via router.local", "router.local"),
    ("via llm.default.svc.cluster.local", "llm.default"),
    ("via localhost:11434", "localhost"),
    ("could not connect to host pgmain: refused", "pgmain"),
    ('connection to server at "db01" failed', "db01"),
    ("host=vllm-worker-3 port=8000", "vllm-worker-3"),
    ("peer 10.12.0.5:443 reset", "10.12.0.5"),
    ("peer [fd00::17]:8443 reset", "fd00::17"),
    ("peer ::ffff:10.0.0.1 reset", "10.0.0.1"),
    ("peer 64:ff9b::7f00:1 reset", "7f00"),
    ("peer ::127.0.0.1 reset", "127.0.0.1"),
    ("peer fe80::1%eth0 reset", "fe80"),
    ("Authorization: Bearer abc.def-ghi_jkl", "abc.def-ghi_jkl"),
    ("Basic dXNlcjpwYXNz", "dXNlcjpwYXNz"),
    ("api_key=AKIA1234SECRET next", "AKIA1234SECRET"),
    ('{"password": "hunter2"}', "hunter2"),
    ("Incorrect API key provided: sk-proj-abcdef123456", "abcdef123456"),
    ("Incorrect API key provided: sk-fak*************0123", "sk-fak"),
    ("token js-acme-ci-0123456789abcdef", "0123456789abcdef"),
    ("google AIzaSyA1234567890abcdefghijklmnopqr", "AIzaSyA"),
    ("org org-AbCdEf123456 over its limit", "org-AbCdEf123456"),
    ("digest 0123456789abcdef0123456789abcdef01234567", "0123456789abcdef"),
    ("blob dGhpcyBpcyBhIHNlY3JldCB0b2tlbiB2YWx1ZTEyMw==", "dGhpcyBp"),
])
def test_it_removes_what_identifies_or_authenticates_the_supplier(text, gone):
    cleaned = scrub(text, (SHAPELESS, SIBLING))
    assert gone not in cleaned and MASK in cleaned


@pytest.mark.parametrize("text", [
    "This model's maximum context length is 8192 tokens. However, you requested 9000 tokens.",
    "Unsupported parameter: 'foo' is not supported with this model.",
    "Invalid value for 'temperature': must be <= 2, got 3.5 at 12:30:45.",
    "The model `gpt-4o-mini` does not exist or you do not have access to it.",
    "the host is down; std::vector ratio 1:2:3; version 1.2.3",
])
def test_it_leaves_ordinary_error_text_alone(text):
    assert scrub(text) == text


def test_it_cuts_to_the_limit_after_scrubbing_and_blanks_control_characters():
    assert scrub("a\x00b\x1fc\nd\te") == "a b c\nd\te"
    assert len(scrub("x " * 2000)) == MAX_LENGTH
    key = "k" * 10 + "SECRET"
    assert scrub("y" * 495 + key, (key,)) == "y" * 495 + MASK  # removed whole before the cut, never half


def test_a_bare_string_of_secrets_is_one_secret_not_its_characters():
    assert scrub("the key s3cr3t-value leaked", "s3cr3t-value") == f"the key {MASK} leaked"
    assert scrub("nothing here", ("", )) == "nothing here"
