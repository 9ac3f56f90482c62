"""Tool call ids: Gemini gives none (or its own), OpenAI clients need one per call to answer it with.

A Gemini 3 function call carries a ``thoughtSignature`` that must come back with the call when the
conversation continues (https://ai.google.dev/gemini-api/docs/thought-signatures). OpenAI's format has
no field for it, so it travels inside the id the client echoes: ``call_<24 hex>`` or
``call_<24 hex>__ts__<signature>``.
"""

from __future__ import annotations

import secrets

SEPARATOR = "__ts__"


def new_call_id(signature: str | None = None) -> str:
    """A fresh tool call id, carrying ``signature`` (the part's ``thoughtSignature``) when given."""
    call_id = f"call_{secrets.token_hex(12)}"
    return f"{call_id}{SEPARATOR}{signature}" if signature else call_id


def split_call_id(call_id: str) -> str | None:
    """The thought signature an id made by ``new_call_id`` carries, or None (any other id)."""
    if not call_id.startswith("call_"):
        return None
    _, sep, signature = call_id.partition(SEPARATOR)
    return signature if sep and signature else None
