"""Declarative configuration: one YAML file describes suppliers, providers (with supplier keys),
models and prices, FX rates and companies (departments, top-ups, tokens); ``apply_config``
brings the database to it. The schema is documented in docs/configuration.md.

Nothing is written until the whole file has passed three checks, each reporting every problem
with its place (``companies[0].tokens[0].limits.total: …``):

1. YAML → Python. Errors name the line and column but never quote the line (it may hold a
   secret); a key given twice in one mapping is an error.
2. Shape (``parse``): every key known, every value of its type, money as exact decimals (a
   YAML float is refused), no duplicate slugs or names, departments in tree order.
3. A dry pass over the services (``dry_run=True``): references resolved against the file and
   the database, model validation (SSRF checks, token secrets, CIDRs, …). Its outcomes are
   the plan that ``--dry-run`` prints.

Then the same pass runs for real inside one ``transaction.atomic()``: any error rolls the
whole file back. The services are the single place of every rule; this module only maps the
file onto them. Objects are never deleted by configuration; omitted optional settings return
to their defaults, except statuses, which are kept when omitted.
"""

from __future__ import annotations

import json
import re
import zoneinfo
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import yaml
from django.contrib.auth import get_user_model
from django.core.exceptions import NON_FIELD_ERRORS, ValidationError
from django.core.validators import validate_slug
from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_noop

from apps.accounts import services as accounts
from apps.accounts.exceptions import AccountsError, ConfigError
from apps.accounts.models import Department, Supplier, validate_time_zone
from apps.billing.exceptions import LedgerError
from apps.billing.models import FxRate
from apps.providers import services as providers
from apps.providers.exceptions import ProvidersError
from apps.providers.models import Currency, EgressProxy, Modality, Model, Provider, ProviderKind, SupplierKeyStatus
from apps.proxy import services as tokens
from apps.proxy.exceptions import ProxyError
from apps.proxy.models import ApiToken, TokenEnvironment, TokenStatus, hash_token, validate_cidr, validate_token_secret
from lib.money import MoneyFormatError, format_rub, micro_to_decimal, to_coefficient, to_micro

Problems = list[tuple[str, str]]


class Invalid(Exception):
    """Problems found while reading the file's shape (internal to this module)."""

    def __init__(self, problems: Problems) -> None:
        self.problems = problems
        super().__init__(problems)

    @classmethod
    def at(cls, place: str, message: str) -> Invalid:
        return cls([(place, message)])


# --- step 1: YAML --------------------------------------------------------------------------

