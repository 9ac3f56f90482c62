"""The policy as the hot path sees it: ``EffectivePolicy`` (frozen, built once per process from a
``Policy`` row) and ``policy_for(company_id, token_id)``, cached per process.

A save or delete of a policy or a moderation endpoint clears this process's cache at once and, on
commit, bumps ``VERSION_KEY`` in Redis (``apps/moderation/signals.py``); every process reads that key
at most every ``POLL_SECONDS`` and drops its cache when it changed, so a policy change reaches every
proxy worker within a second (the proxy's token snapshot works the same way, ``apps/proxy/snapshot.py``).
``MAX_AGE_SECONDS`` is the safety net for changes made behind Django's back.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import redis
from django.conf import settings
from django.db import close_old_connections

from apps.moderation.findings import Action, Category, Direction
from apps.moderation.models import ContentRule, ContentType, FailureMode, Policy, PolicyMode, SensitiveRouting, parse_lines

logger = logging.getLogger(__name__)

VERSION_KEY = "js:moderation:version"
POLL_SECONDS = 0.5
MAX_AGE_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class EndpointConfig:
    """A moderation endpoint as a scan calls it: ``base_url`` the API root, ``api_key`` decrypted ("" for
    none; never logged), ``timeout_seconds`` the policy's time box for one call."""

    base_url: str
    model: str
    api_key: str = field(repr=False)
    timeout_seconds: float
    internal: bool = False
    prompt: str = ""
    on_responses: bool = True


@dataclass(frozen=True, slots=True)
class EffectivePolicy:
    """The policy in force for one company (and token), frozen. ``id`` None: the platform default (off).

    ``actions[direction][category]`` the configured action; ``allow_values`` case-folded values never
    flagged (and their digits-only forms); ``allow_domains`` domains never flagged (``acme.ru`` also covers
    its sub-domains); ``dictionary`` words and ``custom_patterns`` regexes; ``content`` the rule per content
    type; ``llm`` / ``external`` the moderation endpoints (None: that layer is off).
    """

    id: int | None
    company_id: int | None
    token_id: int | None
    mode: str = PolicyMode.OFF
    actions: Mapping[Direction, Mapping[Category, Action]] = field(default_factory=dict)
    use_ner: bool = False
    use_injection_heuristics: bool = False
    allow_values: frozenset[str] = frozenset()
    allow_domains: tuple[str, ...] = ()
    dictionary: tuple[str, ...] = ()
    custom_patterns: tuple[str, ...] = ()
    content: Mapping[str, str] = field(default_factory=dict)
    drop_blocked_images: bool = False
    llm: EndpointConfig | None = None
    external: EndpointConfig | None = None
    fail_closed: bool = True
    scan_budget_seconds: float = 5.0
    sensitive_routing: str = SensitiveRouting.BLOCK
    keep_mapping: bool = False

    @property
    def active(self) -> bool:
        """False for the mode ``off`` (and the platform default): nothing is scanned."""
        return self.mode != PolicyMode.OFF

    def action_for(self, category: Category, direction: Direction) -> Action:
        """The action for ``category`` in ``direction``: ``allow`` when the policy is off or does not name
        it; capped at ``log`` in the monitor mode."""
        if not self.active:
            return Action.ALLOW
        action = self.actions.get(direction, {}).get(category, Action.ALLOW)
        if self.mode == PolicyMode.MONITOR and action.rank > Action.LOG.rank:
            return Action.LOG
        return action

    @property
    def scans_responses(self) -> bool:
        """Whether answers need scanning: the policy acts and some response-side action is not ``allow``."""
        return self.active and any(self.action_for(c, Direction.RESPONSE) != Action.ALLOW for c in Category)

    def content_rule(self, content_type: str) -> ContentRule:
        """``allow`` / ``scan`` / ``block`` for ``text``, ``image`` or ``document`` (``allow`` when off)."""
        if not self.active:
            return ContentRule.ALLOW
        return ContentRule(self.content.get(content_type, ContentRule.SCAN))


DEFAULT_POLICY = EffectivePolicy(id=None, company_id=None, token_id=None)


def comparable_digits(value: str) -> str:
    """The digits of ``value``, a Russian phone's trunk prefix 8 written as the country code 7 (so that
    ``8 (916) …`` and ``+7 916 …`` compare equal)."""
    digits = "".join(ch for ch in value if ch.isdigit())
    if len(digits) == 11 and digits[0] == "8":
        return "7" + digits[1:]
    return digits


