"""Errors on /v1, in OpenAI's shape: {"error": {"message", "type", "param", "code"}}.

The HTTP status is the one the OpenAI SDK maps to its exception classes (400 BadRequestError,
401 AuthenticationError, 402/409/413/422 APIStatusError, 403 PermissionDeniedError, 404
NotFoundError, 429 RateLimitError, 5xx InternalServerError). Messages never carry an upstream
key or URL.
"""

from __future__ import annotations

import orjson


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers or []

    def body(self) -> bytes:
        return orjson.dumps({"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}})


def bad_request(message: str, *, param: str | None = None, code: str | None = "invalid_request") -> ApiError:
    return ApiError(400, message, param=param, code=code)


def unauthorized(message: str = "Invalid API key. Pass 'Authorization: Bearer js-…' or 'x-api-key'.") -> ApiError:
    return ApiError(401, message, type="authentication_error", code="invalid_api_key")


def forbidden(message: str, *, code: str) -> ApiError:
    return ApiError(403, message, type="permission_error", code=code)


def not_found(message: str, *, code: str = "model_not_found", param: str | None = "model") -> ApiError:
    return ApiError(404, message, code=code, param=param)
