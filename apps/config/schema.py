"""The configuration file's reader: YAML with no duplicate keys, and small parser combinators.

A parser is a function ``(value, place) -> parsed value`` that raises ``Invalid`` naming every
problem with its place (``companies[0].tokens[0].limits.total``). Money is read as an exact
decimal (a string or a whole number, never a YAML float) into integer micro-units.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import yaml
from django.core.exceptions import ValidationError
from django.core.validators import validate_slug
from django.utils.translation import gettext as _
from django.utils.translation import gettext_noop

from apps.config.exceptions import ConfigError
from lib.money import MoneyFormatError, to_coefficient, to_micro

Problems = list[tuple[str, str]]  # (place, message) pairs


class Invalid(Exception):
    """Problems found while reading the file's shape; ``parse`` turns them into a ConfigError."""

    def __init__(self, problems: Problems) -> None:
        self.problems = problems
        super().__init__(problems)

    @classmethod
    def at(cls, place: str, message: str) -> Invalid:
        """One problem: ``message`` at ``place``."""
        return cls([(place, message)])


# --- step 1: YAML ---------------------------------------------------------------------------

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
    """YAML text → Python values (a SafeLoader; a key twice in one mapping is an error); raises ConfigError."""
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
    """One key of a ``mapping``: its parser and whether the file must give it."""

    parse: Parser
    required: bool = False


def join(place: str, key: str) -> str:
    """The place of ``key`` inside ``place``: ``join("companies[0]", "slug")`` → ``companies[0].slug``."""
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


def show(value: Any) -> str:
    """Quote a (never secret) value for a message, shortened."""
    text = json.dumps(value if isinstance(value, str | int) else str(value), ensure_ascii=False)
    return text if len(text) <= 60 else text[:56] + '…"'


def mapping(schema: dict[str, Key]) -> Parser:
    """A parser of a mapping with exactly the keys of ``schema`` (key → ``Key``); omitted optional keys are left out."""
    def parse(value: Any, place: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise Invalid.at(place, _("expected a mapping, got %(what)s") % {"what": _describe(value)})
        problems: Problems = []
        for key in value:
            if key not in schema:
                problems.append((join(place, str(key)), _("unknown key; expected one of: %(keys)s") % {"keys": ", ".join(schema)}))
        result: dict[str, Any] = {}
        for key, spec in schema.items():
            if value.get(key) is None:
                if spec.required:
                    problems.append((join(place, key), _("is required")))
                continue
            try:
                result[key] = spec.parse(value[key], join(place, key))
            except Invalid as exc:
                problems.extend(exc.problems)
        if problems:
            raise Invalid(problems)
        return result
    return parse


def list_of(item: Parser) -> Parser:
    """A parser of a list whose every element ``item`` parses (places ``name[0]``, ``name[1]``, …)."""
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
    """A non-blank string."""
    if not isinstance(value, str):
        raise Invalid.at(place, _("expected a string, got %(what)s") % {"what": _describe(value)})
    if not value.strip():
        raise Invalid.at(place, _("must not be empty"))
    return value


def secret(value: Any, place: str) -> str:
    """Like ``text``; named apart so no message ever quotes it."""
    return text(value, place)


def slug(value: Any, place: str) -> str:
    """A slug: letters, digits, "-" and "_"."""
    value = text(value, place)
    try:
        validate_slug(value)
    except ValidationError:
        raise Invalid.at(place, _("%(value)s is not a slug (letters, digits, '-' and '_')") % {"value": show(value)}) from None
    return value


def boolean(value: Any, place: str) -> bool:
    """A YAML boolean (true/false)."""
    if not isinstance(value, bool):
        raise Invalid.at(place, _("expected true or false, got %(what)s") % {"what": _describe(value)})
    return value


def integer(*, minimum: int | None = None) -> Parser:
    """A parser of a whole number (not a boolean), at least ``minimum`` when given."""
    def parse(value: Any, place: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise Invalid.at(place, _("expected a whole number, got %(what)s") % {"what": _describe(value)})
        if minimum is not None and value < minimum:
            raise Invalid.at(place, _("must be at least %(minimum)d") % {"minimum": minimum})
        return value
    return parse


def choice(values: list[str]) -> Parser:
    """A parser of one of ``values`` (a model's choices)."""
    def parse(value: Any, place: str) -> str:
        if not isinstance(value, str) or value not in values:
            raise Invalid.at(place, _("%(value)s is not one of: %(choices)s") % {"value": show(value), "choices": ", ".join(values)})
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
            raise Invalid.at(place, _('%(value)s is not an amount (write it like "100.00")') % {"value": show(value)})
        try:
            micro = to_micro(value, field=place, allow_zero=allow_zero)
        except MoneyFormatError as exc:
            raise Invalid.at(place, str(exc).removeprefix(f"{place}: ")) from None
        if micro > _MAX_MICRO:
            raise Invalid.at(place, _("%(value)s is too large") % {"value": show(value)})
        return micro
    return parse


def coefficient(value: Any, place: str):
    """An exact decimal coefficient ("1.25", at most 4 places) → Decimal (lib.money.to_coefficient)."""
    if isinstance(value, float):
        raise _float_hint(value, place, _("coefficient"))
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise Invalid.at(place, _('expected a coefficient such as "1.25", got %(what)s') % {"what": _describe(value)})
    try:
        return to_coefficient(value, field=place)
    except MoneyFormatError as exc:
        raise Invalid.at(place, str(exc).removeprefix(f"{place}: ")) from None


def validated(validator: Callable[[str], None]) -> Parser:
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
    """A mapping with string keys that JSON can hold (a provider's options)."""
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
    """An e-mail address, lower-cased."""
    return text(value, place).strip().lower()
