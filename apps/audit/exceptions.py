"""The audit trail's own exceptions: catch ``AuditError`` for all of them."""

from __future__ import annotations


class AuditError(Exception):
    """Base class of every error the audit services raise on purpose."""


class UnknownAction(AuditError, ValueError):
    """``record`` was given an action that is not in the documented vocabulary (``apps/audit/actions.py``)."""


class InvalidExportFilter(AuditError, ValueError):
    """An export or listing filter that cannot be applied (an unknown company slug, a naive or reversed period)."""
