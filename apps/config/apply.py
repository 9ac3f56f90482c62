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
whole file back. The services are the single place of every rule; this app only maps the
file onto them. Objects are never deleted by configuration; omitted optional settings return
to their defaults, except statuses, which are kept when omitted.
"""

from __future__ import annotations

import zoneinfo
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from django.contrib.auth import get_user_model
from django.core.exceptions import NON_FIELD_ERRORS, ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from apps.accounts import services as accounts
from apps.accounts.exceptions import AccountsError
from apps.accounts.models import Department, Supplier
from apps.billing import fx
from apps.billing.exceptions import LedgerError
from apps.billing.models import FxRate
from apps.config.exceptions import ConfigError
from apps.config.parse import Config, Entry, parse
from apps.config.report import Change, Report
from apps.config.schema import Problems, join, load_yaml, show
from apps.providers import services as providers
from apps.providers.exceptions import ProvidersError
from apps.providers.models import OPTION_FIELDS, EgressProxy, Model, Provider
from apps.proxy import services as tokens
from apps.proxy.exceptions import ProxyError
from apps.proxy.models import ApiToken, TokenStatus, hash_token
from lib.money import Currency, format_rub
from lib.upsert import CREATED, UNCHANGED, UPDATED, Outcome

# Model field → the file's key, where they differ (for validation errors).
_FIELDS = {
    "egress proxy": {"url_encrypted": "url", "url_display": "url"},
    "supplier key": {"secret_encrypted": "secret", "secret_key_id": "secret", "secret_last4": "secret"},
    "local node": {"secret_encrypted": "secret", "secret_last4": "secret", "input_per_1m": "cost",
                   "output_per_1m": "cost", "gpu_hour": "cost", "tokens_per_hour": "cost", "provider": "base_url"},
    "FX rate": {"rub_per_unit": "rub"},
    "token": {"limit_total": "limits.total", "limit_weekly": "limits.weekly", "limit_monthly": "limits.monthly",
              "rpm": "limits.rpm", "tpm": "limits.tpm", "key_hash": "secret", "key_prefix": "secret"},
}

class _Skip(Exception):
    """A reference to an entry that already failed (its own problem is reported)."""


_FAILED = object()


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
        """Report ``problems`` (place, message): the dry pass collects them; the real pass raises
        ``ConfigError`` at once (its transaction rolls back)."""
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
        """Remember what an entry's ``Outcome`` made under ``objects[kind][key]`` (for later references)
        and report its ``Change`` (``detail`` defaults to the changed fields); a failed attempt is
        remembered as failed. Returns the object, or ``_FAILED``."""
        if outcome is _FAILED:
            self.objects[kind][key] = _FAILED
            return _FAILED
        self.objects[kind][key] = outcome.obj
        if outcome.action == UPDATED and not detail:
            detail = ", ".join(outcome.fields)
        self.report.changes.append(Change(kind, entry.label, outcome.action, detail))
        return outcome.obj

    def ref(self, kind: str, key: Any, place: str, lookup: Callable[[], Any]) -> Any:
        """The object ``key`` names: declared in the file (maybe still unsaved on a dry run) or in the database."""
        if key not in self.objects[kind]:
            found = lookup()
            if found is None:
                self.fail([(place, _("unknown %(kind)s %(key)s") % {"kind": _(kind), "key": show(key[-1] if isinstance(key, tuple) else key)})])
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
        """``step`` over ``entries``; an entry skipped for a failed reference is marked failed under
        ``key_of(entry)``, so entries referring to it are skipped in turn."""
        for entry in entries:
            try:
                step(entry)
            except _Skip:
                # Entries referring to this one are skipped too, not reported as unknown.
                self.objects[kind].setdefault(key_of(entry), _FAILED)

    # -- the pass --
    def execute(self) -> Report:
        """The pass over every section in dependency order; returns the ``Report``. Raises ``ConfigError``
        with every problem the pass found."""
        c = self.config
        self.each("egress proxy", c.egress, _slug_of, self.egress_proxy)
        self.each("supplier", c.suppliers, _slug_of, self.supplier)
        self.each("provider", c.providers, _slug_of, self.provider)
        self.each("supplier key", c.keys, lambda e: (e.parent, e.values["name"]), self.supplier_key)
        self.each("local node", c.nodes, lambda e: (e.parent, e.values["name"]), self.local_node)
        self.each("FX rate", c.fx, lambda e: e.values["currency"], self.fx_rate)
        self.each("model", c.models, lambda e: e.values["name"], self.model)
        self.each("company", c.companies, _slug_of, self.company)
        self.each("model coefficients", c.companies, _slug_of, self.model_coefficients)
        self.each("department", c.departments, lambda e: (e.parent, e.values["slug"]), self.department)
        self.each("top-up", c.companies, _slug_of, self.top_up)
        self.each("token", c.tokens, lambda e: e.label, self.token)
        if self.problems:
            raise ConfigError(self.problems)
        return self.report

    def egress_proxy(self, e: Entry) -> None:
        """Upsert one ``egress`` entry."""
        v = e.values
        outcome = self.attempt("egress proxy", e, lambda: providers.upsert_egress_proxy(
            slug=v["slug"], country=v["country"], url=v["url"], internal=v.get("internal", False),
            probe_url=v.get("probe_url", ""), dry_run=self.dry_run))
        self.record("egress proxy", e, outcome, v["slug"])

    def supplier(self, e: Entry) -> None:
        """Upsert one ``suppliers`` entry."""
        v = e.values
        outcome = self.attempt("supplier", e, lambda: accounts.upsert_supplier(slug=v["slug"], name=v["name"], dry_run=self.dry_run))
        self.record("supplier", e, outcome, v["slug"])

    def provider(self, e: Entry) -> None:
        """Upsert one ``providers`` entry (its egress proxies by slug, in order, from the file or the database)."""
        v = e.values
        found = self.refs({str(index): ("egress proxy", name, join(e.place, f"egress[{index}]"),
                                        lambda name=name: EgressProxy.objects.filter(slug=name).first())
                           for index, name in enumerate(v.get("egress", []))})
        egresses = [found[str(index)] for index in range(len(v.get("egress", [])))]
        # The kind-specific fields join the options (a field wins over the same name inside ``options``).
        options = {**(v.get("options") or {}), **{name: v[name] for name in OPTION_FIELDS if name in v}}
        outcome = self.attempt("provider", e, lambda: providers.upsert_provider(
            slug=v["slug"], kind=v["kind"], name=v.get("name", ""), base_url=v.get("base_url", ""),
            internal=v.get("internal", False), options=options, egresses=egresses, country=v.get("country", ""), dry_run=self.dry_run))
        self.record("provider", e, outcome, v["slug"])

    def supplier_key(self, e: Entry) -> None:
        """Upsert one key of the provider it is declared under (its supplier by slug); a new secret is
        reported as "secret replaced", never shown."""
        v = e.values
        found = self.refs({
            "provider": ("provider", e.parent, e.place, lambda: None),
            "supplier": ("supplier", v["supplier"], join(e.place, "supplier"), lambda: Supplier.objects.filter(slug=v["supplier"]).first()),
        })
        provider, supplier = found["provider"], found["supplier"]
        outcome = self.attempt("supplier key", e, lambda: providers.upsert_supplier_key(
            provider=provider, name=v["name"], supplier=supplier, secret=v["secret"], weight=v.get("weight"),
            priority=v.get("priority"), status=v.get("status"), buy_coefficient=v.get("buy_coefficient"), dry_run=self.dry_run))
        detail = ", ".join(f if f != "secret" else _("secret replaced") for f in outcome.fields) if outcome is not _FAILED else ""
        self.record("supplier key", e, outcome, (e.parent, v["name"]), detail)

    def local_node(self, e: Entry) -> None:
        """Upsert one node of the provider it is declared under (its supplier by slug, if any); a new
        secret is reported as "secret replaced", never shown."""
        v = e.values
        requests: dict[str, tuple[str, Any, str, Callable[[], Any]]] = {"provider": ("provider", e.parent, e.place, lambda: None)}
        if "supplier" in v:
            requests["supplier"] = ("supplier", v["supplier"], join(e.place, "supplier"),
                                    lambda: Supplier.objects.filter(slug=v["supplier"]).first())
        found = self.refs(requests)
        outcome = self.attempt("local node", e, lambda: providers.upsert_local_node(
            provider=found["provider"], name=v["name"], base_url=v["base_url"], supplier=found.get("supplier"),
            secret=v.get("secret", ""), weight=v.get("weight"), internal=v.get("internal", False), cost=v.get("cost"),
            health_path=v.get("health_path"), dry_run=self.dry_run))
        detail = ", ".join(f if f != "secret" else _("secret replaced") for f in outcome.fields) if outcome is not _FAILED else ""
        self.record("local node", e, outcome, (e.parent, v["name"]), detail)

    def fx_rate(self, e: Entry) -> None:
        """Set one ``fx`` rate (``rub`` micro-RUB per unit); a different rate adds a version."""
        v = e.values
        outcome = self.attempt("FX rate", e, lambda: fx.set_fx_rate(currency=v["currency"], rub_per_unit=v["rub"], dry_run=self.dry_run))
        detail = _("%(rub)s RUB per %(currency)s") % {"rub": format_rub(v["rub"], 0, exact=True), "currency": v["currency"]}
        if outcome is not _FAILED and outcome.action == UPDATED:
            detail = _("new rate %(detail)s; earlier rates kept") % {"detail": detail}
        self.record("FX rate", e, outcome, v["currency"], detail)

    def model(self, e: Entry) -> None:
        """Upsert one model and, if given, its price (a different one adds a version). A price in another
        currency than RUB needs that currency's FX rate, in the file or the database."""
        v = e.values
        provider = self.ref("provider", v["provider"], join(e.place, "provider"), lambda: Provider.objects.filter(slug=v["provider"]).first())
        outcome = self.attempt("model", e, lambda: providers.upsert_model(
            name=v["name"], provider=provider, upstream_model=v.get("upstream_model"), modality=v.get("modality"),
            context_window=v.get("context_window"), max_output_tokens=v.get("max_output_tokens"),
            fallbacks=v.get("fallbacks"), routing=v.get("routing"), dry_run=self.dry_run))
        model = self.record("model", e, outcome, v["name"])
        if model is _FAILED or "price" not in v:
            return
        price, place = v["price"], join(e.place, "price")
        currency = price["currency"]
        if currency != Currency.RUB and self.objects["FX rate"].get(currency) is None \
                and not FxRate.objects.filter(currency=currency).exists():
            self.fail([(join(place, "currency"), _("there is no FX rate for %(currency)s; add one under fx") % {"currency": currency})])
            return
        outcome = self.attempt("price", e, place=place, call=lambda: providers.set_model_price(
            model=model, currency=currency, input_per_1m=price["input_per_1m"], output_per_1m=price["output_per_1m"],
            cached_input_per_1m=price.get("cached_input_per_1m"), dry_run=self.dry_run))
        detail = _("%(currency)s %(input)s in / %(output)s out per 1M tokens") % {
            "currency": currency, "input": format_rub(price["input_per_1m"], 0, exact=True), "output": format_rub(price["output_per_1m"], 0, exact=True)}
        if outcome is not _FAILED and outcome.action == UPDATED:
            detail = _("new version %(detail)s; earlier versions kept") % {"detail": detail}
        self.record("price", e, outcome, v["name"], detail)

    def company(self, e: Entry) -> None:
        """Upsert one company (with its wallet, ``credit_limit`` micro-RUB, and moderation policy)."""
        v = e.values
        outcome = self.attempt("company", e, lambda: accounts.upsert_company(
            slug=v["slug"], name=v["name"], time_zone=v.get("time_zone"), sell_coefficient=v.get("sell_coefficient"),
            credit_limit=v.get("credit_limit", 0),
            routing=accounts.CompanyRouting(data_residency=v.get("data_residency"), fallbacks=v.get("fallbacks")), dry_run=self.dry_run))
        self.record("company", e, outcome, v["slug"])

    def model_coefficients(self, e: Entry) -> None:
        """Bring the company's per-model sell coefficients to exactly the declared ``model_coefficients``
        (public model name → Decimal; an omitted model falls back to the company's coefficient)."""
        v = e.values
        place = join(e.place, "model_coefficients")
        declared = v.get("model_coefficients", {})
        company = self.ref("company", v["slug"], e.place, lambda: None)
        found = self.refs({name: ("model", name, join(place, name), lambda name=name: Model.objects.filter(name=name).first())
                           for name in declared})
        outcome = self.attempt("model coefficients", e, place=place, call=lambda: accounts.set_model_coefficients(
            company=company, coefficients=[(found[name], coef) for name, coef in declared.items()], dry_run=self.dry_run))
        if outcome is _FAILED or not outcome.changed:
            return
        detail = ", ".join(f"{name} × {coef}" for name, coef in sorted(declared.items())) or _("none")
        self.report.changes.append(Change("model coefficients", e.label, outcome.action, detail))

    def department(self, e: Entry) -> None:
        """Upsert one department of its company (``parent`` by slug, declared earlier in the file or in the database)."""
        v = e.values
        company = self.ref("company", e.parent, e.place, lambda: None)
        parent = None
        if "parent" in v:
            parent = self.ref("department", (e.parent, v["parent"]), join(e.place, "parent"),
                              lambda: Department.objects.filter(company=company, slug=v["parent"]).first() if company.pk else None)
        outcome = self.attempt("department", e, lambda: accounts.upsert_department(
            company=company, slug=v["slug"], name=v["name"], parent=parent, monthly_budget=v.get("monthly_budget"),
            dry_run=self.dry_run))
        self.record("department", e, outcome, (e.parent, v["slug"]))

    def top_up(self, e: Entry) -> None:
        """Bring the company's configuration top-ups to its declared ``top_up`` total (micro-RUB); only
        ever adds (a lower total is a problem)."""
        v = e.values
        if "top_up" not in v:
            return
        company = self.ref("company", v["slug"], e.place, lambda: None)
        outcome = self.attempt("top-up", e, place=join(e.place, "top_up"), call=lambda: accounts.sync_configured_top_up(
            company=company, declared=v["top_up"], dry_run=self.dry_run))
        if outcome is _FAILED:
            return
        action = CREATED if outcome.changed else UNCHANGED
        detail = _("+%(amount)s RUB (declared total %(total)s RUB)") % {"amount": format_rub(outcome.amount), "total": format_rub(v["top_up"])}
        self.report.changes.append(Change("top-up", e.label, action, detail))

    def _token_settings(self, e: Entry, company: Any) -> dict[str, Any]:
        v, limits = e.values, e.values.get("limits", {})
        settings = tokens.default_token_settings()
        requests = {}
        if "department" in v:
            requests["department"] = ("department", (e.parent, v["department"]), join(e.place, "department"),
                                      lambda: Department.objects.filter(company=company, slug=v["department"]).first() if company.pk else None)
        if "owner" in v:
            requests["owner"] = ("user", v["owner"], join(e.place, "owner"),
                                 lambda: get_user_model().objects.filter(email__iexact=v["owner"]).first())
        for key in ("models_allow", "models_deny"):
            for index, name in enumerate(v.get(key, [])):
                place = f"{join(e.place, key)}[{index}]"
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
            "max_distinct_ips": v.get("max_distinct_ips"), "expires_at": expires_at, "fallbacks": v.get("fallbacks", {}),
        })
        return settings

    def token(self, e: Entry) -> None:
        """Issue the token, or update its settings and, where the file says so, rotate its secret and
        change its status. A secret generated now is added to ``report.shown_once``."""
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
            self.record("token", e, Outcome(token, CREATED), e.label)
            return
        outcome = self.attempt("token", e, lambda: tokens.update_token(token=existing, dry_run=self.dry_run, **settings))
        if outcome is _FAILED:
            return
        changed = list(outcome.fields)
        if "secret" in v and hash_token(v["secret"]) != existing.key_hash:
            if self.attempt("token", e, place=join(e.place, "secret"), call=lambda: tokens.rotate_token_secret(
                    token=existing, secret=v["secret"], dry_run=self.dry_run)) is _FAILED:
                return
            changed.append(_("secret rotated"))
        if v.get("status", existing.status) != existing.status:
            if self.attempt("token", e, place=join(e.place, "status"), call=lambda: tokens.set_token_status(
                    token=existing, status=v["status"], reason=_("set by configuration"), dry_run=self.dry_run)) is _FAILED:
                return
            changed.append(_("status %(status)s") % {"status": v["status"]})
        action = UPDATED if changed else UNCHANGED
        self.record("token", e, Outcome(existing, action, tuple(changed)), e.label)


def _validation_problems(place: str, exc: ValidationError, fields: dict[str, str]) -> Problems:
    if not hasattr(exc, "error_dict"):
        return [(place, " ".join(exc.messages))]
    problems = []
    for name, messages in exc.message_dict.items():
        where = place if name == NON_FIELD_ERRORS else join(place, fields.get(name, name))
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
