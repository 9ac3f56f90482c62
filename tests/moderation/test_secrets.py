"""Secrets by known prefixes, structure and entropy — and the random-looking strings that are not."""

from __future__ import annotations

import pytest

from apps.moderation.detectors.secrets import SecretDetector, shannon_entropy

DETECTOR = SecretDetector()

PEM = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAx3Z9bq1LrS0fGk\nabcDEF123==\n-----END RSA PRIVATE KEY-----"


def values(text: str) -> list[str]:
    return [d.value for d in DETECTOR.detect(text)]


@pytest.mark.parametrize("text,secret", [
    ("OPENAI_API_KEY=sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z", "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z"),
    ("key sk-ant-api03-Zx9Qw2Er7Ty1Ui8Op3As6Df0Gh5Jk4Ll-AAAA", "sk-ant-api03-Zx9Qw2Er7Ty1Ui8Op3As6Df0Gh5Jk4Ll-AAAA"),
    ("token ghp_0123456789abcdefghijABCDEFGHIJ012345", "ghp_0123456789abcdefghijABCDEFGHIJ012345"),
    ("github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuv", "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuv"),
    ("aws_access_key_id = AKIAIOSFODNN7EXAMPLE", "AKIAIOSFODNN7EXAMPLE"),
    ("slack xoxb-123456789012-1234567890123-AbCdEfGhIjKl", "xoxb-123456789012-1234567890123-AbCdEfGhIjKl"),
    ("google AIzaSyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q", "AIzaSyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q"),
    ("gateway js-acme-ci-0123456789abcdef0123456789abcdef", "js-acme-ci-0123456789abcdef0123456789abcdef"),
    ("bot 123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw0", "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw0"),
    (f"here:\n{PEM}\nend", PEM),
    ("jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
     "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"),
    ("DATABASE_URL=postgres://app:s3cr3tP4ss@db.internal:5432/app", "postgres://app:s3cr3tP4ss@db.internal:5432"),
    ('db_password = "hunter2hunter"', "hunter2hunter"),
    ("пароль: Qwerty123!", "Qwerty123!"),
    ("Authorization: Bearer abcDEF123ghiJKL456mno", "abcDEF123ghiJKL456mno"),
    ("client_secret: 'Zx9Qw2Er7Ty1Ui8Op3As6Df'", "Zx9Qw2Er7Ty1Ui8Op3As6Df"),
    ("random blob Xk9vQ2mZ7rT4wL8pN3bY6cF1hJ5dG0sA2eK7", "Xk9vQ2mZ7rT4wL8pN3bY6cF1hJ5dG0sA2eK7"),
])
def test_it_finds(text, secret):
    assert secret in values(text)


@pytest.mark.parametrize("text", [
    "commit 3f786850e387550fdab836ed7e6dc881de23001b fixed it",  # a git SHA
    "sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "request 123e4567-e89b-12d3-a456-426614174000 failed",  # a UUID
    "password: ********",
    'password = os.environ["DB_PASSWORD"]',
    "api_key: ${OPENAI_API_KEY}",
    "token = <your token here>",
    "AbstractSingletonProxyFactoryBeanConfigurationHolder is a Java class",
    "src/components/navigation/SidebarNavigationItemList.tsx",
    "img src='data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=='",
    "the skeleton key- and the sk- prefix alone",
    "Visit https://example.com/path?query=1 for docs",
])
def test_it_leaves_lookalikes_alone(text):
    assert values(text) == []


def test_a_key_inside_a_private_key_block_is_one_finding():
    text = PEM.replace("abcDEF123==", "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z")
    assert values(text) == [text]


def test_entropy_is_in_bits_per_character():
    assert shannon_entropy("") == 0
    assert shannon_entropy("aaaa") == 0
    assert shannon_entropy("abcd") == pytest.approx(2.0)