class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (YAML would keep the last)."""


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> dict:
    seen: set = set()
    for key_node, _value in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in seen
        except TypeError:
            continue  # an unhashable key; construct_mapping reports it
        if duplicate:
            raise yaml.constructor.ConstructorError(None, None, f"the key {key!r} appears twice in one mapping", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=True)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml(text: str) -> Any:
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = _("line %(line)d, column %(column)d") % {"line": mark.line + 1, "column": mark.column + 1} if mark else ""
        what = "; ".join(part for part in (exc.context, exc.problem) if part)
        raise ConfigError([("", _("not valid YAML: %(where)s: %(what)s") % {"where": where, "what": what})]) from None
    except yaml.YAMLError:
        raise ConfigError([("", _("not valid YAML"))]) from None


# --- step 2: shape -------------------------------------------------------------------------

Parser = Callable[[Any, str], Any]


@dataclass(frozen=True)
class Key:
    parse: Parser
    required: bool = False


def _join(place: str, key: str) -> str:
    return f"{place}.{key}" if place else key


_VALUE_KINDS = (  # bool before int: a YAML boolean is an int to Python
    (type(None), gettext_noop("nothing (null)")),
    (bool, gettext_noop("a boolean (YAML reads yes/no/on/off/true/false as booleans; quote it)")),
    (int, gettext_noop("a number")),
    (float, gettext_noop("a decimal number")),
    (str, gettext_noop("a string")),
    (list, gettext_noop("a list")),
    (dict, gettext_noop("a mapping")),
    (date, gettext_noop("a date")),
)


def _describe(value: Any) -> str:
    return next((_(label) for kind, label in _VALUE_KINDS if isinstance(value, kind)), type(value).__name__)


def _show(value: Any) -> str:
    """Quote a (never secret) value for a message, shortened."""
    text = json.dumps(value if isinstance(value, str | int) else str(value), ensure_ascii=False)
    return text if len(text) <= 60 else text[:56] + '…"'


def mapping(schema: dict[str, Key]) -> Parser:
    def parse(value: Any, place: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise Invalid.at(place, _("expected a mapping, got %(what)s") % {"what": _describe(value)})
        problems: Problems = []
        for key in value:
            if key not in schema:
                problems.append((_join(place, str(key)), _("unknown key; expected one of: %(keys)s") % {"keys": ", ".join(schema)}))
        result: dict[str, Any] = {}
        for key, spec in schema.items():
            if value.get(key) is None:
                if spec.required:
                    problems.append((_join(place, key), _("is required")))
                continue
            try:
                result[key] = spec.parse(value[key], _join(place, key))
            except Invalid as exc:
                problems.extend(exc.problems)
        if problems:
            raise Invalid(problems)
        return result
    return parse


def list_of(item: Parser) -> Parser:
    def parse(value: Any, place: str) -> list[Any]:
        if not isinstance(value, list):
            raise Invalid.at(place, _("expected a list, got %(what)s") % {"what": _describe(value)})
        problems: Problems = []
        result = []
        for index, element in enumerate(value):
            try:
                result.append(item(element, f"{place}[{index}]"))
            except Invalid as exc:
                problems.extend(exc.problems)
        if problems:
            raise Invalid(problems)
        return result
    return parse


def text(value: Any, place: str) -> str:
    if not isinstance(value, str):
        raise Invalid.at(place, _("expected a string, got %(what)s") % {"what": _describe(value)})
    if not value.strip():
        raise Invalid.at(place, _("must not be empty"))
    return value


def secret(value: Any, place: str) -> str:
    """Like ``text``; named apart so no message ever quotes it."""
    return text(value, place)


def slug(value: Any, place: str) -> str:
    value = text(value, place)
    try:
        validate_slug(value)
    except ValidationError:
        raise Invalid.at(place, _("%(value)s is not a slug (letters, digits, '-' and '_')") % {"value": _show(value)}) from None
    return value


def boolean(value: Any, place: str) -> bool:
    if not isinstance(value, bool):
        raise Invalid.at(place, _("expected true or false, got %(what)s") % {"what": _describe(value)})
    return value


def integer(*, minimum: int | None = None) -> Parser:
    def parse(value: Any, place: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise Invalid.at(place, _("expected a whole number, got %(what)s") % {"what": _describe(value)})
        if minimum is not None and value < minimum:
            raise Invalid.at(place, _("must be at least %(minimum)d") % {"minimum": minimum})
        return value
    return parse


def choice(values: list[str]) -> Parser:
    def parse(value: Any, place: str) -> str:
        if not isinstance(value, str) or value not in values:
            raise Invalid.at(place, _("%(value)s is not one of: %(choices)s") % {"value": _show(value), "choices": ", ".join(values)})
        return value
    return parse


_AMOUNT = re.compile(r"-?[0-9]+(\.[0-9]+)?")
_MAX_MICRO = 2**63 - 1  # a PostgreSQL bigint


def _float_hint(value: float, place: str, what: str) -> Invalid:
    return Invalid.at(place, _('%(value)s is a YAML float; write the %(what)s as a quoted string, e.g. "%(value)s" '
                               "(floats cannot hold money exactly)") % {"value": value, "what": what})


def amount(*, allow_zero: bool = True) -> Parser:
    """An exact decimal (a string, or a whole number) → integer micro-units (lib.money.to_micro)."""
    def parse(value: Any, place: str) -> int:
        if isinstance(value, float):
            raise _float_hint(value, place, _("amount"))
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise Invalid.at(place, _('expected an amount such as "100.00", got %(what)s') % {"what": _describe(value)})
        if isinstance(value, str) and not _AMOUNT.fullmatch(value.strip()):
            raise Invalid.at(place, _('%(value)s is not an amount (write it like "100.00")') % {"value": _show(value)})
        try:
            micro = to_micro(value, field=place, allow_zero=allow_zero)
        except MoneyFormatError as exc:
            raise Invalid.at(place, str(exc).removeprefix(f"{place}: ")) from None
        if micro > _MAX_MICRO:
            raise Invalid.at(place, _("%(value)s is too large") % {"value": _show(value)})
        return micro
    return parse


def coefficient(value: Any, place: str):
    if isinstance(value, float):
        raise _float_hint(value, place, _("coefficient"))
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise Invalid.at(place, _('expected a coefficient such as "1.25", got %(what)s') % {"what": _describe(value)})
    try:
        return to_coefficient(value, field=place)
    except MoneyFormatError as exc:
        raise Invalid.at(place, str(exc).removeprefix(f"{place}: ")) from None


def _validated(validator: Callable[[str], None]) -> Parser:
    """A string checked by the model's own validator."""
    def parse(value: Any, place: str) -> str:
        value = text(value, place)
        try:
            validator(value)
        except ValidationError as exc:
            raise Invalid.at(place, " ".join(exc.messages)) from None
        return value
    return parse


