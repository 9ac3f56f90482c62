"""The configuration document's schema and ``parse``: a loaded YAML document → ``Config``.

``parse`` checks the whole shape (every key known, every value of its type, no duplicate slugs
or names, departments in tree order) and flattens the file into entries; it raises ConfigError
naming every problem. Nothing here reads or writes the database.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.core.exceptions import ValidationError
from django.utils.translation import gettext as _

from apps.accounts.models import DataResidency, validate_fallbacks, validate_time_zone
from apps.config.exceptions import ConfigError
from apps.config.schema import (
    Invalid,
    Key,
    Problems,
    amount,
    boolean,
    choice,
    coefficient,
    date_time,
    email,
    integer,
    join,
    list_of,
    mapping,
    options,
    secret,
    show,
    slug,
    text,
    validated,
)
from apps.providers.models import OPTION_FIELDS, Modality, ProviderKind, Routing, SupplierKeyStatus
from apps.proxy.models import TokenEnvironment, TokenStatus, validate_cidr, validate_token_secret
from lib.money import Currency

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
_NODE_COST_PER_TOKENS = mapping({
    "input_per_1m": Key(amount(), required=True),
    "output_per_1m": Key(amount(), required=True),
})
_NODE_COST_GPU_HOUR = mapping({
    "gpu_hour": Key(amount(), required=True),
    "tokens_per_hour": Key(integer(minimum=1), required=True),
})


def _node_cost(value: Any, place: str) -> dict[str, int]:
    """A node's cost in RUB: ``{input_per_1m, output_per_1m}`` or ``{gpu_hour, tokens_per_hour}`` (micro-RUB out)."""
    if isinstance(value, dict) and "gpu_hour" in value:
        return _NODE_COST_GPU_HOUR(value, place)
    return _NODE_COST_PER_TOKENS(value, place)


_NODE = mapping({
    "name": Key(text, required=True),
    "base_url": Key(text, required=True),
    "supplier": Key(slug),
    "secret": Key(secret),
    "weight": Key(integer(minimum=1)),
    "internal": Key(boolean),
    "cost": Key(_node_cost),
    "health_path": Key(text),
})
_LIMITS = mapping({
    "total": Key(amount()),
    "weekly": Key(amount()),
    "monthly": Key(amount()),
    "rpm": Key(integer(minimum=1)),
    "tpm": Key(integer(minimum=1)),
})


def _fallback_map(value: Any, place: str) -> dict[str, list[str]]:
    """A company's or token's fallback chains: ``{"<model>": ["<fallback model>", ...]}``."""
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, list) for k, v in value.items()):
        raise Invalid.at(place, _("expected a mapping of model name to a list of fallback model names"))
    try:
        validate_fallbacks(value)
    except ValidationError as exc:
        raise Invalid.at(place, " ".join(exc.messages)) from None
    return {model: list(chain) for model, chain in value.items()}


_FALLBACKS = _fallback_map


def _model_coefficients(value: Any, place: str) -> dict[str, Any]:
    """A company's per-model sell coefficients: ``{"<model>": "1.10"}`` → {name: Decimal}."""
    if not isinstance(value, dict) or not all(isinstance(k, str) and k for k in value):
        raise Invalid.at(place, _('expected a mapping of model name to a coefficient such as "1.10"'))
    return {model: coefficient(coef, join(place, model)) for model, coef in value.items()}
_TOKEN = mapping({
    "name": Key(text, required=True),
    "department": Key(slug),
    "secret": Key(validated(validate_token_secret)),
    "limits": Key(_LIMITS),
    "models_allow": Key(list_of(text)),
    "models_deny": Key(list_of(text)),
    "ip_allow": Key(list_of(validated(validate_cidr))),
    "max_distinct_ips": Key(integer(minimum=1)),
    "expires_at": Key(date_time),
    "environment": Key(choice(TokenEnvironment.values)),
    "status": Key(choice(TokenStatus.values)),
    "owner": Key(email),
    "fallbacks": Key(_FALLBACKS),
})
_DEPARTMENT = mapping({
    "slug": Key(slug, required=True),
    "name": Key(text, required=True),
    "parent": Key(slug),
    "monthly_budget": Key(amount()),
})
def _egress_slugs(value: Any, place: str) -> list[str]:
    """A provider's egress proxies in the order calls try them: a list of slugs, or one slug (a list of one)."""
    if isinstance(value, str):
        return [slug(value, place)]
    return list_of(slug)(value, place)


