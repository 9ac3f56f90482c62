"""Moderation reports: every finding the policy logged, masked or blocked, recorded off the hot path.

The proxy's moderation stage appends one entry per request with findings to the Redis stream
``REPORT_STREAM`` (``encode_report``: the request id, company, token, time and the items) and counts
each item in the hash ``METRICS_KEY`` (field ``<category>:<action>``, for metrics:
``category_counts``). The meter writer (``manage.py jetstream_meter``) moves the stream into
``ModerationReport`` rows about once a second (``write_report_batch``), idempotently: a row is unique
by (request id, position), so a batch written twice (a writer killed before it deleted the entries)
adds nothing. The report never holds a detected value: each item's ``snippet`` is the text around
it with every detected value replaced by its category's stem (``masked_snippet``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import orjson
from django.db import transaction
from django.db.models import Count, QuerySet

from .findings import Category, Detection
from .report_models import ModerationReport

logger = logging.getLogger("jetstream.moderation")

REPORT_STREAM = "js:moderation:reports"
METRICS_KEY = "js:metrics:moderation"
SNIPPET_CONTEXT = 40  # code points of context on each side of a finding
SNIPPET_MAX = 240  # ModerationReport.snippet's max_length


@dataclass(frozen=True, slots=True)
class ReportItem:
    """One finding acted on: ``action`` log / mask / block, ``direction`` prompt / response,
    ``content_type`` text / image / document, ``snippet`` masked (``masked_snippet``); ``rerouted``:
    the request was sent to a sensitive-data route instead of being blocked."""

    category: str
    detector: str
    action: str
    direction: str
    content_type: str
    snippet: str
    rerouted: bool = False


def masked_snippet(text: str, detections: Sequence[Detection], target: Detection, *, context: int = SNIPPET_CONTEXT) -> str:
    """The text around ``target`` (``context`` code points each side, marked with "…" where cut) with
    every detection in it — ``target`` included — replaced by ``[STEM]`` (``[PHONE]``)."""
    start, end = max(0, target.start - context), min(len(text), target.end + context)
    pieces: list[str] = []
    at = start
    for detection in sorted(detections, key=lambda d: (d.start, -d.end)):
        if detection.end <= at or detection.start >= end:
            continue
        pieces.append(text[at:max(at, detection.start)])
        pieces.append(f"[{detection.category.placeholder_stem}]")
        at = max(at, detection.end)
    if at < end:
        pieces.append(text[at:end])
    body = " ".join("".join(pieces).split())
    snippet = ("…" if start > 0 else "") + body + ("…" if end < len(text) else "")
    return snippet[:SNIPPET_MAX]


def encode_report(*, request_id: str, company_id: int, token_id: int | None, at: float, items: Iterable[ReportItem],
                  sealed_mapping: str = "") -> bytes:
    """One stream entry's payload (JSON): the request, its company and token, ``at`` (Unix seconds),
    the items and, when the policy keeps mappings, the sealed placeholder mapping."""
    return orjson.dumps({"request_id": request_id, "company_id": company_id, "token_id": token_id, "at": at,
                         "items": [asdict(item) for item in items], "sealed_mapping": sealed_mapping})


def metric_fields(items: Iterable[ReportItem]) -> dict[str, int]:
    """``{"<category>:<action>": count}`` for ``items``: the increments of ``METRICS_KEY``."""
    counts: dict[str, int] = {}
    for item in items:
        field = f"{item.category}:{item.action}"
        counts[field] = counts.get(field, 0) + 1
    return counts


def _rows(payload: dict[str, Any]) -> list[ModerationReport]:
    at = datetime.fromtimestamp(float(payload["at"]), tz=UTC)
    rows = []
    for position, item in enumerate(payload.get("items") or []):
        rows.append(ModerationReport(
            request_id=str(payload["request_id"])[:64], position=position, company_id=int(payload["company_id"]),
            token_id=payload.get("token_id"), category=str(item["category"])[:32], detector=str(item["detector"])[:32],
            action=str(item["action"])[:8], direction=str(item["direction"])[:8], content_type=str(item["content_type"])[:16],
            snippet=str(item.get("snippet") or "")[:SNIPPET_MAX], rerouted=bool(item.get("rerouted")), created_at=at,
            sealed_mapping=str(payload.get("sealed_mapping") or "") if position == 0 else ""))
    return rows


def write_report_batch(client, *, count: int = 500) -> int:
    """Move up to ``count`` stream entries into ``ModerationReport`` rows (one transaction), then
    delete them from the stream; return the rows written. ``client`` is a redis-py client. An entry
    that is not a report is logged and dropped; a token deleted meanwhile leaves its rows without one."""
    entries = client.xrange(REPORT_STREAM, count=count)
    if not entries:
        return 0
    rows: list[ModerationReport] = []
    for entry_id, fields in entries:
        try:
            rows.extend(_rows(orjson.loads(fields[b"e"])))
        except (KeyError, TypeError, ValueError, orjson.JSONDecodeError):
            logger.error("moderation report entry %s is malformed; dropping it", entry_id)
    if rows:
        token_model = ModerationReport._meta.get_field("token").related_model  # up the chain: never imported
        known = set(token_model._default_manager.filter(pk__in={r.token_id for r in rows if r.token_id}).values_list("pk", flat=True))
        for row in rows:
            if row.token_id not in known:
                row.token_id = None
        with transaction.atomic():
            ModerationReport.objects.bulk_create(rows, ignore_conflicts=True)
    client.xdel(REPORT_STREAM, *[entry_id for entry_id, _ in entries])
    return len(rows)


def category_counts(client) -> dict[str, dict[str, int]]:
    """Every finding acted on since the counters began, from ``METRICS_KEY``: ``{category: {action: count}}``."""
    counts: dict[str, dict[str, int]] = {}
    for field, value in (client.hgetall(METRICS_KEY) or {}).items():
        category, _, action = (field.decode() if isinstance(field, bytes) else field).partition(":")
        counts.setdefault(category, {})[action] = int(value)
    return counts


def summary(reports: QuerySet[ModerationReport]) -> list[dict[str, Any]]:
    """Per category (most frequent first): its label and how many findings were logged, masked and blocked."""
    table: dict[str, dict[str, Any]] = {}
    for row in reports.values("category", "action").annotate(n=Count("id")):
        entry = table.setdefault(row["category"], {"category": row["category"], "label": ModerationReport(category=row["category"]).category_label,
                                                   "log": 0, "mask": 0, "block": 0, "total": 0})
        entry[row["action"]] = entry.get(row["action"], 0) + row["n"]
        entry["total"] += row["n"]
    return sorted(table.values(), key=lambda e: (-e["total"], e["category"]))


PERIODS = (1, 7, 30, 90)  # days a report page may look back


@dataclass(frozen=True, slots=True)
class ReportFilter:
    """What a moderation report page shows: a category, an action, a direction ("" = any) and the
    last ``days`` days. ``from_query`` reads it from a page's GET parameters, ignoring bad values."""

    category: str = ""
    action: str = ""
    direction: str = ""
    days: int = 30

    @classmethod
    def from_query(cls, query: Any) -> ReportFilter:
        """The filter from a ``QueryDict`` (or any mapping); unknown values fall back to "any" / 30 days."""
        category = query.get("category", "")
        action = query.get("action", "")
        direction = query.get("direction", "")
        try:
            days = int(query.get("days", 30))
        except (TypeError, ValueError):
            days = 30
        return cls(category=category if category in {c.value for c in Category} else "",
                   action=action if action in ("log", "mask", "block") else "",
                   direction=direction if direction in ("prompt", "response") else "",
                   days=days if days in PERIODS else 30)

    def apply(self, reports: QuerySet[ModerationReport], *, now: datetime | None = None) -> QuerySet[ModerationReport]:
        """``reports`` narrowed to this filter (``now``: the clock, for tests)."""
        since = (now or datetime.now(tz=UTC)) - timedelta(days=self.days)
        reports = reports.filter(created_at__gte=since)
        for name in ("category", "action", "direction"):
            if getattr(self, name):
                reports = reports.filter(**{name: getattr(self, name)})
        return reports

    def query(self) -> str:
        """The filter as GET parameters (for pagination links)."""
        return urlencode({k: v for k, v in (("category", self.category), ("action", self.action),
                                             ("direction", self.direction), ("days", self.days)) if v})


def category_choices() -> list[tuple[str, str]]:
    """(value, translated label) of every category, for a filter's select."""
    return [(c.value, c.label) for c in Category]
