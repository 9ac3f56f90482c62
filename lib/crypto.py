"""AES-256-GCM for secrets at rest (supplier keys, egress credentials).

Stored form: ``v1:<key id>:<base64(nonce || ciphertext || tag)>``. The key id picks the
decryption key, so keys rotate by prepending a new one to ``JETSTREAM_ENCRYPTION_KEYS`` and
re-encrypting (``needs_rotation`` finds what an old key still encrypts); old keys keep decrypting until removed. The key id is bound
into the GCM associated data so a blob cannot be replayed under another key id.
"""

from __future__ import annotations

import base64
import binascii
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from django.conf import settings

_VERSION = "v1"


class SecretDecryptionError(Exception):
    """The stored secret cannot be decrypted (unknown key id, tampered blob)."""


def _keys() -> dict[str, bytes]:
    return settings.JETSTREAM_ENCRYPTION_KEYS


def current_key_id() -> str:
    """The id of the key new values are encrypted with: the first of ``JETSTREAM_ENCRYPTION_KEYS``."""
    return next(iter(_keys()))


def encrypt(plaintext: str, *, context: str = "") -> str:
    """``plaintext`` encrypted under the current key → ``v1:<key id>:<base64(nonce || ciphertext || tag)>``.

    ``context`` joins the key id in the GCM associated data: ``decrypt`` needs the same one, so a
    value encrypted for one purpose does not decrypt as another. A fresh 12-byte nonce per call.
    """
    key_id = current_key_id()
    nonce = os.urandom(12)
    blob = AESGCM(_keys()[key_id]).encrypt(nonce, plaintext.encode("utf-8"), f"{key_id}|{context}".encode())
    return f"{_VERSION}:{key_id}:{base64.b64encode(nonce + blob).decode('ascii')}"


def key_id_of(token: str) -> str:
    """The key id a stored value names (nothing is decrypted). Raises ``SecretDecryptionError`` if
    the value does not have three ``:``-separated parts."""
    parts = token.split(":", 2)
    if len(parts) != 3:
        raise SecretDecryptionError("malformed encrypted value")
    return parts[1]


def decrypt(token: str, *, context: str = "") -> str:
    """The plaintext of an ``encrypt`` result, given the ``context`` it was encrypted with.

    Raises ``SecretDecryptionError``: malformed value, unknown format version, a key id not in
    ``JETSTREAM_ENCRYPTION_KEYS``, or failed authentication (tampered blob, another context).
    """
    try:
        version, key_id, encoded = token.split(":", 2)
    except ValueError:
        raise SecretDecryptionError("malformed encrypted value") from None
    if version != _VERSION:
        raise SecretDecryptionError(f"unknown encryption format {version!r}")
    key = _keys().get(key_id)
    if key is None:
        raise SecretDecryptionError(f"encryption key {key_id!r} is not configured")
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise SecretDecryptionError("malformed encrypted value") from None
    if len(raw) < 12 + 16:  # nonce + GCM tag
        raise SecretDecryptionError("malformed encrypted value")
    try:
        plain = AESGCM(key).decrypt(raw[:12], raw[12:], f"{key_id}|{context}".encode())
    except InvalidTag:
        raise SecretDecryptionError("encrypted value failed authentication") from None
    return plain.decode("utf-8")


def needs_rotation(token: str) -> bool:
    """Whether ``token`` is encrypted under a key other than the current one (re-encrypt it).
    Raises ``SecretDecryptionError`` for a malformed value."""
    return key_id_of(token) != current_key_id()
