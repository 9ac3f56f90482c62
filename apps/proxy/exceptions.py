"""The proxy app's exception hierarchy: catch ``ProxyError`` for all of them.

Field-level problems are Django ``ValidationError``s keyed by field (as the models raise
them); these are for the rest. Messages are user-visible and never carry a token secret.
"""

from __future__ import annotations


class ProxyError(Exception):
    """Base class of every error the proxy services raise on purpose."""


class TokenStateError(ProxyError):
    """The token's status does not allow this (a revoked token is final)."""
