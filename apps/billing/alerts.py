"""How alerts leave the gateway: email (Django's mail) and signed webhooks (httpx).

Here, in billing (which imports only ``lib``), so that every layer may raise an alert: the proxy's
reconciliation tells operators, ``apps/notifications`` sends companies' spend alerts. A small
interface on purpose (issue 13 builds notifications further): ``send_email`` and
``send_webhook`` deliver one message or raise ``DeliveryError``; ``notify_operators`` tells the
platform's operators (``JETSTREAM["OPS_ALERT_EMAILS"]`` / ``["OPS_ALERT_WEBHOOK_URL"]``) and never
raises. Nothing here logs a URL, a secret or a signature.

Webhook wire format (what a receiver verifies)::

    POST <url>
    Content-Type: application/json
    X-Jetstream-Delivery: <delivery id>            (the same on every retry: deduplicate on it)
    X-Jetstream-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + raw body)>

Compute the HMAC over the raw body bytes, compare in constant time, and reject a ``t`` far from now.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from typing import Any

import httpx
import orjson
from django.conf import settings
from django.core.mail import send_mail

from lib.ssrf import UnsafeURLError, validate_outbound_url

logger = logging.getLogger("jetstream.alerts")

SIGNATURE_HEADER = "X-Jetstream-Signature"
DELIVERY_HEADER = "X-Jetstream-Delivery"


class DeliveryError(Exception):
    """A message was not delivered; ``str()`` says why without naming the URL or the secret."""


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The ``X-Jetstream-Signature`` value for ``body`` sent at ``timestamp`` (Unix seconds)."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify(secret: str, body: bytes, header: str, *, tolerance: int = 300, now: float | None = None) -> bool:
    """Whether ``header`` is a valid signature of ``body`` made within ``tolerance`` seconds of ``now``."""
    try:
        parts = dict(item.split("=", 1) for item in header.split(","))
        timestamp = int(parts["t"])
    except (ValueError, KeyError):
        return False
    if abs((now or time.time()) - timestamp) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, body, timestamp), f"t={timestamp},v1={parts.get('v1', '')}")


def send_email(recipients: list[str], subject: str, text: str) -> None:
    """Send a plain-text email through Django's mail backend. Raises ``DeliveryError``."""
    if not recipients:
        raise DeliveryError("no recipients")
    try:
        send_mail(subject, text, None, recipients, fail_silently=False)
    except Exception as exc:  # SMTP errors come in many classes; the message may name the server
        raise DeliveryError(f"email: {type(exc).__name__}") from None


def send_webhook(url: str, secret: str, payload: dict[str, Any], *, delivery_id: str) -> None:
    """POST ``payload`` as JSON to ``url``, signed with ``secret``; a 2xx answer is success.
    Redirects are not followed; the timeout is ``JETSTREAM["ALERT_WEBHOOK_TIMEOUT_SECONDS"]``;
    a private address is refused unless ``JETSTREAM["ALERT_WEBHOOK_ALLOW_PRIVATE"]``.
    Raises ``DeliveryError``."""
    conf = settings.JETSTREAM
    try:
        validate_outbound_url(url, internal=conf["ALERT_WEBHOOK_ALLOW_PRIVATE"], subject="webhook")
    except UnsafeURLError as exc:
        raise DeliveryError(f"webhook URL refused: {type(exc).__name__}") from None
    body = orjson.dumps(payload)
    headers = {"Content-Type": "application/json", DELIVERY_HEADER: delivery_id,
               SIGNATURE_HEADER: sign(secret, body, int(time.time()))}
    try:
        response = httpx.post(url, content=body, headers=headers, timeout=conf["ALERT_WEBHOOK_TIMEOUT_SECONDS"],
                              follow_redirects=False)
    except httpx.HTTPError as exc:
        raise DeliveryError(f"webhook: {type(exc).__name__}") from None
    if not 200 <= response.status_code < 300:
        raise DeliveryError(f"webhook: HTTP {response.status_code}")


def notify_operators(*, subject: str, lines: list[str]) -> None:
    """Tell the platform's operators (email and/or webhook as configured); failures are logged, never raised."""
    conf = settings.JETSTREAM
    text = "\n".join(lines)
    if conf["OPS_ALERT_EMAILS"]:
        try:
            send_email(list(conf["OPS_ALERT_EMAILS"]), subject, text)
        except DeliveryError as exc:
            logger.error("operator alert email not sent: %s", exc)
    if conf["OPS_ALERT_WEBHOOK_URL"]:
        try:
            send_webhook(conf["OPS_ALERT_WEBHOOK_URL"], conf["OPS_ALERT_WEBHOOK_SECRET"],
                         {"type": "operator_alert", "subject": subject, "lines": lines}, delivery_id=f"ops-{time.time_ns()}")
        except DeliveryError as exc:
            logger.error("operator alert webhook not sent: %s", exc)
