"""Invoicing's own exception hierarchy: catch ``InvoicingError`` for all of them.

Messages are user-visible (the admin shows them; the cabinets will), so they go through gettext.
Ledger errors (``apps.billing.exceptions.LedgerError``) pass through unchanged.
"""

from __future__ import annotations


class InvoicingError(Exception):
    """Base class of every error the invoicing services raise on purpose."""


class InvalidTopUpAmount(InvoicingError, ValueError):
    """A top-up amount that is not a positive whole number of kopecks (or is too large)."""


class InvalidTopUpState(InvoicingError):
    """The request is not in a state that allows this step (e.g. confirming a cancelled request)."""


class InvalidPeriod(InvoicingError, ValueError):
    """An act's month that has not ended yet, or a malformed year/month."""


class NothingToInvoice(InvoicingError):
    """An act for a month in which the company spent nothing."""


class RequisitesMissing(InvoicingError):
    """The platform's own requisites (``JETSTREAM_SELLER_*``) are not configured."""
