"""Exports a SIEM can read: JSON lines that re-check the chain, and syslog messages in RFC 5424's
shape, checked by a regular expression built from the RFC's ABNF (section 6)."""

from __future__ import annotations

import json
import re
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from apps.audit.chain import GENESIS
from apps.audit.context import acting_as
from apps.audit.models import AuditEvent
from apps.audit.services import record, seal_pending

pytestmark = pytest.mark.django_db

# RFC 5424, section 6 (ABNF), transcribed:
_PRINTUSASCII = r"[\x21-\x7e]"
_SD_NAME = "[" + re.escape("".join(chr(c) for c in range(33, 127) if chr(c) not in '= ]"')) + "]{1,32}"
_PARAM_VALUE = r'(?:[^"\\\]]|\\["\\\]])*'  # '"', '\' and ']' MUST be escaped
_SD_ELEMENT = rf'\[{_SD_NAME}(?: {_SD_NAME}="{_PARAM_VALUE}")*\]'
_TIMESTAMP = r"(?:-|\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?(?:Z|[+-]\d{2}:\d{2}))"
RFC5424 = re.compile(
    r"<(?:19[01]|1[0-8]\d|[1-9]?\d)>"  # PRI: PRIVAL 0..191
    r"[1-9]\d{0,2} "  # VERSION
    rf"{_TIMESTAMP} "
    rf"(?:-|{_PRINTUSASCII}{{1,255}}) "  # HOSTNAME
    rf"(?:-|{_PRINTUSASCII}{{1,48}}) "  # APP-NAME
    rf"(?:-|{_PRINTUSASCII}{{1,128}}) "  # PROCID
    rf"(?:-|{_PRINTUSASCII}{{1,32}}) "  # MSGID
    rf"(?:-|(?:{_SD_ELEMENT})+)"  # STRUCTURED-DATA
    r"(?: \ufeff.*)?",  # MSG-UTF8: BOM UTF-8-STRING
    re.DOTALL,
)
_SD_PARAM = re.compile(rf'({_SD_NAME})="({_PARAM_VALUE})"')


def _export(*args: str) -> list[str]:
    out = StringIO()
    call_command("audit_export", *args, stdout=out)
    return out.getvalue().splitlines()


def _ours(lines: list[str], start: int) -> list[str]:
    """The lines of the events recorded after ``start`` (the fixtures' own events — companies and
    memberships created — come before)."""
    return [line for line in lines if int(re.search(r'seq[=":]+(\d+)', line)[1]) > start]


@pytest.fixture
def trail(personas) -> int:
    """Three events after the personas' own; returns the seq they follow."""
    seal_pending()
    start = AuditEvent.objects.order_by("-seq").values_list("seq", flat=True).first() or 0
    with acting_as(personas.manager_a, client_ip="2001:db8::7"):
        record("token.created", tenant=personas.company_a, object_label='ci "prod"] \\ token\nnext line', after={"rpm": 60})
    record("auth.sign_in_failed", actor_email='odd"]\\name@example.com')
    with acting_as(personas.manager_b):
        record("token.revoked", tenant=personas.company_b, object_label="b-token")
    return start


def test_the_regex_itself_accepts_the_rfcs_examples_and_refuses_broken_lines():
    # RFC 5424, section 6.5, examples 1 and 4 (example 1 with its MSG marked as UTF-8).
    assert RFC5424.fullmatch("<34>1 2003-10-11T22:14:15.003Z mymachine.example.com su - ID47 - \ufeff'su root' failed for lonvick")
    assert RFC5424.fullmatch('<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 '
                             '[exampleSDID@32473 iut="3" eventSource="Application" eventID="1011"][examplePriority@32473 class="high"]')
    for broken in ('<192>1 - - - - - -', '<34>1 2003-10-11 22:14:15Z host app - id -', '<34>1 - h a - m [sd id=x]',
                   '<34>1 - h a - m [id p="un"escaped"]', '<34>1 - h a - m'):
        assert not RFC5424.fullmatch(broken), broken


def test_every_syslog_line_has_rfc_5424s_shape_and_carries_the_event(personas, trail):
    every = _export("--format", "syslog")
    for line in every:
        assert RFC5424.fullmatch(line), line
    created, failed, _revoked = _ours(every, trail)
    assert created.startswith("<109>1 ") and failed.startswith("<108>1 ")  # log audit (13): notice 5, warning 4
    assert " jetstream - token.created [audit@32473 " in created
    params = dict(_SD_PARAM.findall(failed))
    assert params["actor"] == 'odd\\"\\]\\\\name@example.com'  # escaped per section 6.3.3
    assert params["role"] == "anonymous" and params["seq"] == str(trail + 2)
    message = json.loads(created.split(" \ufeff", 1)[1])
    assert message["object"]["label"] == 'ci "prod"] \\ token\nnext line' and message["client_ip"] == "2001:db8::7"
    assert dict(_SD_PARAM.findall(created))["hash"] == message["hash"]


def test_json_lines_parse_and_re_check_the_chain(personas, trail):
    every = [json.loads(line) for line in _export("--format", "jsonl")]
    assert [row["seq"] for row in every] == list(range(1, trail + 4))
    assert every[0]["prev_hash"] == GENESIS
    assert all(b["prev_hash"] == a["hash"] for a, b in zip(every, every[1:], strict=False))
    rows = every[trail:]
    assert rows[0]["actor"] == {"id": personas.manager_a.pk, "email": "manager-a@example.com", "role": "manager"}
    assert rows[0]["tenant"] == {"company_id": personas.company_a.pk, "supplier_id": None}
    assert rows[0]["after"] == {"rpm": 60}


def test_the_export_command_filters_by_company_period_and_action(personas, trail):
    company_b = [json.loads(line) for line in _export("--company", "company-b")]
    assert {row["tenant"]["company_id"] for row in company_b} == {personas.company_b.pk}
    assert company_b[-1]["object"]["label"] == "b-token"
    assert _export("--since", "2000-01-01", "--until", "2000-02-01") == []
    assert len(_export("--since", "2000-01-01T00:00:00+03:00")) == trail + 3
    assert [json.loads(line)["action"] for line in _export("--action", "auth.")] == ["auth.sign_in_failed"]
    for bad in (["--company", "nobody"], ["--since", "yesterday"], ["--since", "2026-02-01", "--until", "2026-01-01"]):
        with pytest.raises(CommandError):
            _export(*bad)
