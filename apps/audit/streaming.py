"""The export as an HTTP download, streamed in ``seq`` batches (for the cabinets' export links)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from asgiref.sync import sync_to_async
from django.http import StreamingHttpResponse
from django.utils import timezone

from .export import lines
from .services import EventFilter, batch_after, seal_pending

CONTENT_TYPES = {"jsonl": "application/x-ndjson; charset=utf-8", "syslog": "text/plain; charset=utf-8"}
EXTENSIONS = {"jsonl": "jsonl", "syslog": "log"}


async def _stream(filters: EventFilter, fmt: str, size: int) -> AsyncIterator[bytes]:
    after = 0
    while True:
        batch = await sync_to_async(batch_after)(filters, after=after, size=size)
        if not batch:
            return
        yield "".join(lines(batch, fmt)).encode("utf-8")
        after = batch[-1].seq or after  # sealed: batch_after reads only rows with a seq


def export_response(filters: EventFilter, fmt: str, *, name: str, size: int = 1000) -> StreamingHttpResponse:
    """A download of the events matching ``filters`` as ``fmt`` (``jsonl`` / ``syslog``), oldest
    first, named ``jetstream-audit-<name>-<date>.<ext>``; never cached. The body is an async
    iterator of batches, so the ASGI server sends it as it is read instead of buffering it whole.
    ``ValueError`` for an unknown format."""
    if fmt not in CONTENT_TYPES:
        raise ValueError(f"unknown export format {fmt!r}")
    seal_pending()
    response = StreamingHttpResponse(_stream(filters, fmt, size), content_type=CONTENT_TYPES[fmt])
    response["Content-Disposition"] = f'attachment; filename="jetstream-audit-{name}-{timezone.localdate():%Y-%m-%d}.{EXTENSIONS[fmt]}"'
    response["Cache-Control"] = "no-store"
    return response
