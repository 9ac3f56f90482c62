"""Who is acting, from where: a context variable the audit services read.

A Django request sets it (``middleware.AuditContextMiddleware``: the signed-in user, the TCP peer
address, a request id). Everything else — Celery tasks, the meter writer, the ``/v1`` proxy,
management commands — runs with the default, the system. Code that acts for a person outside a
request (a REST API worker, a script, a test) wraps the call in ``acting_as(user)``.
"""

from __future__ import annotations

import contextlib
import contextvars
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Actor:
    """The context of one unit of work: ``user`` (None for the system; may be a lazy
    ``request.user``, resolved only when an event is recorded), ``client_ip`` ("" when unknown) and
    ``request_id`` ("" outside a request)."""

    user: Any = None
    client_ip: str = ""
    request_id: str = ""

    @property
    def is_system(self) -> bool:
        """True when no person acts (a task, the proxy, the meter)."""
        return self.user is None


SYSTEM = Actor()

_current: contextvars.ContextVar[Actor] = contextvars.ContextVar("jetstream_audit_actor", default=SYSTEM)


def current_actor() -> Actor:
    """The actor of the running code (``SYSTEM`` unless a request or ``acting_as`` set one)."""
    return _current.get()


def new_request_id() -> str:
    """A fresh request id: 32 lowercase hex characters."""
    return uuid.uuid4().hex


@contextlib.contextmanager
def acting_as(user: Any, *, client_ip: str = "", request_id: str = "") -> Iterator[Actor]:
    """Record events inside the block as done by ``user`` (None: the system) from ``client_ip``."""
    token = _current.set(Actor(user=user, client_ip=client_ip, request_id=request_id or new_request_id()))
    try:
        yield _current.get()
    finally:
        _current.reset(token)


def set_actor(actor: Actor) -> contextvars.Token[Actor]:
    """Make ``actor`` current; give the returned token to ``reset_actor`` when the unit of work ends."""
    return _current.set(actor)


def reset_actor(token: contextvars.Token[Actor]) -> None:
    """Undo ``set_actor``."""
    _current.reset(token)
