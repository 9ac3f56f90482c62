"""Small helpers the company cabinet's pages share: the company's time zone for a request, the
gateway's public address and the model a snippet names."""

from __future__ import annotations

import functools
import zoneinfo
from collections.abc import Callable
from typing import Any

from django.http import HttpRequest, HttpResponse
from django.utils import timezone

from apps.providers.models import Model


def in_company_time_zone(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Render (and read typed dates) in the company's time zone — the one its weekly and monthly
    limits roll over in. Goes inside ``company_view``, which sets ``request.company``."""

    @functools.wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        with timezone.override(zoneinfo.ZoneInfo(request.company.time_zone)):  # type: ignore[attr-defined]
            return view(request, *args, **kwargs)

    return wrapper


def gateway_base_url(request: HttpRequest) -> str:
    """The OpenAI-compatible base URL of this gateway as the browser reaches it, e.g.
    ``https://llm.example.com/v1`` (the cabinets and ``/v1`` are served by the same application)."""
    return request.build_absolute_uri("/v1")


def example_model(token: Any) -> str:
    """A chat model the token may call, for its snippets: the first allowed one, else the first
    active chat model not denied, else a placeholder."""
    if token.models_allow:
        return sorted(token.models_allow)[0]
    names = Model.objects.filter(is_active=True, modality="chat").exclude(name__in=token.models_deny).order_by("name")
    return names.values_list("name", flat=True).first() or "MODEL"