def options(value: Any, place: str) -> dict[str, Any]:
    if not isinstance(value, dict) or not all(isinstance(key, str) for key in value):
        raise Invalid.at(place, _("expected a mapping with string keys, got %(what)s") % {"what": _describe(value)})
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        raise Invalid.at(place, _("options may hold only strings, numbers, booleans, lists and mappings (quote dates)")) from None
    return value


def date_time(value: Any, place: str) -> datetime:
    """ISO 8601 date and time; without an offset it is read in the company's time zone."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError:
            value = None
    if not isinstance(value, datetime):
        raise Invalid.at(place, _("expected a date and time such as 2026-12-31T23:59:59+03:00"))
    return value


def email(value: Any, place: str) -> str:
    return text(value, place).strip().lower()


_PRICE = mapping({
    "input_per_1m": Key(amount(), required=True),
    "output_per_1m": Key(amount(), required=True),
    "cached_input_per_1m": Key(amount()),
    "currency": Key(choice(Currency.values), required=True),
})
_SUPPLIER_KEY = mapping({
    "name": Key(text, required=True),
    "supplier": Key(slug, required=True),
    "secret": Key(secret, required=True),
    "weight": Key(integer(minimum=1)),
    "priority": Key(integer()),
    "status": Key(choice(SupplierKeyStatus.values)),
    "buy_coefficient": Key(coefficient),
})
_LIMITS = mapping({
    "total": Key(amount()),
    "weekly": Key(amount()),
    "monthly": Key(amount()),
    "rpm": Key(integer(minimum=1)),
    "tpm": Key(integer(minimum=1)),
})
_TOKEN = mapping({
    "name": Key(text, required=True),
    "department": Key(slug),
    "secret": Key(_validated(validate_token_secret)),
    "limits": Key(_LIMITS),
    "models_allow": Key(list_of(text)),
    "models_deny": Key(list_of(text)),
    "ip_allow": Key(list_of(_validated(validate_cidr))),
    "max_distinct_ips": Key(integer(minimum=1)),
    "expires_at": Key(date_time),
    "environment": Key(choice(TokenEnvironment.values)),
    "status": Key(choice(TokenStatus.values)),
    "owner": Key(email),
})
_DEPARTMENT = mapping({
    "slug": Key(slug, required=True),
    "name": Key(text, required=True),
    "parent": Key(slug),
    "monthly_budget": Key(amount()),
})
SCHEMA = mapping({
    "egress": Key(list_of(mapping({
        "slug": Key(slug, required=True),
        "country": Key(text, required=True),
        "url": Key(secret, required=True),
        "internal": Key(boolean),
    }))),
    "suppliers": Key(list_of(mapping({
        "slug": Key(slug, required=True),
        "name": Key(text, required=True),
    }))),
    "providers": Key(list_of(mapping({
        "slug": Key(slug, required=True),
        "kind": Key(choice(ProviderKind.values), required=True),
        "name": Key(text),
        "base_url": Key(text),
        "internal": Key(boolean),
        "options": Key(options),
        "egress": Key(slug),
        "keys": Key(list_of(_SUPPLIER_KEY)),
    }))),
    "models": Key(list_of(mapping({
        "name": Key(text, required=True),
        "provider": Key(slug, required=True),
        "upstream_model": Key(text),
        "modality": Key(choice(Modality.values)),
        "context_window": Key(integer(minimum=1)),
        "max_output_tokens": Key(integer(minimum=1)),
        "price": Key(_PRICE),
    }))),
    "fx": Key(list_of(mapping({
        "currency": Key(choice([c for c in Currency.values if c != Currency.RUB]), required=True),
        "rub": Key(amount(allow_zero=False), required=True),
    }))),
    "companies": Key(list_of(mapping({
        "slug": Key(slug, required=True),
        "name": Key(text, required=True),
        "time_zone": Key(_validated(validate_time_zone)),
        "sell_coefficient": Key(coefficient),
        "credit_limit": Key(amount()),
        "top_up": Key(amount()),
        "departments": Key(list_of(_DEPARTMENT)),
        "tokens": Key(list_of(_TOKEN)),
    }))),
})


@dataclass
class Entry:
    """One object the file declares: its label for the report, its place, its parsed keys."""

    label: str
    place: str
    values: dict[str, Any]
    parent: str = ""  # the provider of a key, the company of a department or token


@dataclass
class Config:
    egress: list[Entry] = field(default_factory=list)
    suppliers: list[Entry] = field(default_factory=list)
    providers: list[Entry] = field(default_factory=list)
    keys: list[Entry] = field(default_factory=list)
    models: list[Entry] = field(default_factory=list)
    fx: list[Entry] = field(default_factory=list)
    companies: list[Entry] = field(default_factory=list)
    departments: list[Entry] = field(default_factory=list)
    tokens: list[Entry] = field(default_factory=list)


def _unique(entries: list[Entry], key: str, what: str, problems: Problems, *, global_: bool = False) -> None:
    """Each value of ``key`` at most once per parent (or in the whole file); secrets are not quoted."""
    first: dict[Any, str] = {}
    for entry in entries:
        value = entry.values.get(key)
        if value is None:
            continue
        scoped = (None if global_ else entry.parent, value)
        if scoped not in first:
            first[scoped] = entry.place
            continue
        message = (_("duplicate %(what)s (also at %(other)s)") if key == "secret"
                   else _("duplicate %(what)s %(value)s (also at %(other)s)"))
        problems.append((_join(entry.place, key), message % {"what": what, "value": _show(value), "other": first[scoped]}))


def _tree_order(departments: list[Entry], problems: Problems) -> list[Entry]:
    """Parents before children within each company; a cycle in the file is an error."""
    ordered: list[Entry] = []
    placed: set[tuple[str, str]] = set()
    declared = {(d.parent, d.values["slug"]) for d in departments}
    waiting = list(departments)
    while waiting:
        ready = [d for d in waiting if (d.parent, d.values.get("parent")) not in declared - placed]
        if not ready:
            for d in waiting:
                problems.append((_join(d.place, "parent"), _("departments %(slugs)s form a cycle")
                                 % {"slugs": ", ".join(sorted(w.values["slug"] for w in waiting))}))
            break
        ordered.extend(ready)
        placed.update((d.parent, d.values["slug"]) for d in ready)
        waiting = [d for d in waiting if d not in ready]
    return ordered


def parse(data: Any) -> Config:
    """Check the file's shape and flatten it into entries; raise ConfigError naming every problem."""
    if data is None:
        raise ConfigError([("", _("the file is empty"))])
    try:
        document = SCHEMA(data, "")
    except Invalid as exc:
        raise ConfigError(exc.problems) from None
    config = Config()
    for index, values in enumerate(document.get("egress", [])):
        config.egress.append(Entry(values["slug"], f"egress[{index}]", values))
    for index, values in enumerate(document.get("suppliers", [])):
        config.suppliers.append(Entry(values["slug"], f"suppliers[{index}]", values))
    for index, values in enumerate(document.get("providers", [])):
        place = f"providers[{index}]"
        config.providers.append(Entry(values["slug"], place, values))
        for key_index, key in enumerate(values.get("keys", [])):
            config.keys.append(Entry(f"{values['slug']}/{key['name']}", f"{place}.keys[{key_index}]", key, parent=values["slug"]))
    for index, values in enumerate(document.get("models", [])):
        config.models.append(Entry(values["name"], f"models[{index}]", values))
    for index, values in enumerate(document.get("fx", [])):
        config.fx.append(Entry(values["currency"], f"fx[{index}]", values))
    departments: list[Entry] = []
    for index, values in enumerate(document.get("companies", [])):
        place, company = f"companies[{index}]", values["slug"]
        config.companies.append(Entry(company, place, values))
        for d_index, department in enumerate(values.get("departments", [])):
            departments.append(Entry(f"{company}/{department['slug']}", f"{place}.departments[{d_index}]", department, parent=company))
        for t_index, token in enumerate(values.get("tokens", [])):
            config.tokens.append(Entry(f"{company}/{token['name']}", f"{place}.tokens[{t_index}]", token, parent=company))

    problems: Problems = []
    _unique(config.egress, "slug", _("egress slug"), problems)
    _unique(config.suppliers, "slug", _("supplier slug"), problems)
    _unique(config.providers, "slug", _("provider slug"), problems)
    _unique(config.keys, "name", _("key name"), problems)
    _unique(config.models, "name", _("model name"), problems)
    _unique(config.fx, "currency", _("FX currency"), problems)
    _unique(config.companies, "slug", _("company slug"), problems)
    _unique(departments, "slug", _("department slug"), problems)
    _unique(config.tokens, "name", _("token name"), problems)
    _unique(config.tokens, "secret", _("token secret"), problems, global_=True)
    config.departments = _tree_order(departments, problems)
    if problems:
        raise ConfigError(problems)
    return config


