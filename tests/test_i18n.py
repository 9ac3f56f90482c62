"""Russian (the default) and English ship: the catalogs are complete, compiled and used by the admin."""

from __future__ import annotations

import gettext as gnu_gettext
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from django.conf import settings
from django.utils import translation

LOCALE = Path(settings.BASE_DIR) / "locale"
RU_PO = LOCALE / "ru" / "LC_MESSAGES" / "django.po"
EN_PO = LOCALE / "en" / "LC_MESSAGES" / "django.po"
RU_PLURAL_FORMS = ("nplurals=3; plural=(n%10==1 && n%100!=11 ? 0 : n%10>=2 && n%10<=4 && "
                   "(n%100<10 || n%100>=20) ? 1 : 2);")


# --- a minimal .po reader (polib is not a dependency) -----------------------------------------

@dataclass
class Entry:
    line: int
    msgid: str = ""
    msgid_plural: str | None = None
    msgctxt: str | None = None
    msgstr: dict[int, str] = field(default_factory=dict)
    flags: set[str] = field(default_factory=set)
    obsolete: bool = False

    @property
    def key(self) -> tuple[str | None, str]:
        return self.msgctxt, self.msgid


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\"}
_KEYWORD = re.compile(r'^(msgctxt|msgid_plural|msgid|msgstr(?:\[(\d+)\])?)\s+(".*")\s*$')


def _unquote(text: str, line: int) -> str:
    text = text.strip()
    if len(text) < 2 or not (text.startswith('"') and text.endswith('"')):
        raise ValueError(f"line {line}: expected a quoted string, got {text!r}")
    try:
        return re.sub(r"\\(.)", lambda m: _ESCAPES[m.group(1)], text[1:-1])
    except KeyError as exc:
        raise ValueError(f"line {line}: unknown escape \\{exc.args[0]}") from None


def parse_po(path: Path) -> list[Entry]:
    """Every entry of a .po file, header included; raises ValueError on a line it cannot read."""
    entries: list[Entry] = []
    entry: Entry | None = None
    target: tuple[str, int | None] | None = None
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line:
            entry, target = None, None
            continue
        if line.startswith("#~"):
            if entry is None:
                entry = Entry(line=number, obsolete=True)
                entries.append(entry)
            entry.obsolete = True
            continue
        if line.startswith("#"):
            if entry is None or entry.msgstr:
                entry, target = Entry(line=number), None
                entries.append(entry)
            if line.startswith("#,"):
                entry.flags.update(flag.strip() for flag in line[2:].split(",") if flag.strip())
            continue
        match = _KEYWORD.match(line)
        if match:
            keyword, index, value = match.groups()
            if entry is None or (keyword in ("msgid", "msgctxt") and entry.msgstr):
                entry = Entry(line=number)
                entries.append(entry)
            text = _unquote(value, number)
            if keyword.startswith("msgstr"):
                target = ("msgstr", int(index) if index is not None else 0)
                entry.msgstr[target[1]] = text
            else:
                target = (keyword, None)
                setattr(entry, keyword, text)
            continue
        if line.startswith('"') and entry is not None and target is not None:
            text = _unquote(line, number)
            if target[0] == "msgstr":
                entry.msgstr[target[1]] += text
            else:
                setattr(entry, target[0], getattr(entry, target[0]) + text)
            continue
        raise ValueError(f"{path.name} line {number}: cannot read {raw!r}")
    return [e for e in entries if not e.obsolete and (e.msgid or e.msgstr)]


def _header(entries: list[Entry]) -> dict[str, str]:
    header = next(e for e in entries if e.msgid == "" and e.msgctxt is None)
    lines = (line.partition(":") for line in header.msgstr[0].splitlines() if ":" in line)
    return {name.strip(): value.strip() for name, _, value in lines}


def _messages(entries: list[Entry]) -> list[Entry]:
    return [e for e in entries if e.msgid]


