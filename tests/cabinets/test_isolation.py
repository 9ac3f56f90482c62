"""The isolation walk: every cabinet URL, as every persona who must not see it.

The URLs are collected from the URLconf — every pattern under the ``cabinets`` namespace — so a new
page is walked the moment it is routed. Each is requested (GET, then POST with an empty form) by
the personas outside its tenant:

- company pages (``cabinets:company:*``): the outsider, the supplier, and the other company's
  manager (``manager_b``; company A owns the objects);
- supplier pages (``cabinets:supplier:*``): the outsider and both companies' managers;
- operator pages (``cabinets:operator:*``): the outsider, a company manager and the supplier.

Each answer must be 404, 403, 405 (a POST to a GET-only view) or a redirect to the sign-in steps —
except a page with no object in its URL in a cabinet the visitor has of their own (``manager_b`` on
the company dashboard sees *their* company): that may be 200. In every case the body must not
contain company A's or the supplier's data (the markers below). Personal pages
(``PERSONAL``: the TOTP devices, re-authentication) show only the visitor's own account: they are
checked for foreign data only.

**URL kwarg naming rule.** An object in a cabinet URL is named ``<model>_id`` after its model in
snake case — ``token_id`` (ApiToken), ``department_id``, ``member_id`` (a Membership or
SupplierMembership), ``invitation_id``, ``key_id`` (SupplierKey), ``withdrawal_id``
(WithdrawalRequest), ``invoice_id`` / ``document_id`` (invoicing Document), ``topup_id``
(TopUpRequest), ``usage_id`` (UsageRecord), ``transfer_id``. The walk fills each kwarg from
``REGISTRY``, whose factory returns the id of an object of the *other* tenant (company A / the
supplier North Keys). A kwarg not in the registry fails the walk: add its factory there, in the
same commit as the page.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from tests.cabinets.conftest import verified_client

pytestmark = pytest.mark.django_db

PERSONAL = {"cabinets:mfa", "cabinets:mfa_devices", "cabinets:mfa_recovery", "cabinets:mfa_replace", "cabinets:reauth"}
#: Words only company A's and the supplier's pages may contain.
FOREIGN_MARKERS = ["Company A", "North Keys", "walk-marker"]


@dataclass(frozen=True)
class CabinetUrl:
    name: str  # "cabinets:company:token"
    kwargs: tuple[str, ...]

    @property
    def cabinet(self) -> str:
        parts = self.name.split(":")
        return parts[1] if len(parts) > 2 else ""


def cabinet_urls() -> list[CabinetUrl]:
    """Every named URL pattern under the ``cabinets`` namespace, with its kwarg names."""

    def walk(patterns, namespace: str) -> Iterator[CabinetUrl]:
        for entry in patterns:
            if isinstance(entry, URLResolver):
                inner = f"{namespace}:{entry.namespace}" if namespace and entry.namespace else (entry.namespace or namespace)
                yield from walk(entry.url_patterns, inner)
            elif isinstance(entry, URLPattern) and namespace.split(":")[0] == "cabinets":
                if not entry.name:
                    pytest.fail(f"A cabinet URL has no name ({entry.pattern}); name it so the walk and reverse() can find it")
                yield CabinetUrl(f"{namespace}:{entry.name}", tuple(entry.pattern.regex.groupindex))

    return sorted(set(walk(get_resolver().url_patterns, "")), key=lambda u: u.name)


# --- the registry: a kwarg name → the id of the other tenant's object --------------------------

def _department(p, c):
    return c.department.pk


def _member(p, c):
    from apps.accounts.models import Membership

    return Membership.objects.get(user=p.manager_a, company=p.company_a).pk


def _invitation(p, c):
    from apps.accounts import services

    return services.invite(email="walk-marker@example.com", role="viewer", invited_by=p.manager_a, company=p.company_a).invitation.pk


def _withdrawal(p, c):
    from apps.billing.models import WithdrawalRequest

    return WithdrawalRequest.objects.create(supplier=p.supplier, amount=1_000_000, idempotency_id="walk-marker-withdrawal",
                                            hold=c.transfer).pk


def _document(p, c):
    import datetime as dt
    from decimal import Decimal

    from apps.invoicing.models import Document

    return Document.objects.create(kind="invoice", year=2026, number=9001, date=dt.date(2026, 1, 1), company=p.company_a,
                                   amount=1_000_000, vat_percent=Decimal("22.00"), vat_amount=180_328, pdf=b"", sha256="0" * 64).pk


def _topup(p, c):
    from apps.invoicing.models import TopUpRequest

    return TopUpRequest.objects.create(company=p.company_a, amount=1_000_000, request_key="walk-marker-topup").pk


REGISTRY: dict[str, Callable] = {
    "token_id": lambda p, c: c.token.pk,
    "department_id": _department,
    "member_id": _member,
    "invitation_id": _invitation,
    "key_id": lambda p, c: c.supplier_key.pk,
    "withdrawal_id": _withdrawal,
    "invoice_id": _document,
    "document_id": _document,
    "topup_id": _topup,
    "usage_id": lambda p, c: c.usage.pk,
    "request_id": lambda p, c: c.usage.request_id,
    "transfer_id": lambda p, c: c.transfer.pk,
    "company_id": lambda p, c: p.company_a.pk,  # operator pages (a company × model coefficient)
    "model_id": lambda p, c: c.model.pk,
    "fmt": lambda p, c: "jsonl",  # not an object: an export's format (the audit trail's JSON lines)
}
#: URL kwargs that name no object (a format): a URL with only these is a tenant's own page, like one with none.
NON_OBJECT_KWARGS = {"fmt"}


class Kwargs:
    """Fills URL kwargs from ``REGISTRY``, each object made once per test."""

    def __init__(self, personas, catalog) -> None:
        self.personas, self.catalog, self.made = personas, catalog, {}

    def __call__(self, url: CabinetUrl) -> dict:
        unknown = [name for name in url.kwargs if name not in REGISTRY]
        if unknown:
            pytest.fail(f"{url.name} takes {', '.join(unknown)}, which the isolation walk cannot fill: add a factory for it "
                        f"to REGISTRY in tests/cabinets/test_isolation.py (it returns the other tenant's object id; "
                        f"see the naming rule in the module docstring)")
        for name in url.kwargs:
            if name not in self.made:
                self.made[name] = REGISTRY[name](self.personas, self.catalog)
        return {name: self.made[name] for name in url.kwargs}


def _visitors(personas, cabinet: str) -> list[tuple[str, object, bool]]:
    """(label, user, has a cabinet of this kind of their own) for the personas outside the tenant."""
    if cabinet == "company":
        return [("outsider", personas.outsider, False), ("supplier", personas.supplier_user, False),
                ("manager_b", personas.manager_b, True)]
    if cabinet == "supplier":
        return [("outsider", personas.outsider, False), ("manager_a", personas.manager_a, False),
                ("manager_b", personas.manager_b, False)]
    return [("outsider", personas.outsider, False), ("manager_a", personas.manager_a, False),
            ("supplier", personas.supplier_user, False)]


def _refused(response) -> bool:
    if response.status_code in (403, 404, 405):
        return True
    if response.status_code == 302:
        location = response["Location"]
        return location.startswith((reverse("account_login"), reverse("cabinets:mfa"), reverse("cabinets:reauth")))
    return False


def _body(response) -> bytes:
    """The whole body, a streamed one included (an async iterator, as an ASGI export streams, is drained)."""
    if not response.streaming:
        return response.content
    content = response.streaming_content
    if hasattr(content, "__aiter__"):
        from asgiref.sync import async_to_sync

        async def drain() -> bytes:
            return b"".join([chunk async for chunk in content])

        return async_to_sync(drain)()
    return b"".join(content)


def _assert_nothing_foreign(response, where: str) -> None:
    body = _body(response)
    text = body.decode(errors="replace")
    for marker in FOREIGN_MARKERS:
        assert marker not in text, f"{where}: the page shows {marker!r}"


def test_it_walks_every_cabinet_url_and_shows_no_one_anothers_data(personas, catalog):
    urls = cabinet_urls()
    names = {u.name for u in urls}
    assert {"cabinets:company:dashboard", "cabinets:supplier:dashboard", "cabinets:operator:dashboard"} <= names
    kwargs = Kwargs(personas, catalog)
    for url in urls:
        path = reverse(url.name, kwargs=kwargs(url))
        if url.name in PERSONAL:
            for label, user in (("outsider", personas.outsider), ("manager_b", personas.manager_b)):
                _assert_nothing_foreign(verified_client(user).get(path), f"GET {path} as {label}")
            continue
        for label, user, own_cabinet in _visitors(personas, url.cabinet):
            for method in ("get", "post"):
                response = getattr(verified_client(user), method)(path)
                where = f"{method.upper()} {path} ({url.name}) as {label}: {response.status_code}"
                if not (own_cabinet and not set(url.kwargs) - NON_OBJECT_KWARGS):
                    assert _refused(response), where
                _assert_nothing_foreign(response, where)
        anonymous = Client().get(path)
        assert anonymous.status_code == 302 and anonymous["Location"].startswith(reverse("account_login")), path


def test_it_fails_a_page_whose_kwarg_is_not_in_the_registry(personas, catalog):
    with pytest.raises(pytest.fail.Exception, match="add a factory for it to REGISTRY"):
        Kwargs(personas, catalog)(CabinetUrl("cabinets:company:gadget", ("gadget_id",)))