# --- step 3: the pass over the services ----------------------------------------------------

# Model field → the file's key, where they differ (for validation errors).
_FIELDS = {
    "egress proxy": {"url_encrypted": "url", "url_display": "url"},
    "supplier key": {"secret_encrypted": "secret", "secret_key_id": "secret", "secret_last4": "secret"},
    "FX rate": {"rub_per_unit": "rub"},
    "token": {"limit_total": "limits.total", "limit_weekly": "limits.weekly", "limit_monthly": "limits.monthly",
              "rpm": "limits.rpm", "tpm": "limits.tpm", "key_hash": "secret", "key_prefix": "secret"},
}

# (singular, plural) in report order.
KINDS = [
    (gettext_noop("egress proxy"), gettext_noop("egress proxies")), (gettext_noop("supplier"), gettext_noop("suppliers")),
    (gettext_noop("provider"), gettext_noop("providers")), (gettext_noop("supplier key"), gettext_noop("supplier keys")),
    (gettext_noop("model"), gettext_noop("models")), (gettext_noop("price"), gettext_noop("prices")),
    (gettext_noop("FX rate"), gettext_noop("FX rates")), (gettext_noop("company"), gettext_noop("companies")),
    (gettext_noop("department"), gettext_noop("departments")), (gettext_noop("top-up"), gettext_noop("top-ups")),
    (gettext_noop("token"), gettext_noop("tokens")),
]