_PLACEHOLDER = re.compile(r"%\([A-Za-z_][A-Za-z0-9_]*\)[-#0 +]*\d*(?:\.\d+)?[sdirf]|%[sdirf]|\{[A-Za-z_0-9]*\}|%%")
_TAG = re.compile(r"</?[A-Za-z][^>]*>")


def _placeholders(text: str) -> list[str]:
    return sorted(_PLACEHOLDER.findall(text) + _TAG.findall(text))


# --- the parser itself ------------------------------------------------------------------------

def test_it_parses_plurals_contexts_continuations_and_flags(tmp_path):
    po = tmp_path / "x.po"
    po.write_text(
        'msgid ""\nmsgstr ""\n"Language: ru\\n"\n\n'
        '#: a.py:1\n#, fuzzy, python-format\nmsgctxt "ctx"\nmsgid "a %(n)d"\nmsgstr ""\n"b "\n"%(n)d"\n\n'
        '#: a.py:2\nmsgid "one"\nmsgid_plural "many"\nmsgstr[0] "x\\"1"\nmsgstr[1] ""\nmsgstr[2] "z"\n\n'
        '#~ msgid "gone"\n#~ msgstr "old"\n',
        encoding="utf-8")
    header, context, plural = parse_po(po)
    assert _header([header]) == {"Language": "ru"}
    assert (context.msgctxt, context.msgid, context.msgstr, context.flags) == ("ctx", "a %(n)d", {0: "b %(n)d"}, {"fuzzy", "python-format"})
    assert (plural.msgid_plural, plural.msgstr) == ("many", {0: 'x"1', 1: "", 2: "z"})


def test_it_refuses_a_line_it_cannot_read(tmp_path):
    po = tmp_path / "bad.po"
    po.write_text('msgid "a"\nmsgstr b\n', encoding="utf-8")
    with pytest.raises(ValueError, match="line 2"):
        parse_po(po)


# --- the catalogs -----------------------------------------------------------------------------

def test_it_has_a_russian_catalog_with_three_plural_forms():
    header = _header(parse_po(RU_PO))
    assert header["Language"] == "ru"
    assert header["Content-Type"] == "text/plain; charset=UTF-8"
    assert header["Plural-Forms"] == RU_PLURAL_FORMS


def test_it_translates_every_russian_message_and_leaves_none_fuzzy():
    entries = parse_po(RU_PO)
    messages = _messages(entries)
    assert len(messages) > 300  # the catalog really holds the project's strings
    fuzzy = [e.msgid for e in entries if "fuzzy" in e.flags]
    assert fuzzy == [], f"fuzzy entries in {RU_PO}: {fuzzy}"
    untranslated = [e.msgid for e in messages if not e.msgstr or not all(e.msgstr.values())]
    assert untranslated == [], f"untranslated entries in {RU_PO}: {untranslated}"
    wrong_plurals = [e.msgid for e in messages if e.msgid_plural is not None and sorted(e.msgstr) != [0, 1, 2]]
    assert wrong_plurals == [], f"plural entries without exactly three forms: {wrong_plurals}"


def test_it_keeps_every_placeholder_and_tag_in_the_russian_messages():
    broken = []
    for entry in _messages(parse_po(RU_PO)):
        for index, text in entry.msgstr.items():
            source = entry.msgid_plural if entry.msgid_plural is not None and index > 0 else entry.msgid
            if _placeholders(text) != _placeholders(source):
                broken.append((source, text))
            if source.startswith(" ") != text.startswith(" ") or source.endswith("\n") != text.endswith("\n"):
                broken.append((source, text))
    assert broken == []


def test_it_ships_an_english_catalog_with_the_same_messages():
    english, russian = parse_po(EN_PO), parse_po(RU_PO)
    assert _header(english)["Language"] == "en"
    assert {e.key for e in _messages(english)} == {e.key for e in _messages(russian)}
    assert not [e.msgid for e in english if "fuzzy" in e.flags]


