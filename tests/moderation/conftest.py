"""The proxy's real gateway (uvicorn on loopback, PostgreSQL, Redis, the fake OpenAI upstream) for the
endpoint tests."""

from tests.fakes.openai_upstream import fake_openai, fake_openai_server  # noqa: F401 - fixtures
from tests.proxy.conftest import gateway, world  # noqa: F401 - fixtures
