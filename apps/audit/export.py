"""The trail as lines for a SIEM: JSON lines, and syslog messages in RFC 5424's format.

JSON lines: one object per event (``event_dict``), UTF-8, "\\n"-terminated, oldest first — every
field including ``seq``, ``prev_hash`` and ``hash``, so the copy outside can re-check the chain and
anchor it (``audit_verify --anchor``).

Syslog (RFC 5424, section 6): ``<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID [SD] MSG``:
facility 13 ("log audit", section 6.2.1), severity 5 (notice) or 4 (warning, ``actions.WARNING``);
the time in UTC with microseconds; APP-NAME ``jetstream``; MSGID the action; one SD-ELEMENT
``[SD_ID …]`` with the event's keys (values escaped per section 6.3.3); MSG the BOM and the JSON
line. ``SD_ID`` uses 32473, the private enterprise number RFC 5612 reserves for documentation —
a SIEM matches on it; an operator with their own number may replace it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings

from .actions import WARNING
from .chain import format_time
from .models import AuditEvent

FORMATS = ("jsonl", "syslog")
FACILITY_LOG_AUDIT = 13
SEVERITY_NOTICE = 5
SEVERITY_WARNING = 4
APP_NAME = "jetstream"
SD_ID = "audit@32473"
BOM = "\ufeff"


def event_dict(event: AuditEvent) -> dict[str, Any]:
    """An event as plain JSON: ``seq``, ``time`` (ISO 8601 UTC), actor, tenant, action, object,
    ``before`` / ``after``, ``client_ip``, ``request_id``, ``prev_hash``, ``hash``."""
    return {
        "seq": event.seq, "time": format_time(event.occurred_at), "action": event.action,
        "actor": {"id": event.actor_id, "email": event.actor_email, "role": event.actor_role},
        "tenant": {"company_id": event.company_id, "supplier_id": event.supplier_id},
        "object": {"type": event.object_type, "id": event.object_id, "label": event.object_label},
        "before": event.before, "after": event.after, "client_ip": event.client_ip, "request_id": event.request_id,
        "prev_hash": event.prev_hash, "hash": event.hash,
    }


def jsonl_line(event: AuditEvent) -> str:
    """One JSON line (with its "\\n")."""
    return json.dumps(event_dict(event), ensure_ascii=False, separators=(",", ":")) + "\n"


def _printusascii(text: str, limit: int) -> str:
    """``text`` restricted to RFC 5424's PRINTUSASCII (%d33-126) and ``limit`` characters; "-" if empty."""
    kept = "".join(c for c in text if 33 <= ord(c) <= 126)[:limit]
    return kept or "-"


def _sd_name(text: str) -> str:
    return "".join(c for c in _printusascii(text, 32) if c not in '= ]"')


def _sd_value(value: Any) -> str:
    text = "" if value is None else str(value)
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]").replace("\n", " ").replace("\r", " ")


def hostname() -> str:
    """HOSTNAME of the syslog header: the host of ``SITE_URL`` (PRINTUSASCII, at most 255)."""
    return _printusascii(str(urlsplit(str(settings.SITE_URL)).hostname or ""), 255)


def syslog_line(event: AuditEvent, *, host: str | None = None) -> str:
    """One RFC 5424 message (with a "\\n" after it, for newline-framed files and streams)."""
    severity = SEVERITY_WARNING if event.action in WARNING else SEVERITY_NOTICE
    params = {
        "seq": event.seq, "action": event.action, "actorId": event.actor_id or "", "actor": event.actor_email,
        "role": event.actor_role, "company": event.company_id or "", "supplier": event.supplier_id or "",
        "objectType": event.object_type, "objectId": event.object_id, "ip": event.client_ip,
        "requestId": event.request_id, "prevHash": event.prev_hash, "hash": event.hash,
    }
    sd = "[" + _sd_name(SD_ID) + "".join(f' {_sd_name(k)}="{_sd_value(v)}"' for k, v in params.items()) + "]"
    header = (f"<{FACILITY_LOG_AUDIT * 8 + severity}>1 {format_time(event.occurred_at)} {host or hostname()} "
              f"{APP_NAME} - {_printusascii(event.action, 32)}")
    message = json.dumps(event_dict(event), ensure_ascii=False, separators=(",", ":"))
    return f"{header} {sd} {BOM}{message}\n"


def lines(events: Iterable[AuditEvent], fmt: str) -> Iterator[str]:
    """``events`` as lines of ``fmt`` (``jsonl`` or ``syslog``); ``ValueError`` for another format."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    host = hostname()
    for event in events:
        yield jsonl_line(event) if fmt == "jsonl" else syslog_line(event, host=host)