@pytest.mark.parametrize("language", ["ru", "en"])
def test_it_commits_a_compiled_catalog_matching_the_po(language):
    """A fresh clone needs no gettext: the .mo is in git and says what the .po says."""
    po, mo = LOCALE / language / "LC_MESSAGES" / "django.po", LOCALE / language / "LC_MESSAGES" / "django.mo"
    assert mo.exists(), f"{mo} is missing: run manage.py compilemessages and commit it"
    with mo.open("rb") as handle:
        catalog = gnu_gettext.GNUTranslations(handle)._catalog  # type: ignore[attr-defined]
    stale = []
    for entry in _messages(parse_po(po)):
        key = entry.msgid if entry.msgctxt is None else f"{entry.msgctxt}\x04{entry.msgid}"
        for index, text in entry.msgstr.items():
            if not text:
                continue  # English: the source text is the translation
            compiled = catalog.get((key, index)) if entry.msgid_plural is not None else catalog.get(key)
            if compiled != text:
                stale.append(entry.msgid)
    assert stale == [], f"{mo} is older than {po}; recompile: {stale}"


# --- what a person sees -------------------------------------------------------------------------

RUSSIAN_BY_APP = {
    # app: (English source, Russian translation) read through the running catalog
    "accounts": [("companies", "компании"), ("Company wallet", "Кошелёк компании"), ("Owner", "Владелец"),
                 ("The credit limit must not be negative.", "Кредитный лимит не может быть отрицательным.")],
    "billing": [("ledger accounts", "счета главной книги"), ("Top-up", "Пополнение"), ("transfers", "проводки"),
                ("amount, micro-RUB", "сумма, мкр. руб.")],
    "providers": [("supplier keys", "ключи поставщиков"), ("Cooling down", "На паузе"),
                  ("input per 1M tokens", "вход за 1 млн токенов")],
    "proxy": [("API tokens", "API-токены"), ("Revoked", "Отозван"), ("Tokens blocked: %(n)d.", "Заблокировано токенов: %(n)d.")],
    "moderation": [("moderation policies", "политики модерации"), ("SNILS", "СНИЛС")],
    "jetstream": [("Russian", "Русский"), ("English", "Английский")],
}


@pytest.mark.parametrize("app", sorted(RUSSIAN_BY_APP))
def test_it_reads_each_apps_strings_from_the_catalog(app):
    for english, russian in RUSSIAN_BY_APP[app]:
        with translation.override("ru"):
            assert translation.gettext(english) == russian
        with translation.override("en"):
            assert translation.gettext(english) == english


def test_it_names_models_and_choices_in_the_active_language():
    from apps.accounts.models import Company
    from apps.billing.models import AccountKind, Transfer
    from apps.moderation.models import Policy
    from apps.providers.models import SupplierKey
    from apps.proxy.models import ApiToken

    with translation.override("ru"):
        names = [str(m._meta.verbose_name_plural) for m in (Company, Transfer, SupplierKey, ApiToken, Policy)]
        wallet = str(AccountKind.COMPANY_WALLET.label)
    assert names == ["компании", "проводки", "ключи поставщиков", "API-токены", "политики модерации"]
    assert wallet == "Кошелёк компании"
    with translation.override("en"):
        assert str(Company._meta.verbose_name_plural) == "companies"


