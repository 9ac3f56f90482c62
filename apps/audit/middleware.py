"""``AuditContextMiddleware``: the audit actor of a Django request (after authentication)."""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponse

from .context import Actor, new_request_id, reset_actor, set_actor


def client_ip(request: HttpRequest) -> str:
    """The TCP peer address (``REMOTE_ADDR``), normalised; "" when missing or malformed. Client
    headers (``X-Forwarded-For`` …) are never read: see docs/security.md."""
    try:
        return str(ipaddress.ip_address(request.META.get("REMOTE_ADDR", "")))
    except ValueError:
        return ""


class AuditContextMiddleware:
    """Sets the audit actor for the request: ``request.user`` (read lazily, when an event is
    recorded), the peer address and a request id, which the response returns as ``X-Request-ID``
    (an id the client sent is ignored: the trail's ids are the gateway's own). Place it after
    ``AuthenticationMiddleware``."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def _actor(self, request: HttpRequest) -> Actor:
        request.audit_request_id = new_request_id()  # type: ignore[attr-defined]
        return Actor(user=getattr(request, "user", None), client_ip=client_ip(request), request_id=request.audit_request_id)  # type: ignore[attr-defined]

    def __call__(self, request: HttpRequest) -> HttpResponse | Awaitable[HttpResponse]:
        if self.is_async:
            return self.__acall__(request)
        token = set_actor(self._actor(request))
        try:
            response = self.get_response(request)
        finally:
            reset_actor(token)
        response.setdefault("X-Request-ID", request.audit_request_id)  # type: ignore[attr-defined]
        return response

    async def __acall__(self, request: HttpRequest) -> HttpResponse:
        token = set_actor(self._actor(request))
        try:
            response = await self.get_response(request)
        finally:
            reset_actor(token)
        response.setdefault("X-Request-ID", request.audit_request_id)  # type: ignore[attr-defined]
        return response
