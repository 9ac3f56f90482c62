"""One view renders the whole page or, for an HTMX request, only the part it swaps."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render


def render_page(request: HttpRequest, template: str, context: dict[str, Any] | None = None, *,
                partial: str | None = None, status: int = 200) -> HttpResponse:
    """Render ``template`` (a full page extending ``base.html``), or ``partial`` when the request
    comes from HTMX (``request.htmx``, django-htmx) and names a target — the filters, pagination and
    inline actions swap only that fragment. Every ``hx-get`` in a template also has an ``href`` so a
    page works without JavaScript."""
    name = partial if partial and getattr(request, "htmx", False) and request.htmx.target else template  # type: ignore[attr-defined]
    return render(request, name, context or {}, status=status)
