"""One scrubber for every string an upstream wrote that the gateway shows, stores or logs.

An upstream is not trusted with what it says about itself: its error messages echo the key they were
sent, their own URLs, internal host names, addresses and database DSNs. ``scrub`` removes all of
that from a piece of upstream text before it reaches a client, a usage record or a log line. It
is for upstream *error* text only: a model's answer is relayed as it was generated.

Error ``type`` and ``code`` are not scrubbed but replaced: adapters map them into the gateway's
own closed vocabulary (``apps/providers/adapters/base.py``), never copying the upstream's.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

MASK = "***"
MAX_LENGTH = 500  # characters of scrubbed text kept: enough for a useful message, too short to carry a dump
_MAX_INPUT = 8000  # characters looked at: upstream error text past this never reaches MAX_LENGTH anyway

# Control characters (NUL included: PostgreSQL refuses it in text) become spaces; \t and \n stay.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
# A URL of any scheme (https, postgres, redis, amqp, …), credentials, host, port and path included.
_URL = re.compile(r"(?i)\b[a-z][a-z0-9+.\-]{1,31}://[^\s\"'<>`]*")
# ``user:password@host`` without a scheme.
_USERINFO = re.compile(r"[^\s:@/\"'<>()\[\]]+:[^\s@/\"'<>]+@[A-Za-z0-9.\-\[\]:]+")
# Credentials after an authentication scheme or a key-like label; the label stays so the text still reads.
_AUTH_SCHEME = re.compile(r"(?i)\b(bearer|basic|token|apikey)(\s+)[A-Za-z0-9._~+/=\-]{4,}")
_LABELLED = re.compile(
    r"(?i)\b(api[_-]?key|access[_-]?key|secret|password|passwd|pwd|token|authorization|x-api-key|credentials?)"
    r"([\"']?\s*[:=]\s*[\"']?)[^\s\"',;}]+")
# Key shapes of common providers (OpenAI/Anthropic/DeepSeek ``sk-``, ours ``js-``, Google ``AIza``, …)
# and organisation/project ids that identify the supplier's account.
_KEY_SHAPES = re.compile(
    r"\b(?:(?:sk|js|pk|rk)-[A-Za-z0-9_\-*.]{6,}|AIza[0-9A-Za-z_\-]{20,}"
    r"|(?:xai|gsk|hf|ghp|gho|glpat|key)[-_][A-Za-z0-9_\-]{10,}|org-[A-Za-z0-9]{8,}|proj_[A-Za-z0-9]{8,})")
# Hex or base64 runs of 32+ characters with a digit in them: tokens, hashes, encoded secrets.
_LONG_RUN = re.compile(r"(?<![A-Za-z0-9+/_\-])(?=[A-Za-z+/_\-]*\d)[A-Za-z0-9+/_\-]{32,}={0,2}")
# Host names that only make sense inside someone's network.
_INTERNAL_HOST = re.compile(
    r"(?i)\b(?:[a-z0-9](?:[a-z0-9_\-]*[a-z0-9])?\.)+(?:internal|local|localdomain|svc|lan|intranet|corp|home\.arpa)\b"
    r"(?::\d+)?|\blocalhost\b(?::\d+)?")
# Whatever follows "host"/"hostname"/"server at" is a host name, dotted or bare ("host pgmain", host="db01").
# A few common words are not taken for a name ("the host is down" stays readable).
_AFTER_HOST = re.compile(
    r"(?i)\b(host(?:name)?|server\s+at)(\s*[:=]\s*|\s+)"
    r"(?!(?:is|was|are|and|or|not|the|a|an|to|for|of|in|on|at|be|has|had|header|name|could|did|does)\b)"
    r"([\"']?)[A-Za-z0-9][A-Za-z0-9_.\-]*")
_IPV4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.])(?::\d+)?")
# Candidates only: ``ipaddress`` decides (so "12:30:45" and "a::b" in prose survive unless they are addresses).
_IPV6_CANDIDATE = re.compile(r"(?<![\w:.])\[?[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?:\.\d{1,3}){0,3}(?:%[\w.]+)?\]?(?::\d+)?")


def _ipv6(match: re.Match[str]) -> str:
    text = match.group(0)
    address = text.lstrip("[").split("]")[0].split("%")[0]
    try:
        ipaddress.IPv6Address(address)
    except ValueError:
        return text
    return MASK


def scrub(text: str, secrets: Iterable[str] = (), *, limit: int = MAX_LENGTH) -> str:
    """``text`` (upstream-originated) without anything that says who or where the supplier is.

    Removed, each replaced by ``***``: every string in ``secrets`` (the provider's supplier keys:
    the one used and its siblings), URLs of any scheme, ``user:password@`` credentials, Bearer/Basic
    tokens and ``api_key=…``-style values, common key shapes (``sk-…``, ``js-…``, ``AIza…``, …), hex
    or base64 runs of 32+ characters, internal host names (``*.internal``, ``*.local``, ``*.svc``,
    ``*.cluster.local``, ``localhost``, the name after "host"), IPv4 and IPv6 addresses. Control
    characters become spaces. The result is at most ``limit`` characters. Never raises.
    """
    if isinstance(secrets, str):  # one key passed bare: not its characters one by one
        secrets = (secrets,)
    text = _CONTROL.sub(" ", text[:_MAX_INPUT])
    # Longest first, so a key that contains another is removed whole.
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(secret, MASK)
    text = _URL.sub(MASK, text)
    text = _USERINFO.sub(MASK, text)
    text = _AUTH_SCHEME.sub(lambda m: m.group(1) + m.group(2) + MASK, text)
    text = _LABELLED.sub(lambda m: m.group(1) + m.group(2) + MASK, text)
    text = _KEY_SHAPES.sub(MASK, text)
    text = _LONG_RUN.sub(MASK, text)
    text = _INTERNAL_HOST.sub(MASK, text)
    text = _AFTER_HOST.sub(lambda m: m.group(1) + m.group(2) + m.group(3) + MASK, text)
    text = _IPV6_CANDIDATE.sub(_ipv6, text)  # before IPv4: "::ffff:10.0.0.1" goes whole
    text = _IPV4.sub(MASK, text)
    return text[:limit]