@pytest.mark.parametrize(("n", "expected"), [
    (1, "1 отозванный токен оставлен"), (21, "21 отозванный токен оставлен"), (101, "101 отозванный токен оставлен"),
    (2, "2 отозванных токена оставлены"), (4, "4 отозванных токена оставлены"), (22, "22 отозванных токена оставлены"),
    (5, "5 отозванных токенов оставлены"), (11, "11 отозванных токенов оставлены"), (12, "12 отозванных токенов оставлены"),
    (14, "14 отозванных токенов оставлены"), (111, "111 отозванных токенов оставлены"), (0, "0 отозванных токенов оставлены"),
])
def test_it_picks_the_russian_plural_form(n, expected):
    singular = "%(n)d revoked token was left as it is (revocation is final)."
    plural = "%(n)d revoked tokens were left as they are (revocation is final)."
    with translation.override("ru"):
        assert (translation.ngettext(singular, plural, n) % {"n": n}).startswith(expected + " без изменений")
    with translation.override("en"):
        assert translation.ngettext(singular, plural, n) % {"n": n} == (singular if n == 1 else plural) % {"n": n}


@pytest.fixture
def superadmin_session(client, personas):
    client.force_login(personas.superadmin)  # password + TOTP (tests/conftest.py); the admin needs both
    return client


RUSSIAN_ADMIN = ["Компании", "Подразделения", "Поставщики", "Ключи поставщиков", "Счета главной книги", "Проводки",
                 "API-токены", "Политики модерации", "Пользователи и компании", "Биллинг"]
ENGLISH_ADMIN = ["Companies", "Departments", "Suppliers", "Supplier keys", "Ledger accounts", "Transfers",
                 "API tokens", "Moderation policies", "Users and companies", "Billing"]


def _page(client, url: str, **headers: str) -> str:
    response = client.get(url, **headers)
    assert response.status_code == 200
    return response.content.decode()


def test_it_shows_the_admin_in_russian_when_the_browser_asks_for_it(superadmin_session):
    page = _page(superadmin_session, "/admin/", HTTP_ACCEPT_LANGUAGE="ru")
    assert '<html lang="ru"' in page
    assert [text for text in RUSSIAN_ADMIN if text not in page] == []
    assert [text for text in ENGLISH_ADMIN if f">{text}<" in page] == []


def test_it_shows_the_admin_in_english_when_the_browser_asks_for_it(superadmin_session):
    page = _page(superadmin_session, "/admin/", HTTP_ACCEPT_LANGUAGE="en-US,en;q=0.9")
    assert '<html lang="en"' in page
    assert [text for text in ENGLISH_ADMIN if text not in page] == []
    assert [text for text in RUSSIAN_ADMIN if text in page] == []


def test_it_speaks_russian_when_the_browser_states_no_language(superadmin_session):
    assert settings.LANGUAGE_CODE == "ru"
    page = _page(superadmin_session, "/admin/")
    assert "Компании" in page and ">Companies<" not in page


@pytest.mark.parametrize(("cookie", "browser", "expected", "unexpected"), [
    ("en", "ru", "Companies", "Компании"),
    ("ru", "en", "Компании", ">Companies<"),
])
def test_it_lets_the_language_cookie_win_over_the_browser(superadmin_session, cookie, browser, expected, unexpected):
    superadmin_session.cookies[settings.LANGUAGE_COOKIE_NAME] = cookie
    page = _page(superadmin_session, "/admin/", HTTP_ACCEPT_LANGUAGE=browser)
    assert expected in page and unexpected not in page


def test_it_translates_our_own_admin_columns_and_choices(superadmin_session, personas):
    from apps.billing.models import Account, AccountKind

    Account.objects.create(kind=AccountKind.COMPANY_WALLET, company=personas.company_a, debits_must_not_exceed_credits=True)
    companies = _page(superadmin_session, "/admin/accounts/company/", HTTP_ACCEPT_LANGUAGE="ru")
    assert "Баланс кошелька, руб." in companies and "Коэффициент продажи" in companies
    accounts = _page(superadmin_session, "/admin/billing/account/", HTTP_ACCEPT_LANGUAGE="ru")
    assert "Кошелёк компании" in accounts and "Company wallet" not in accounts
    english = _page(superadmin_session, "/admin/billing/account/", HTTP_ACCEPT_LANGUAGE="en")
    assert "Company wallet" in english and "Кошелёк компании" not in english
