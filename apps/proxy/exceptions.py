"""The proxy app's exception hierarchy: catch ``ProxyError`` for all of them.

Field-level problems in services are Django ``ValidationError``s keyed by field (as the models
raise them); these are for the rest. Messages are user-visible and never carry a token secret,
an upstream key or an upstream URL.
"""

from __future__ import annotations

import orjson
from django.utils import translation

from apps.moderation.findings import Category, Direction
from apps.providers.adapters.base import UpstreamFailure

# The header both official SDKs read before their own status rules (openai-python and
# anthropic-sdk-python ``_should_retry``): "false" stops a retry whatever the status.
SHOULD_NOT_RETRY = (b"x-should-retry", b"false")


class ProxyError(Exception):
    """Base class of every error the proxy raises on purpose."""


class TokenStateError(ProxyError):
    """The token's status does not allow this (a revoked token is final)."""


class ApiError(ProxyError):
    """A /v1 refusal, answered in OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``.

    ``status`` is the one the OpenAI SDK maps to its exception classes (400 BadRequestError,
    401 AuthenticationError, 402/409/413/422 APIStatusError, 403 PermissionDeniedError, 404
    NotFoundError, 429 RateLimitError, 5xx InternalServerError); ``headers`` are added to the answer
    (``Retry-After``, rate-limit headers). 499 means the client left (answered as 400 if it can still hear).

    ``retryable=False`` marks a refusal that no retry can cure (a spend limit, the balance, a body
    reused under another request's Idempotency-Key): the answer carries ``x-should-retry: false``,
    which the OpenAI and Anthropic SDKs obey instead of retrying a 409/429 up to ``max_retries`` times.
    """

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", code: str | None = None,  # noqa: A002
                 param: str | None = None, headers: list[tuple[bytes, bytes]] | None = None, retryable: bool = True) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = list(headers or ())  # a copy: the x-should-retry below must not land in the caller's list
        if not retryable:
            self.headers.append(SHOULD_NOT_RETRY)

    def body(self) -> bytes:
        """The error object's JSON."""
        return orjson.dumps({"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}})

    @classmethod
    def from_upstream(cls, failure: UpstreamFailure) -> ApiError:
        """The client's error for an adapter's ``UpstreamFailure``."""
        return cls(failure.status, failure.message, type=failure.type, code=failure.code)


def bad_request(message: str, *, param: str | None = None, code: str | None = "invalid_request") -> ApiError:
    """400 ``invalid_request_error``."""
    return ApiError(400, message, param=param, code=code)


def unauthorized(message: str = "Invalid API key. Pass 'Authorization: Bearer js-…' or 'x-api-key'.") -> ApiError:
    """401 ``authentication_error`` / ``invalid_api_key``."""
    return ApiError(401, message, type="authentication_error", code="invalid_api_key")


def forbidden(message: str, *, code: str) -> ApiError:
    """403 ``permission_error``."""
    return ApiError(403, message, type="permission_error", code=code)


def not_found(message: str, *, code: str = "model_not_found", param: str | None = "model") -> ApiError:
    """404, by default for a model the token cannot see."""
    return ApiError(404, message, code=code, param=param)


def gateway_unavailable(message: str = "The gateway is temporarily unavailable.") -> ApiError:
    """503: a store the gateway needs (Redis) is unreachable."""
    return ApiError(503, message, type="api_error", code="gateway_unavailable")


def gateway_error() -> ApiError:
    """500: a bug or an unexpected state inside the gateway."""
    return ApiError(500, "The gateway failed to process the request.", type="api_error", code="gateway_error")


def moderation_blocked(category: Category, direction: Direction) -> ApiError:
    """400 ``moderation_blocked``: the company's data policy refuses this request (``direction`` prompt)
    or its answer (response). ``code`` is the category (``phone``, ``passport``…); the message names
    the category, never the value. No retry can cure it, so it says ``x-should-retry: false``."""
    with translation.override("en"):
        label = str(category.label)
    where = "request" if direction == Direction.PROMPT else "answer"
    return ApiError(400, f"The {where} was blocked by your company's data policy: it contains {label}.",
                    type="moderation_blocked", code=category.value, retryable=False)


def moderation_unavailable(reason: str) -> ApiError:
    """400 ``moderation_blocked`` / ``moderation_unavailable``: content the policy could not check
    (over its time budget, unreadable, a scanner failure) under a fail-closed policy. ``reason`` is
    the gateway's own short text, never the content."""
    return ApiError(400, f"Your company's data policy could not check this request ({reason}), and it refuses what "
                         "it cannot check.", type="moderation_blocked", code="moderation_unavailable", retryable=False)