SCHEMA = mapping({
    "egress": Key(list_of(mapping({
        "slug": Key(slug, required=True),
        "country": Key(text, required=True),
        "url": Key(secret, required=True),
        "internal": Key(boolean),
        "probe_url": Key(text),
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
        # Kind-specific fields (``apps.providers.models.OPTION_FIELDS``), kept in the provider's options.
        **{name: Key(text) for name in OPTION_FIELDS},
        "country": Key(text),
        "egress": Key(_egress_slugs),
        "keys": Key(list_of(_SUPPLIER_KEY)),
        "nodes": Key(list_of(_NODE)),
    }))),
    "models": Key(list_of(mapping({
        "name": Key(text, required=True),
        "provider": Key(slug, required=True),
        "upstream_model": Key(text),
        "modality": Key(choice(Modality.values)),
        "context_window": Key(integer(minimum=1)),
        "max_output_tokens": Key(integer(minimum=1)),
        "fallbacks": Key(list_of(text)),
        "routing": Key(choice(Routing.values)),
        "price": Key(_PRICE),
    }))),
    "fx": Key(list_of(mapping({
        "currency": Key(choice([c for c in Currency.values if c != Currency.RUB]), required=True),
        "rub": Key(amount(allow_zero=False), required=True),
    }))),
    "companies": Key(list_of(mapping({
        "slug": Key(slug, required=True),
        "name": Key(text, required=True),
        "time_zone": Key(validated(validate_time_zone)),
        "sell_coefficient": Key(coefficient),
        "model_coefficients": Key(_model_coefficients),
        "credit_limit": Key(amount()),
        "top_up": Key(amount()),
        "data_residency": Key(choice(DataResidency.values)),
        "fallbacks": Key(_FALLBACKS),
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
    """The parsed file: its entries per kind, departments in tree order (parents first)."""

    egress: list[Entry] = field(default_factory=list)
    suppliers: list[Entry] = field(default_factory=list)
    providers: list[Entry] = field(default_factory=list)
    keys: list[Entry] = field(default_factory=list)
    nodes: list[Entry] = field(default_factory=list)
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
        problems.append((join(entry.place, key), message % {"what": what, "value": show(value), "other": first[scoped]}))


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
                problems.append((join(d.place, "parent"), _("departments %(slugs)s form a cycle")
                                 % {"slugs": ", ".join(sorted(w.values["slug"] for w in waiting))}))
            break
        ordered.extend(ready)
        placed.update((d.parent, d.values["slug"]) for d in ready)
        waiting = [d for d in waiting if d not in ready]
    return ordered


def _entries(document: dict[str, Any]) -> tuple[Config, list[Entry]]:
    """The checked document flattened into entries (departments apart: they are ordered next)."""
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
        for node_index, node in enumerate(values.get("nodes", [])):
            config.nodes.append(Entry(f"{values['slug']}/{node['name']}", f"{place}.nodes[{node_index}]", node, parent=values["slug"]))
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
    return config, departments


def parse(data: Any) -> Config:
    """Check the file's shape and flatten it into entries; raise ConfigError naming every problem."""
    if data is None:
        raise ConfigError([("", _("the file is empty"))])
    try:
        document = SCHEMA(data, "")
    except Invalid as exc:
        raise ConfigError(exc.problems) from None
    config, departments = _entries(document)
    problems: Problems = []
    _unique(config.egress, "slug", _("egress slug"), problems)
    _unique(config.suppliers, "slug", _("supplier slug"), problems)
    _unique(config.providers, "slug", _("provider slug"), problems)
    _unique(config.keys, "name", _("key name"), problems)
    _unique(config.nodes, "name", _("node name"), problems)
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
