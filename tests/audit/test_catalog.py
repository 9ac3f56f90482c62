"""The audit app's own catalogs (apps/audit/locale): complete in Russian, compiled, and in step."""

from __future__ import annotations

import gettext as gnu_gettext
from pathlib import Path

import pytest
from django.conf import settings
from django.utils import translation

from apps.audit.actions import ACTIONS
from tests.test_i18n import _messages, parse_po

LOCALE = Path(settings.BASE_DIR) / "apps" / "audit" / "locale"


def test_every_russian_message_is_translated_and_every_action_named():
    messages = _messages(parse_po(LOCALE / "ru" / "LC_MESSAGES" / "django.po"))
    assert [e.msgid for e in messages if not all(e.msgstr.values())] == []
    with translation.override("en"):
        assert {str(label) for label in ACTIONS.values()} <= {e.msgid for e in messages}
    with translation.override("ru"):
        assert translation.gettext("API token blocked automatically (limit reached)") == "API-токен заблокирован автоматически (лимит исчерпан)"


@pytest.mark.parametrize("language", ["ru", "en"])
def test_the_compiled_catalog_matches_the_po(language):
    po, mo = LOCALE / language / "LC_MESSAGES" / "django.po", LOCALE / language / "LC_MESSAGES" / "django.mo"
    with mo.open("rb") as handle:
        catalog = gnu_gettext.GNUTranslations(handle)._catalog  # type: ignore[attr-defined]
    english = parse_po(LOCALE / "en" / "LC_MESSAGES" / "django.po")
    assert {e.key for e in _messages(english)} == {e.key for e in _messages(parse_po(LOCALE / "ru" / "LC_MESSAGES" / "django.po"))}
    stale = [e.msgid for e in _messages(parse_po(po)) if e.msgstr.get(0) and catalog.get(e.msgid) != e.msgstr[0]]
    assert stale == []
