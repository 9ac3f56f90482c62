"""The providers app's exception hierarchy: catch ``ProvidersError`` for all of them.

Field-level problems are Django ``ValidationError``s keyed by field (as the models raise
them); these are for the rest. Messages are user-visible and never carry a secret (a
supplier key, an egress proxy URL).
"""

from __future__ import annotations


class ProvidersError(Exception):
    """Base class of every error the providers services raise on purpose."""
