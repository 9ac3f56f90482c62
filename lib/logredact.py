"""A logging filter that masks anything shaped like a credential before it is written."""

from __future__ import annotations

import logging
import re

_PATTERNS = [
    re.compile(r"\bjs-[A-Za-z0-9_\-]{8,}"),  # our API tokens
    re.compile(r"\bsk-[A-Za-z0-9_\-]{8,}"),  # OpenAI/Anthropic/DeepSeek-style keys
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._\-]{8,}"),
    re.compile(r"(?i)((?:api[_-]?key|authorization|x-api-key|secret)[\"']?\s*[:=]\s*[\"']?)[^\s\"',}]{6,}"),
]


def redact(text: str) -> str:
    """``text`` with credential-shaped substrings masked: ``js-``/``sk-`` keys become ``js-***``/``sk-***``,
    and the values after ``Bearer``, ``api_key``, ``authorization``, ``x-api-key`` or ``secret``
    become ``***`` (the label stays)."""
    for pattern in _PATTERNS:
        if pattern.groups:
            text = pattern.sub(lambda m: m.group(1) + "***", text)
        else:
            text = pattern.sub(lambda m: m.group(0)[:3] + "***", text)
    return text


class RedactSecretsFilter(logging.Filter):
    """A logging filter that lets every record through with its message passed through ``redact``."""

    def filter(self, record: logging.LogRecord) -> bool:
        """If ``redact`` changes the formatted message, store the redacted text as ``msg`` (``args``
        cleared: they are merged in already). Always True."""
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True