@dataclass(frozen=True)
class Change:
    kind: str  # a singular from KINDS
    label: str
    action: str  # accounts.CREATED / UPDATED / UNCHANGED
    detail: str = ""


@dataclass
class Report:
    dry_run: bool
    changes: list[Change] = field(default_factory=list)
    shown_once: list[tuple[str, str]] = field(default_factory=list)  # (token label, secret)

    @property
    def changed(self) -> bool:
        return any(change.action != accounts.UNCHANGED for change in self.changes)

    def counts(self, action: str) -> dict[str, int]:
        counter = Counter(change.kind for change in self.changes if change.action == action)
        return {plural: counter[singular] for singular, plural in KINDS if counter[singular]}

    def render(self) -> str:
        lines = []
        if self.dry_run:
            lines.append(_("Dry run: the plan below was validated; nothing was written."))
        verbs = ({accounts.CREATED: _("would create"), accounts.UPDATED: _("would update")} if self.dry_run
                 else {accounts.CREATED: _("created"), accounts.UPDATED: _("updated")})
        for change in self.changes:
            if change.action != accounts.UNCHANGED:
                detail = f": {change.detail}" if change.detail else ""
                lines.append(f"{verbs[change.action]}: {_(change.kind)} {change.label}{detail}")
        for label, plain in self.shown_once:
            lines.append(_("token %(label)s: %(secret)s  (shown once)") % {"label": label, "secret": plain})
        lines.append(self.summary())
        return "\n".join(lines)

    def summary(self) -> str:
        """One line per action with the count per kind, e.g. ``unchanged: suppliers 1, providers 2``."""
        lines = []
        titles = ((accounts.CREATED, _("to create") if self.dry_run else _("created")),
                  (accounts.UPDATED, _("to update") if self.dry_run else _("updated")),
                  (accounts.UNCHANGED, _("unchanged")))
        for action, title in titles:
            counts = self.counts(action)
            if counts:
                lines.append(f"{title}: " + ", ".join(f"{_(kind)} {n}" for kind, n in counts.items()))
        if not self.changed:
            lines.append(_("Nothing to change: the database already matches the file."))
        return "\n".join(lines)


class _Skip(Exception):
    """A reference to an entry that already failed (its own problem is reported)."""


_FAILED = object()


def _decimal(micro: int) -> str:
    return str(micro_to_decimal(micro))


def _slug_of(entry: Entry) -> str:
    return entry.values["slug"]


