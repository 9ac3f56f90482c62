"""lib/crypto.py: AES-256-GCM secrets at rest."""

from __future__ import annotations

import base64
import secrets

import pytest
from django.test import override_settings

from lib import crypto

KEY_1 = secrets.token_bytes(32)
KEY_2 = secrets.token_bytes(32)


@override_settings(JETSTREAM_ENCRYPTION_KEYS={"k1": KEY_1})
def test_it_round_trips_a_secret():
    token = crypto.encrypt("sk-live-ÜNICODE-1234", context="supplier-key")
    assert token.startswith("v1:k1:")
    assert "ÜNICODE" not in token
    assert crypto.decrypt(token, context="supplier-key") == "sk-live-ÜNICODE-1234"
    assert crypto.encrypt("same", context="c") != crypto.encrypt("same", context="c")  # a fresh nonce each time
    assert crypto.key_id_of(token) == "k1" and not crypto.needs_rotation(token)


@override_settings(JETSTREAM_ENCRYPTION_KEYS={"k1": KEY_1})
def test_it_binds_the_context():
    token = crypto.encrypt("secret", context="supplier-key")
    with pytest.raises(crypto.SecretDecryptionError):
        crypto.decrypt(token, context="egress-proxy")


def test_it_decrypts_under_an_old_key_after_rotation():
    with override_settings(JETSTREAM_ENCRYPTION_KEYS={"k1": KEY_1}):
        old = crypto.encrypt("rotate-me", context="c")
    with override_settings(JETSTREAM_ENCRYPTION_KEYS={"k2": KEY_2, "k1": KEY_1}):
        assert crypto.current_key_id() == "k2"
        assert crypto.decrypt(old, context="c") == "rotate-me"
        assert crypto.needs_rotation(old)
        new = crypto.encrypt(crypto.decrypt(old, context="c"), context="c")
        assert crypto.key_id_of(new) == "k2" and not crypto.needs_rotation(new)
    with override_settings(JETSTREAM_ENCRYPTION_KEYS={"k2": KEY_2}):
        assert crypto.decrypt(new, context="c") == "rotate-me"
        with pytest.raises(crypto.SecretDecryptionError, match="not configured"):
            crypto.decrypt(old, context="c")


@override_settings(JETSTREAM_ENCRYPTION_KEYS={"k1": KEY_1, "k2": KEY_1})
def test_it_refuses_a_tampered_blob():
    token = crypto.encrypt("do-not-touch", context="c")
    version, key_id, encoded = token.split(":", 2)
    raw = bytearray(base64.b64decode(encoded))
    for position in (0, 12, len(raw) - 1):  # nonce, ciphertext, tag
        flipped = bytearray(raw)
        flipped[position] ^= 0x01
        with pytest.raises(crypto.SecretDecryptionError, match="authentication"):
            crypto.decrypt(f"{version}:{key_id}:{base64.b64encode(bytes(flipped)).decode()}", context="c")
    # The key id is authenticated too: the same bytes under another id (even with the same key) fail.
    with pytest.raises(crypto.SecretDecryptionError):
        crypto.decrypt(f"{version}:k2:{encoded}", context="c")


@override_settings(JETSTREAM_ENCRYPTION_KEYS={"k1": KEY_1})
def test_it_refuses_malformed_envelopes():
    for token in ("garbage", "v1:k1", "v9:k1:AAAA", "v1:zz:" + base64.b64encode(b"x" * 40).decode()):
        with pytest.raises(crypto.SecretDecryptionError):
            crypto.decrypt(token)


def test_it_refuses_a_malformed_blob_with_its_own_error():
    for token in ("v1:k1:abc", "v1:k1:", "v1:k1:!!!!", "v1:k1:QUFBQUFB"):
        with pytest.raises(crypto.SecretDecryptionError):
            crypto.decrypt(token)
