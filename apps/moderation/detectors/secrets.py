"""Secrets: API keys and tokens by their issuers' documented prefixes, private key blocks, JWTs, URLs
with credentials, passwords in assignments, and high-entropy strings assigned to secret-looking names.

Prefix sources: OpenAI (``sk-``, ``sk-proj-``, ``sk-svcacct-``), Anthropic (``sk-ant-api03-``), GitHub
("About authentication to GitHub": ``ghp_ gho_ ghu_ ghs_ ghr_ github_pat_``), AWS (access key ids
``AKIA``/``ASIA``…, IAM user guide), Slack (``xoxb- xoxp- xoxa- xoxr- xoxs-``, webhooks), Google (API keys
``AIza``, OAuth ``ya29.``), Stripe (``sk_live_``…), Yandex Cloud (``AQVN``, ``y0_``, IAM ``t1.``), Telegram
bot tokens, Jetstream's own ``js-`` tokens; RFC 7468 (PEM ``-----BEGIN … PRIVATE KEY-----``), RFC 7519
(JWT), RFC 3986 (``userinfo`` in a URL).

Entropy: Shannon entropy in bits per character of the candidate; a 32-character random base62 key has
about 5 bits, English words about 3. Hex digests (git SHAs, checksums) and UUIDs are not secrets.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections import Counter
from collections.abc import Iterator

from apps.moderation.findings import Category, Detection

NAME = "secret"

_KNOWN = re.compile(
    r"(?:"
    r"sk-ant-(?:api|admin)\d{2}-[A-Za-z0-9_\-]{20,}"
    r"|sk-(?:proj-|svcacct-|admin-|None-)?[A-Za-z0-9_\-]{20,}"
    r"|gh[pousr]_[A-Za-z0-9]{36,255}"
    r"|github_pat_[A-Za-z0-9_]{22,255}"
    r"|(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AROA|ANPA|ANVA|APKA)[0-9A-Z]{16}"
    r"|xox[baprse]-[A-Za-z0-9\-]{10,}"
    r"|AIza[0-9A-Za-z_\-]{35}"
    r"|ya29\.[0-9A-Za-z_\-]{20,}"
    r"|(?:sk|rk|pk)_(?:live|test)_[0-9A-Za-z]{20,}"
    r"|AQVN[A-Za-z0-9_\-]{32,40}"
    r"|y0_[A-Za-z0-9_\-]{40,}"
    r"|t1\.[A-Za-z0-9_\-]+=*\.[A-Za-z0-9_\-]{80,}=*"
    r"|glpat-[A-Za-z0-9_\-]{20,}"
    r"|npm_[A-Za-z0-9]{36}"
    r"|hf_[A-Za-z0-9]{30,}"
    r"|js-[A-Za-z0-9_\-]{32,}"
    r"|\d{8,10}:AA[A-Za-z0-9_\-]{33}"
    r")(?![\w\-])"
    r"|https://hooks\.slack\.com/services/T[A-Z0-9]+/B[A-Z0-9]+/[A-Za-z0-9]+"
)
# Literal parts of ``_KNOWN``: the expression runs only when one of them is in the text (a substring
# test is a few microseconds; a regular expression with an alternation first scans every position).
_KNOWN_PREFIXES = ("sk-", "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_", "AKIA", "ASIA", "ABIA", "ACCA", "AGPA",
                   "AIDA", "AROA", "ANPA", "ANVA", "APKA", "xox", "AIza", "ya29.", "_live_", "_test_", "AQVN", "y0_",
                   "t1.", "glpat-", "npm_", "hf_", "js-", ":AA", "hooks.slack.com")
_PRIVATE_KEY = re.compile(
    r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----(?:[\s\S]{0,8000}?-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----|[A-Za-z0-9+/=\s]*)")
_JWT = re.compile(r"(?<![\w\-])eyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}(?![\w\-])")
_URL_CREDENTIALS = re.compile(r"\b[a-z][a-z0-9+.\-]{1,20}://[^\s:/@]{1,128}:([^\s@/]{1,256})@[^\s/@]{1,253}", re.IGNORECASE)
_ASSIGNMENT = re.compile(
    r"(?:\b|_)(?P<name>pass(?:word|wd)?|pwd|парол[ья]|secret|api[_\-]?key|apikey|access[_\-]?key|private[_\-]?key|"
    r"client[_\-]?secret|auth[_\-]?token|access[_\-]?token|refresh[_\-]?token|token|bearer|credentials?)"
    r"[\"']?\s*(?:[:=]|:=|=>|\s-\s|\sis\s|:\s)\s*(?:Bearer\s+)?[\"'`]?(?P<value>[^\s\"'`,;]{6,200})",
    re.IGNORECASE)
_AUTH_HEADER = re.compile(r"\bAuthorization:\s*(?:Bearer|Basic|Token)\s+(?P<value>[A-Za-z0-9._~+/\-]{12,}=*)", re.IGNORECASE)
_CANDIDATE = re.compile(r"(?<![\w+/=\-])[A-Za-z0-9+/_\-]{32,200}={0,2}(?![\w+/=\-])")
_HEX = re.compile(r"^[0-9a-fA-F]+$")
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_PLACEHOLDER_VALUE = re.compile(r"^(?:\*+|x+|\.{3,}|<[^>]*>|\$\{?\w+\}?|%\(?\w+\)?s?|\{\{?\s*\w+\s*\}?\}|"
                                r"(?:your|my|the)[_\-]?\w*|changeme|example\w*|placeholder|none|null|true|false|"
                                r"os\.environ.*|process\.env.*|\w*getenv.*|settings\.\w+.*|env\(.*|input\(?\)?|\w+\(.*)$",
                                re.IGNORECASE)
_SECRET_NAME_NEAR = re.compile(r"(?:key|secret|token|passw|парол|credential|auth|bearer|private)[\w\"'\]]*\s*[:=]\s*[\"'`]?$",
                               re.IGNORECASE)
_SECRET_WORDS = ("pass", "pwd", "парол", "secret", "key", "token", "bearer", "credential")
ENTROPY_ASSIGNED = 3.0  # bits/char: a value assigned to a secret's name
ENTROPY_BARE = 4.5  # bits/char: a bare random-looking string with no name nearby


def decode_base64_text(value: str) -> str | None:
    """``value`` decoded as base64 into mostly printable UTF-8 text (≥ 90 %), else None: encoded text, not
    a key (a random key's bytes are not text)."""
    try:
        decoded = base64.b64decode(value + "=" * (-len(value) % 4), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    printable = sum(ch.isprintable() or ch.isspace() for ch in decoded)
    return decoded if decoded and printable / len(decoded) > 0.9 else None


def shannon_entropy(value: str) -> float:
    """Shannon entropy of ``value``'s characters, in bits per character (0 for "")."""
    if not value:
        return 0.0
    total = len(value)
    return -sum(n / total * math.log2(n / total) for n in Counter(value).values())


def _looks_random(value: str, threshold: float) -> bool:
    if _UUID.match(value) or (_HEX.match(value) and len(value) in (32, 40, 56, 64, 96, 128)):
        return False
    classes = sum(1 for test in (str.isupper, str.islower, str.isdigit) if any(test(ch) for ch in value))
    return classes >= 2 and shannon_entropy(value) >= threshold


class _Taken:
    """The spans already yielded in one text: a match inside an earlier one is not yielded twice."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.spans: list[tuple[int, int]] = []

    def free(self, start: int, end: int) -> bool:
        return all(end <= s or start >= e for s, e in self.spans)

    def emit(self, start: int, end: int) -> Iterator[Detection]:
        if end > start and self.free(start, end):
            self.spans.append((start, end))
            yield Detection(Category.SECRET, start, end, self.text[start:end], NAME)


class SecretDetector:
    """Secrets (``Category.SECRET``) in one text; see the module docstring. A match inside an earlier
    one (a key inside a private key block) is not yielded twice."""

    name = NAME

    def detect(self, text: str) -> Iterator[Detection]:
        if not text:
            return
        taken = _Taken(text)
        yield from self._structured(text, taken)
        lowered = text.lower()
        if "authorization" in lowered:
            for match in _AUTH_HEADER.finditer(text):
                yield from taken.emit(match.start("value"), match.end("value"))
        if any(word in lowered for word in _SECRET_WORDS):
            yield from self._assignments(text, taken)
        if max(map(len, text.split()), default=0) >= 32:
            yield from self._random_strings(text, taken)

    @staticmethod
    def _structured(text: str, taken: _Taken) -> Iterator[Detection]:
        """Private key blocks, known prefixes, JWTs, URLs with credentials."""
        if "PRIVATE KEY" in text:
            for match in _PRIVATE_KEY.finditer(text):
                yield from taken.emit(match.start(), match.end())
        if any(prefix in text for prefix in _KNOWN_PREFIXES):
            for match in _KNOWN.finditer(text):
                if match.start() and (text[match.start() - 1].isalnum() or text[match.start() - 1] in "_-"):
                    continue
                yield from taken.emit(match.start(), match.end())
        if "eyJ" in text:
            for match in _JWT.finditer(text):
                yield from taken.emit(match.start(), match.end())
        if "://" in text:
            for match in _URL_CREDENTIALS.finditer(text):
                yield from taken.emit(match.start(), match.end())

    @staticmethod
    def _assignments(text: str, taken: _Taken) -> Iterator[Detection]:
        """``password = …`` (any value but a placeholder) and ``api_key: …`` (a random-looking value)."""
        for match in _ASSIGNMENT.finditer(text):
            value = match.group("value").rstrip(".)]}>")
            if _PLACEHOLDER_VALUE.match(value):
                continue
            name = match.group("name").lower()
            is_password = name.startswith(("pass", "pwd", "парол"))
            if is_password or _looks_random(value, ENTROPY_ASSIGNED):
                start = match.start("value")
                yield from taken.emit(start, start + len(value))

    @staticmethod
    def _random_strings(text: str, taken: _Taken) -> Iterator[Detection]:
        """Long random-looking strings: with a secret's name just before them at ``ENTROPY_ASSIGNED``, bare
        at ``ENTROPY_BARE`` and mixed case and digits (a base64 data URL's payload is not a key)."""
        for match in _CANDIDATE.finditer(text):
            value = match.group()
            if not taken.free(match.start(), match.end()):
                continue
            if text[max(0, match.start() - 7):match.start()].endswith("base64,"):
                continue
            near = _SECRET_NAME_NEAR.search(text, max(0, match.start() - 40), match.start()) is not None
            if not near and decode_base64_text(value) is not None:
                continue
            if near and _looks_random(value, ENTROPY_ASSIGNED) or _looks_random(value, ENTROPY_BARE) and _mixed_enough(value):
                yield from taken.emit(match.start(), match.end())


def _mixed_enough(value: str) -> bool:
    """A bare candidate needs upper case, lower case and digits, and no long run of letters (words in
    a path or an identifier such as ``ThisIsAVeryLongJavaClassNameFactory`` are not keys)."""
    if not (any(c.isupper() for c in value) and any(c.islower() for c in value) and any(c.isdigit() for c in value)):
        return False
    return re.search(r"[a-z]{7,}", value) is None and sum(c.isdigit() for c in value) >= 3
