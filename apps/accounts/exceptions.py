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


class InvitationError(AccountsError):
    """Base class of the invitation services' refusals (the message is shown to the person)."""


class InvitationNotAllowed(InvitationError):
    """The inviter may not invite to this organisation, or not with this role (a manager inviting an
    owner), or the role is not one of the organisation kind's roles."""


class AlreadyMember(InvitationError):
    """The invited email already belongs to a member of the organisation."""


class InvitationInvalid(InvitationError):
    """No open invitation has this key: it never existed, was accepted, revoked, or has expired."""


class InvitationEmailMismatch(InvitationError):
    """The signed-in user's email is not the one the invitation was sent to."""


class InvitationUserExists(InvitationError):
    """A new-user acceptance for an email that already has an account: sign in and accept instead."""
