"""The transaction journal: every request of a company, newest first, paged by keyset and exported
as CSV or XLSX without ever holding the export in memory.

Pages (``journal_page``) are keyset pages on ``(started_at, id)`` descending — never ``OFFSET``:
page 10 000 costs what page 1 costs, on the indexes of migration 0011. A page's ``next_cursor`` is
an opaque text (``"<started_at µs since the epoch>_<id>"``) that ``decode_cursor`` reads back.

Exports read the filtered records through a server-side cursor (``QuerySet.iterator``) inside a
read transaction (outside one PostgreSQL would compute the whole result before the first row), in
chunks of ``EXPORT_CHUNK`` rows: ``csv_chunks`` yields CSV text as it goes (the first bytes leave before
the last row is read); ``xlsx_chunks`` writes an openpyxl write-only workbook (rows go to a
temporary file as they come, not to memory) and then yields the file in pieces. Both defuse cells
a spreadsheet would run as formulas. Amounts are micro-rubles in the records; exports show rubles
as exact decimals ("0.001234") beside nothing rounded.

Retention: usage records are never deleted by the gateway (nothing in the code deletes them; the
ledger's transfers point at them by request id), so the journal holds every request since the
start, well past the 90 days promised.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import os
import tempfile
import zoneinfo
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils.translation import gettext as _

from apps.billing.models import UsageRecord, UsageStatus
from lib.money import format_rub
from lib.spreadsheets import spreadsheet_safe

PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
# Rows per FETCH and per piece sent: small enough that the first rows leave at once.
EXPORT_CHUNK = 500
# Excel's sheet holds 1 048 576 rows: the header, the data, and one line saying the rest was cut.
XLSX_MAX_ROWS = 1_048_574

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


class InvalidCursor(ValueError):
    """A page cursor that is not one ``journal_page`` made."""


def encode_cursor(started_at: dt.datetime, pk: int) -> str:
    """The cursor after a row: ``"<µs since the epoch>_<id>"``."""
    delta = started_at - _EPOCH
    micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    return f"{micros}_{pk}"


def decode_cursor(cursor: str) -> tuple[dt.datetime, int]:
    """``(started_at, id)`` from ``encode_cursor``'s text. Raises ``InvalidCursor`` otherwise."""
    micros, sep, pk = cursor.partition("_")
    if not sep or not micros.lstrip("-").isdigit() or not pk.isdigit() or len(cursor) > 40:
        raise InvalidCursor(cursor)
    try:
        return _EPOCH + dt.timedelta(microseconds=int(micros)), int(pk)
    except OverflowError:
        raise InvalidCursor(cursor) from None


#: The columns a journal row carries (``UsageRecord`` fields and the names through its relations).
ROW_FIELDS = ("id", "request_id", "started_at", "token_id", "token__name", "department__name", "model_name", "model__name",
              "provider__name", "provider__slug", "endpoint", "stream", "input_tokens", "output_tokens", "cached_tokens", "sell_cost",
              "status", "http_status", "latency_ms", "ttft_ms", "error_type", "error_code")


@dataclass(frozen=True)
class JournalPage:
    """One page: ``rows`` (dicts of ``ROW_FIELDS``, newest first), ``next_cursor`` (None on the last
    page) and whether it is the first page."""

    rows: list[dict[str, Any]]
    next_cursor: str | None
    first: bool


def newest_first(queryset: QuerySet[UsageRecord]) -> QuerySet[UsageRecord]:
    """``queryset`` in the journal's order, ``(started_at, id)`` descending."""
    return queryset.order_by("-started_at", "-id")


def journal_page(queryset: QuerySet[UsageRecord], *, after: str | None = None, size: int = PAGE_SIZE) -> JournalPage:
    """The page of ``queryset`` (already filtered and scoped) after the cursor ``after`` (None: the
    newest), ``size`` rows (1 … ``MAX_PAGE_SIZE``). One query of ``size + 1`` rows. Raises
    ``InvalidCursor`` for a cursor that does not decode."""
    size = max(1, min(size, MAX_PAGE_SIZE))
    if after:
        started_at, pk = decode_cursor(after)
        # The row comparison (started_at, id) < (t, pk), written so the index range starts at t.
        queryset = queryset.filter(Q(started_at__lt=started_at) | Q(started_at=started_at, id__lt=pk), started_at__lte=started_at)
    rows = list(newest_first(queryset).values(*ROW_FIELDS)[: size + 1])
    more = len(rows) > size
    rows = rows[:size]
    next_cursor = encode_cursor(rows[-1]["started_at"], rows[-1]["id"]) if more else None
    return JournalPage(rows, next_cursor, first=not after)


# --- export ------------------------------------------------------------------------------------

