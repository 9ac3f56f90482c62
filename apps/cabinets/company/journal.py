"""The company's transaction journal: every request, filtered (``billing.filtersets``), paged by
keyset and exported as CSV or XLSX, streamed (``billing.journal``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator

from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIRequest
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.utils import timezone
from django.utils.translation import gettext as _
from django.views.decorators.http import require_GET

from apps.billing.filtersets import UsageRecordFilterSet
from apps.billing.journal import InvalidCursor, csv_chunks, journal_page, xlsx_chunks
from apps.cabinets.access import company_view
from apps.cabinets.rendering import render_page

EXPORTS = {
    "csv": ("text/csv; charset=utf-8", csv_chunks),
    "xlsx": ("application/vnd.openxmlformats-officedocument.spreadsheetml.sheet", xlsx_chunks),
}


def _filters(request: HttpRequest) -> UsageRecordFilterSet:
    return UsageRecordFilterSet(request.GET or None, company=request.company)  # type: ignore[attr-defined]


def _query_without(request: HttpRequest, *names: str) -> str:
    query = request.GET.copy()
    for name in names:
        query.pop(name, None)
    return query.urlencode()


@require_GET
@company_view()
def journal(request: HttpRequest) -> HttpResponse:
    """The journal page: the filter form and one keyset page (``?after=`` the cursor of the page
    before). HTMX swaps only the results for the filters and the pager. Invalid filters answer 400
    with the form's errors and no rows; a cursor that does not decode answers 400 too."""
    filters = _filters(request)
    context = {"filters": filters, "page": None, "query": _query_without(request, "after"),
               "export_query": _query_without(request, "after", "format")}
    status = 200
    if filters.is_bound and not filters.is_valid():
        status = 400
    else:
        try:
            context["page"] = journal_page(filters.qs, after=request.GET.get("after") or None)
        except InvalidCursor:
            context["cursor_error"] = _("This page link is not valid any more. Start again from the newest requests.")
            status = 400
    return render_page(request, "cabinets/company/journal.html", context, partial="cabinets/company/journal_results.html",
                       status=status)


def _streamed(request: HttpRequest, chunks: Iterable[bytes]) -> Iterator[bytes] | AsyncIterator[bytes]:
    """Under ASGI an async iterator that pulls each chunk in the request's sync thread (Django would
    otherwise read a sync iterator to the end before sending a byte); under WSGI the chunks as they are."""
    if not isinstance(request, ASGIRequest):
        return iter(chunks)
    iterator = iter(chunks)
    done = object()
    step = sync_to_async(lambda: next(iterator, done), thread_sensitive=True)
    # Closing the generator ends its read transaction and server-side cursor, in their thread — also
    # when the client leaves half-way.
    close = sync_to_async(getattr(iterator, "close", lambda: None), thread_sensitive=True)

    async def pull() -> AsyncIterator[bytes]:
        try:
            while (chunk := await step()) is not done:
                yield chunk  # type: ignore[misc]
        finally:
            await close()

    return pull()


@require_GET
@company_view()
def journal_export(request: HttpRequest, fmt: str) -> HttpResponse:
    """The filtered journal as ``fmt`` ("csv" or "xlsx"), streamed: the records are read through a
    server-side cursor and sent as they are written. Invalid filters answer 400 (the page with the
    form's errors), never an empty file."""
    filters = _filters(request)
    if filters.is_bound and not filters.is_valid():
        return render_page(request, "cabinets/company/journal.html", {"filters": filters, "page": None,
                                                                      "query": "", "export_query": ""}, status=400)
    content_type, writer = EXPORTS[fmt]
    company = request.company  # type: ignore[attr-defined]
    stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
    response = StreamingHttpResponse(_streamed(request, writer(filters.qs, time_zone=company.time_zone)), content_type=content_type)
    response["Content-Disposition"] = f'attachment; filename="journal-{company.slug}-{stamp}.{fmt}"'
    response["Cache-Control"] = "no-store"
    response["X-Accel-Buffering"] = "no"  # a proxy in front passes the stream on as it comes
    return response