def effective_policy(policy: Policy) -> EffectivePolicy:
    """Freeze ``policy`` (a row, its endpoints loaded) into what a scan reads. Decrypts the endpoints'
    API keys (``lib.crypto.SecretDecryptionError`` for a key encrypted under a key no longer configured)."""
    actions: dict[Direction, dict[Category, Action]] = {}
    for direction in Direction:
        actions[direction] = {category: policy.action(category, direction) for category in Category}
    values: set[str] = set()
    domains: list[str] = []
    for entry in parse_lines(policy.allow_list):
        entry = entry.casefold()
        bare = entry.removeprefix("*.").removeprefix("@")
        if "@" not in bare and "." in bare and " " not in bare and not bare.replace(".", "").isdigit():
            domains.append(bare)
        values.add(entry)
        if len(comparable_digits(entry)) >= 5:
            values.add(comparable_digits(entry))
    llm = external = None
    if policy.llm_endpoint_id and policy.llm_endpoint.is_active:
        endpoint = policy.llm_endpoint
        llm = EndpointConfig(base_url=endpoint.base_url, model=endpoint.model, api_key=endpoint.reveal_secret(),
                             timeout_seconds=policy.llm_timeout_ms / 1000, internal=endpoint.internal,
                             prompt=policy.llm_prompt, on_responses=policy.llm_on_responses)
    if policy.external_endpoint_id and policy.external_endpoint.is_active:
        endpoint = policy.external_endpoint
        external = EndpointConfig(base_url=endpoint.base_url, model=endpoint.model, api_key=endpoint.reveal_secret(),
                                  timeout_seconds=policy.external_timeout_ms / 1000, internal=endpoint.internal)
    return EffectivePolicy(
        id=policy.pk, company_id=policy.company_id, token_id=policy.token_id, mode=policy.mode, actions=actions,
        use_ner=policy.use_ner, use_injection_heuristics=policy.use_injection_heuristics,
        allow_values=frozenset(values), allow_domains=tuple(domains), dictionary=tuple(parse_lines(policy.dictionary)),
        custom_patterns=tuple(parse_lines(policy.custom_patterns)),
        content={ContentType.TEXT: policy.content_text, ContentType.IMAGE: policy.content_image,
                 ContentType.DOCUMENT: policy.content_document},
        drop_blocked_images=policy.drop_blocked_images, llm=llm, external=external, fail_closed=policy.on_failure == FailureMode.CLOSED,
        scan_budget_seconds=policy.scan_budget_ms / 1000, sensitive_routing=policy.sensitive_routing,
        keep_mapping=policy.keep_mapping)


def load_policy(company_id: int, token_id: int | None) -> EffectivePolicy:
    """The policy in force for the token (its own override, else its company's, else the default), from
    the database (no cache)."""
    rows = Policy.objects.select_related("llm_endpoint", "external_endpoint")
    row = rows.filter(token_id=token_id).first() if token_id is not None else None
    if row is None:
        row = rows.filter(company_id=company_id, token__isnull=True).first()
    return effective_policy(row) if row is not None else DEFAULT_POLICY


class PolicyCache:
    """``EffectivePolicy`` by ``(company_id, token_id)`` for this process; see the module's docstring."""

    def __init__(self) -> None:
        self._policies: dict[tuple[int, int | None], EffectivePolicy] = {}
        self._lock = threading.Lock()
        self._version: bytes | None = None
        self._checked_at = 0.0
        self._loaded_at = time.monotonic()
        self._redis: redis.Redis | None = None

    def clear(self) -> None:
        """Drop every cached policy (this process)."""
        with self._lock:
            self._policies = {}
            self._loaded_at = time.monotonic()

    def _read_version(self) -> bytes | None:
        if self._redis is None:
            self._redis = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=0.5, socket_connect_timeout=0.5)
        value = self._redis.get(VERSION_KEY)
        return value if isinstance(value, bytes) else None

    def _poll_due(self, now: float) -> bool:
        return now - self._checked_at >= POLL_SECONDS or now - self._loaded_at >= MAX_AGE_SECONDS

    def _poll(self, now: float) -> None:
        self._checked_at = now
        try:
            version = self._read_version()
        except redis.RedisError:
            logger.warning("could not read the moderation policy version; the cache is kept up to %ss", MAX_AGE_SECONDS)
            version = self._version
        if version != self._version or now - self._loaded_at >= MAX_AGE_SECONDS:
            self._version = version
            self.clear()

    def get(self, company_id: int, token_id: int | None) -> EffectivePolicy:
        """The policy in force (sync: may read Redis and PostgreSQL; not on an event loop)."""
        now = time.monotonic()
        if self._poll_due(now):
            self._poll(now)
        key = (company_id, token_id)
        policy = self._policies.get(key)
        if policy is None:
            policy = load_policy(company_id, token_id)
            with self._lock:
                self._policies[key] = policy
        return policy

    async def aget(self, company_id: int, token_id: int | None) -> EffectivePolicy:
        """The policy in force, for the event loop: a cache hit between polls costs a dict lookup; the
        poll and a load run in a worker thread."""
        policy = self._policies.get((company_id, token_id))
        if policy is not None and not self._poll_due(time.monotonic()):
            return policy
        return await asyncio.to_thread(self._get_closing_connection, company_id, token_id)

    def _get_closing_connection(self, company_id: int, token_id: int | None) -> EffectivePolicy:
        close_old_connections()  # the worker thread's connection may have gone stale since its last load
        try:
            return self.get(company_id, token_id)
        finally:
            close_old_connections()


_cache = PolicyCache()


def policy_for(company_id: int, token_id: int | None = None) -> EffectivePolicy:
    """The policy in force for ``token_id`` of ``company_id``: the token's override, else the company's
    policy, else the platform default (off). Cached per process, dropped after any policy save."""
    return _cache.get(company_id, token_id)


async def apolicy_for(company_id: int, token_id: int | None = None) -> EffectivePolicy:
    """``policy_for`` for async code (the proxy): never blocks the event loop."""
    return await _cache.aget(company_id, token_id)


def invalidate_local() -> None:
    """Drop this process's cached policies (the signals call it on every save)."""
    _cache.clear()


def bump_policy_version() -> None:
    """Tell every process to drop its cached policies (called on commit of a policy change)."""
    invalidate_local()
    try:
        client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2)
        client.incr(VERSION_KEY)
        client.close()
    except redis.RedisError:
        logger.exception("could not bump the moderation policy version; processes refresh within %ss", MAX_AGE_SECONDS)