_EXPORT_FIELDS = ("request_id", "started_at", "token__name", "department__name", "model_name", "provider__name", "provider__slug",
                  "endpoint",
                  "stream", "input_tokens", "output_tokens", "cached_tokens", "sell_cost", "status", "http_status",
                  "latency_ms", "ttft_ms", "error_type", "error_code")


def export_header() -> list[str]:
    """The export's column titles, in the active language."""
    return [_("Request id"), _("Time"), _("Token"), _("Department"), _("Model"), _("Provider"), _("Endpoint"), _("Streaming"),
            _("Input tokens"), _("Output tokens"), _("Cached input tokens"), _("Cost, RUB"), _("Status"), _("HTTP status"),
            _("Latency, ms"), _("Time to first token, ms"), _("Error type"), _("Error code")]


def export_rows(queryset: QuerySet[UsageRecord], *, time_zone: str, limit: int | None = None) -> Iterator[list[Any]]:
    """The filtered records, newest first, as export rows (``export_header``'s columns): times on
    ``time_zone``'s wall clock (ISO 8601 with the offset), cost in rubles as exact decimal text,
    text cells formula-safe. Read through a server-side cursor ``EXPORT_CHUNK`` rows at a time;
    at most ``limit`` rows."""
    tz = zoneinfo.ZoneInfo(time_zone)
    statuses = dict(UsageStatus.choices)
    rows = newest_first(queryset).values_list(*_EXPORT_FIELDS)
    if limit is not None:
        rows = rows[:limit]
    # Inside a transaction the server-side cursor streams; in autocommit Django declares it WITH HOLD,
    # and PostgreSQL computes the whole result before the first row comes back.
    with transaction.atomic():
        yield from _export_rows(rows, tz, statuses)


def _export_rows(rows: Any, tz: zoneinfo.ZoneInfo, statuses: dict[str, Any]) -> Iterator[list[Any]]:
    for (request_id, started_at, token, department, model, provider, provider_slug, endpoint, stream, tokens_in, tokens_out,
         cached, cost, status, http_status, latency, ttft, error_type, error_code) in rows.iterator(chunk_size=EXPORT_CHUNK):
        yield [request_id, started_at.astimezone(tz).isoformat(timespec="milliseconds"), spreadsheet_safe(token or ""),
               spreadsheet_safe(department or ""), spreadsheet_safe(model), provider or provider_slug or "", endpoint, stream, tokens_in,
               tokens_out, cached, format_rub(cost, 2, exact=True), str(statuses.get(status, status)), http_status, latency,
               "" if ttft is None else ttft, spreadsheet_safe(error_type), spreadsheet_safe(error_code)]


def csv_chunks(queryset: QuerySet[UsageRecord], *, time_zone: str) -> Iterator[bytes]:
    """The export as UTF-8 CSV (with a byte-order mark, so Excel reads Cyrillic), in pieces of
    about ``EXPORT_CHUNK`` rows; the header leaves at once."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(export_header())
    yield ("\ufeff" + buffer.getvalue()).encode()
    buffer.seek(0)
    buffer.truncate()
    count = 0
    for row in export_rows(queryset, time_zone=time_zone):
        writer.writerow(["true" if v is True else "false" if v is False else v for v in row])
        count += 1
        if count % EXPORT_CHUNK == 0:
            yield buffer.getvalue().encode()
            buffer.seek(0)
            buffer.truncate()
    if buffer.tell():
        yield buffer.getvalue().encode()


def xlsx_chunks(queryset: QuerySet[UsageRecord], *, time_zone: str, piece: int = 64 * 1024) -> Iterator[bytes]:
    """The export as an XLSX workbook (openpyxl write-only: rows stream to a temporary file, never to
    memory), then yielded in ``piece``-byte pieces; the file is removed afterwards. At most
    ``XLSX_MAX_ROWS`` rows (Excel's limit): past it a last line says the rest was cut and to use CSV."""
    from openpyxl import Workbook

    workbook = Workbook(write_only=True)
    sheet = workbook.create_sheet(_("Journal"))
    sheet.append(export_header())
    count = 0
    for row in export_rows(queryset, time_zone=time_zone, limit=XLSX_MAX_ROWS + 1):
        if count == XLSX_MAX_ROWS:
            sheet.append([_("More rows than a sheet holds: the rest is cut. Narrow the filters or export CSV.")])
            break
        sheet.append(row)
        count += 1
    handle, path = tempfile.mkstemp(prefix="jetstream-journal-", suffix=".xlsx")
    os.close(handle)
    try:
        workbook.save(path)
        with open(path, "rb") as saved:
            while block := saved.read(piece):
                yield block
    finally:
        os.unlink(path)
