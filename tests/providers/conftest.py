from __future__ import annotations

from tests.fakes.openai_upstream import fake_openai, fake_openai_server  # noqa: F401 - fixtures
