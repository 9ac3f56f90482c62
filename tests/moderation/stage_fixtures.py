"""A moderated gateway for the stage's tests: the proxy tests' world (uvicorn on loopback, real
PostgreSQL and Redis, FakeOpenAI as the upstream, echoing), with a data policy on the token. Not a
conftest (the detectors' tests share the folder): a test module imports the fixtures with
``from tests.moderation.stage_fixtures import *``.

The policy is ``StagePolicy`` (actions per category and direction, and the stage's own attributes);
the scanner is ``regex_scan``: phone numbers and the person names of ``NAMES`` by pattern. Both are
given to the gateway the way the real ones are: the policy through the token snapshot's loader
(``apps.proxy.snapshot.moderation_policy``), the scanner as the stage's ``scan``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from apps.moderation.findings import Action, Category, Direction, Finding, RegexDetector
from tests.fakes.openai_upstream import fake_openai, fake_openai_server  # noqa: F401 - fixtures
from tests.proxy.conftest import Gateway, ServerThread, build_world, flush_gateway_keys, free_port

__all__ = ["NAME", "OTHER_PHONE", "PHONE", "StagePolicy", "app", "fake_openai", "fake_openai_server", "gateway", "policies",
           "regex_scan", "world"]

NAME = "Иван Петров"
PHONE = "+7 912 345-67-89"
OTHER_PHONE = "+7 495 111-22-33"
NAMES = (NAME, "Анна Смирнова", 'Anna "Q" Smith')
DETECTORS = (RegexDetector(Category.PHONE, r"\+7 \d{3} \d{3}-\d{2}-\d{2}", name="pattern"),
             RegexDetector(Category.PERSON, "|".join(NAMES), name="ner"))


@dataclass
class StagePolicy:
    """A data policy as the stage reads it (see ``moderate.StageRules`` for the attributes)."""

    prompt: dict[Category, Action] = field(default_factory=lambda: {Category.PHONE: Action.MASK, Category.PERSON: Action.MASK})
    response: dict[Category, Action] = field(default_factory=dict)
    image_action: str = "scan"
    document_action: str = "scan"
    drop_blocked_images: bool = False
    fail_closed: bool = True
    scan_budget_seconds: float = 20.0
    sensitive_route: str = ""
    keep_mapping: bool = False
    scans_responses: bool = True


def regex_scan(text: str, policy: StagePolicy, direction: Direction, *, content_type: str = "text") -> list[Finding]:
    """Every detection of ``DETECTORS`` with the policy's action for it in ``direction`` (ALLOW when unnamed)."""
    actions = policy.prompt if direction == Direction.PROMPT else policy.response
    return [Finding(d, actions.get(d.category, Action.ALLOW)) for detector in DETECTORS for d in detector.detect(text)]


class Policies:
    """The policy the gateway's tokens get; ``set`` changes it (the snapshots reload)."""

    def __init__(self, gateway: Gateway | None = None) -> None:
        self.current: StagePolicy | None = StagePolicy()
        self.gateway = gateway
        self.app = None  # the gateway's ProxyApp

    def set(self, policy: StagePolicy | None) -> None:
        from apps.proxy.snapshot import bump_config_version

        self.current = policy
        bump_config_version()
        if self.app is not None:
            # The next request loads its token (and so the policy) again, whether or not the poller
            # has seen the new version yet on a loaded machine.
            self.app.snapshots._tokens.clear()
        if self.gateway is not None:
            self.gateway.wait_config()  # routes (a test's model changes) reload on the poller's next round


@pytest.fixture
def policies(monkeypatch) -> Policies:
    policies = Policies()
    monkeypatch.setattr("apps.proxy.snapshot.moderation_policy", lambda company_id, token_id: policies.current)
    return policies


@pytest.fixture
def world(transactional_db, fake_openai):  # noqa: F811
    flush_gateway_keys()
    fake_openai.behavior(echo=True)
    yield build_world(fake_openai)
    flush_gateway_keys()


@pytest.fixture
def app(world, policies):
    from apps.proxy.pipeline.app import ProxyApp

    app = ProxyApp()
    app.moderation.scan = regex_scan
    return app


@pytest.fixture
def gateway(world, app, policies):
    from jetstream.asgi import build_application

    with ServerThread(build_application(app), free_port()) as server:
        gateway = Gateway(world, server)
        policies.gateway = gateway
        policies.app = app
        yield gateway