class _Run:
    """One pass over the file's entries, dry (validate and plan) or for real."""

    def __init__(self, config: Config, *, dry_run: bool) -> None:
        self.config = config
        self.dry_run = dry_run
        self.report = Report(dry_run=dry_run)
        self.problems: Problems = []
        self.objects: dict[str, dict[Any, Any]] = defaultdict(dict)  # kind → key → object (or _FAILED)

    # -- bookkeeping --
    def fail(self, problems: Problems) -> None:
        if not self.dry_run:
            raise ConfigError(problems)  # inside the apply transaction: everything rolls back
        self.problems.extend(problems)

    def attempt(self, kind: str, entry: Entry, call: Callable[[], Any], *, place: str | None = None) -> Any:
        """Call a service; a refusal becomes a problem at the entry's place (or ``place``)."""
        place = place or entry.place
        try:
            return call()
        except ValidationError as exc:
            self.fail(_validation_problems(place, exc, _FIELDS.get(kind, {})))
        except (AccountsError, ProvidersError, ProxyError, LedgerError) as exc:
            self.fail([(place, str(exc))])
        except IntegrityError:
            self.fail([(place, _("conflicts with a concurrent change; run the command again"))])
        return _FAILED

    def record(self, kind: str, entry: Entry, outcome: Any, key: Any, detail: str = "") -> Any:
        if outcome is _FAILED:
            self.objects[kind][key] = _FAILED
            return _FAILED
        self.objects[kind][key] = outcome.obj
        if outcome.action == accounts.UPDATED and not detail:
            detail = ", ".join(outcome.fields)
        self.report.changes.append(Change(kind, entry.label, outcome.action, detail))
        return outcome.obj

    def ref(self, kind: str, key: Any, place: str, lookup: Callable[[], Any]) -> Any:
        """The object ``key`` names: declared in the file (maybe still unsaved on a dry run) or in the database."""
        if key not in self.objects[kind]:
            found = lookup()
            if found is None:
                self.fail([(place, _("unknown %(kind)s %(key)s") % {"kind": _(kind), "key": _show(key[-1] if isinstance(key, tuple) else key)})])
                raise _Skip
            self.objects[kind][key] = found
        if self.objects[kind][key] is _FAILED:
            raise _Skip
        return self.objects[kind][key]

    def refs(self, requests: dict[str, tuple[str, Any, str, Callable[[], Any]]]) -> dict[str, Any]:
        """Resolve several references (name → ``ref`` arguments), reporting every unknown one."""
        found, skipped = {}, False
        for name, (kind, key, place, lookup) in requests.items():
            try:
                found[name] = self.ref(kind, key, place, lookup)
            except _Skip:
                skipped = True
        if skipped:
            raise _Skip
        return found

    def each(self, kind: str, entries: list[Entry], key_of: Callable[[Entry], Any], step: Callable[[Entry], None]) -> None:
        for entry in entries:
            try:
                step(entry)
            except _Skip:
                # Entries referring to this one are skipped too, not reported as unknown.
                self.objects[kind].setdefault(key_of(entry), _FAILED)

    # -- the pass --
    def execute(self) -> Report:
        c = self.config
        self.each("egress proxy", c.egress, _slug_of, self.egress_proxy)
        self.each("supplier", c.suppliers, _slug_of, self.supplier)
        self.each("provider", c.providers, _slug_of, self.provider)
        self.each("supplier key", c.keys, lambda e: (e.parent, e.values["name"]), self.supplier_key)
        self.each("FX rate", c.fx, lambda e: e.values["currency"], self.fx_rate)
        self.each("model", c.models, lambda e: e.values["name"], self.model)
        self.each("company", c.companies, _slug_of, self.company)
        self.each("department", c.departments, lambda e: (e.parent, e.values["slug"]), self.department)
        self.each("top-up", c.companies, _slug_of, self.top_up)
        self.each("token", c.tokens, lambda e: e.label, self.token)
        if self.problems:
            raise ConfigError(self.problems)
        return self.report

    def egress_proxy(self, e: Entry) -> None:
        v = e.values
        outcome = self.attempt("egress proxy", e, lambda: providers.upsert_egress_proxy(
            slug=v["slug"], country=v["country"], url=v["url"], internal=v.get("internal", False), dry_run=self.dry_run))
        self.record("egress proxy", e, outcome, v["slug"])

    def supplier(self, e: Entry) -> None:
        v = e.values
        outcome = self.attempt("supplier", e, lambda: accounts.upsert_supplier(slug=v["slug"], name=v["name"], dry_run=self.dry_run))
        self.record("supplier", e, outcome, v["slug"])

    def provider(self, e: Entry) -> None:
        v = e.values
        egress = None
        if "egress" in v:
            egress = self.ref("egress proxy", v["egress"], _join(e.place, "egress"),
                              lambda: EgressProxy.objects.filter(slug=v["egress"]).first())
        outcome = self.attempt("provider", e, lambda: providers.upsert_provider(
            slug=v["slug"], kind=v["kind"], name=v.get("name", ""), base_url=v.get("base_url", ""),
            internal=v.get("internal", False), options=v.get("options"), egress=egress, dry_run=self.dry_run))
        self.record("provider", e, outcome, v["slug"])

    def supplier_key(self, e: Entry) -> None:
        v = e.values
        found = self.refs({
            "provider": ("provider", e.parent, e.place, lambda: None),
            "supplier": ("supplier", v["supplier"], _join(e.place, "supplier"), lambda: Supplier.objects.filter(slug=v["supplier"]).first()),
        })
        provider, supplier = found["provider"], found["supplier"]
        outcome = self.attempt("supplier key", e, lambda: providers.upsert_supplier_key(
            provider=provider, name=v["name"], supplier=supplier, secret=v["secret"], weight=v.get("weight"),
            priority=v.get("priority"), status=v.get("status"), buy_coefficient=v.get("buy_coefficient"), dry_run=self.dry_run))
        detail = ", ".join(f if f != "secret" else _("secret replaced") for f in outcome.fields) if outcome is not _FAILED else ""
        self.record("supplier key", e, outcome, (e.parent, v["name"]), detail)

    def fx_rate(self, e: Entry) -> None:
        v = e.values
        outcome = self.attempt("FX rate", e, lambda: providers.set_fx_rate(currency=v["currency"], rub_per_unit=v["rub"], dry_run=self.dry_run))
        detail = _("%(rub)s RUB per %(currency)s") % {"rub": _decimal(v["rub"]), "currency": v["currency"]}
        if outcome is not _FAILED and outcome.action == accounts.UPDATED:
            detail = _("new rate %(detail)s; earlier rates kept") % {"detail": detail}
        self.record("FX rate", e, outcome, v["currency"], detail)

    def model(self, e: Entry) -> None:
        v = e.values
        provider = self.ref("provider", v["provider"], _join(e.place, "provider"), lambda: Provider.objects.filter(slug=v["provider"]).first())
        outcome = self.attempt("model", e, lambda: providers.upsert_model(
            name=v["name"], provider=provider, upstream_model=v.get("upstream_model"), modality=v.get("modality"),
            context_window=v.get("context_window"), max_output_tokens=v.get("max_output_tokens"), dry_run=self.dry_run))
        model = self.record("model", e, outcome, v["name"])
        if model is _FAILED or "price" not in v:
            return
        price, place = v["price"], _join(e.place, "price")
        currency = price["currency"]
        if currency != Currency.RUB and self.objects["FX rate"].get(currency) is None \
                and not FxRate.objects.filter(currency=currency).exists():
            self.fail([(_join(place, "currency"), _("there is no FX rate for %(currency)s; add one under fx") % {"currency": currency})])
            return
        outcome = self.attempt("price", e, place=place, call=lambda: providers.set_model_price(
            model=model, currency=currency, input_per_1m=price["input_per_1m"], output_per_1m=price["output_per_1m"],
            cached_input_per_1m=price.get("cached_input_per_1m"), dry_run=self.dry_run))
        detail = _("%(currency)s %(input)s in / %(output)s out per 1M tokens") % {
            "currency": currency, "input": _decimal(price["input_per_1m"]), "output": _decimal(price["output_per_1m"])}
        if outcome is not _FAILED and outcome.action == accounts.UPDATED:
            detail = _("new version %(detail)s; earlier versions kept") % {"detail": detail}
        self.record("price", e, outcome, v["name"], detail)

    def company(self, e: Entry) -> None:
        v = e.values
        outcome = self.attempt("company", e, lambda: accounts.upsert_company(
            slug=v["slug"], name=v["name"], time_zone=v.get("time_zone"), sell_coefficient=v.get("sell_coefficient"),
            credit_limit=v.get("credit_limit", 0), dry_run=self.dry_run))
        self.record("company", e, outcome, v["slug"])

    def department(self, e: Entry) -> None:
        v = e.values
        company = self.ref("company", e.parent, e.place, lambda: None)
        parent = None
        if "parent" in v:
            parent = self.ref("department", (e.parent, v["parent"]), _join(e.place, "parent"),
                              lambda: Department.objects.filter(company=company, slug=v["parent"]).first() if company.pk else None)
        outcome = self.attempt("department", e, lambda: accounts.upsert_department(
            company=company, slug=v["slug"], name=v["name"], parent=parent, monthly_budget=v.get("monthly_budget"),
            dry_run=self.dry_run))
        self.record("department", e, outcome, (e.parent, v["slug"]))

    def top_up(self, e: Entry) -> None:
        v = e.values
        if "top_up" not in v:
            return
        company = self.ref("company", v["slug"], e.place, lambda: None)
        outcome = self.attempt("top-up", e, place=_join(e.place, "top_up"), call=lambda: accounts.sync_configured_top_up(
            company=company, declared=v["top_up"], dry_run=self.dry_run))
        if outcome is _FAILED:
            return
        action = accounts.CREATED if outcome.changed else accounts.UNCHANGED
        detail = _("+%(amount)s RUB (declared total %(total)s RUB)") % {"amount": format_rub(outcome.amount), "total": format_rub(v["top_up"])}
        self.report.changes.append(Change("top-up", e.label, action, detail))

    def _token_settings(self, e: Entry, company: Any) -> dict[str, Any]:
        v, limits = e.values, e.values.get("limits", {})
        settings = tokens.default_token_settings()
        requests = {}
        if "department" in v:
            requests["department"] = ("department", (e.parent, v["department"]), _join(e.place, "department"),
                                      lambda: Department.objects.filter(company=company, slug=v["department"]).first() if company.pk else None)
        if "owner" in v:
            requests["owner"] = ("user", v["owner"], _join(e.place, "owner"),
                                 lambda: get_user_model().objects.filter(email__iexact=v["owner"]).first())
        for key in ("models_allow", "models_deny"):
            for index, name in enumerate(v.get(key, [])):
                place = f"{_join(e.place, key)}[{index}]"
                requests[place] = ("model", name, place, lambda name=name: Model.objects.filter(name=name).first())
        found = self.refs(requests)
        settings.update({name: found[name] for name in ("department", "owner") if name in found})
        expires_at = v.get("expires_at")
        if expires_at is not None and timezone.is_naive(expires_at):
            expires_at = timezone.make_aware(expires_at, zoneinfo.ZoneInfo(company.time_zone))
        settings.update({
            "environment": v.get("environment", settings["environment"]),
            "limit_total": limits.get("total"), "limit_weekly": limits.get("weekly"), "limit_monthly": limits.get("monthly"),
            "rpm": limits.get("rpm"), "tpm": limits.get("tpm"),
            "models_allow": v.get("models_allow", []), "models_deny": v.get("models_deny", []), "ip_allow": v.get("ip_allow", []),
            "max_distinct_ips": v.get("max_distinct_ips"), "expires_at": expires_at,
        })
        return settings

    def token(self, e: Entry) -> None:
        v = e.values
        company = self.ref("company", e.parent, e.place, lambda: None)
        settings = self._token_settings(e, company)
        existing = ApiToken.objects.filter(company=company, name=v["name"]).first() if company.pk else None
        if existing is None:
            result = self.attempt("token", e, lambda: tokens.issue_token(
                company=company, name=v["name"], secret=v.get("secret"), status=v.get("status", TokenStatus.ACTIVE),
                dry_run=self.dry_run, **settings))
            if result is _FAILED:
                return
            token, plain = result
            if plain is not None and "secret" not in v:
                self.report.shown_once.append((e.label, plain))
            self.record("token", e, accounts.Outcome(token, accounts.CREATED), e.label)
            return
        outcome = self.attempt("token", e, lambda: tokens.update_token(token=existing, dry_run=self.dry_run, **settings))
        if outcome is _FAILED:
            return
        changed = list(outcome.fields)
        if "secret" in v and hash_token(v["secret"]) != existing.key_hash:
            if self.attempt("token", e, place=_join(e.place, "secret"), call=lambda: tokens.rotate_token_secret(
                    token=existing, secret=v["secret"], dry_run=self.dry_run)) is _FAILED:
                return
            changed.append(_("secret rotated"))
        if v.get("status", existing.status) != existing.status:
            if self.attempt("token", e, place=_join(e.place, "status"), call=lambda: tokens.set_token_status(
                    token=existing, status=v["status"], reason=_("set by configuration"), dry_run=self.dry_run)) is _FAILED:
                return
            changed.append(_("status %(status)s") % {"status": v["status"]})
        action = accounts.UPDATED if changed else accounts.UNCHANGED
        self.record("token", e, accounts.Outcome(existing, action, tuple(changed)), e.label)


def _validation_problems(place: str, exc: ValidationError, fields: dict[str, str]) -> Problems:
    if not hasattr(exc, "error_dict"):
        return [(place, " ".join(exc.messages))]
    problems = []
    for name, messages in exc.message_dict.items():
        where = place if name == NON_FIELD_ERRORS else _join(place, fields.get(name, name))
        problems.append((where, " ".join(messages)))
    return problems


def apply_config(text: str, *, dry_run: bool = False) -> Report:
    """Validate the whole file, then (unless ``dry_run``) apply it in one transaction.

    Raises ConfigError naming every problem; nothing is written then.
    """
    config = parse(load_yaml(text))
    plan = _Run(config, dry_run=True).execute()
    if dry_run:
        return plan
    with transaction.atomic():
        return _Run(config, dry_run=False).execute()
