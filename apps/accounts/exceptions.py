"""The accounts app's exception hierarchy: catch ``AccountsError`` for all of them.

Messages are user-visible (the command line and the cabinets show them); they never carry a
secret.
"""

from __future__ import annotations


class AccountsError(Exception):
    """Base class of every error the accounts services raise on purpose."""


class TopUpReductionError(AccountsError):
    """A declared cumulative top-up is lower than what configuration already added."""

    def __init__(self, message: str, *, declared: int, applied: int) -> None:
        self.declared = declared
        self.applied = applied
        super().__init__(message)


class SuperadminEmailTaken(AccountsError):
    """No superuser exists, but the bootstrap e-mail already belongs to an ordinary user."""
