"""The demo's money: usage that accrues to two suppliers, a pending withdrawal, a paid invoice.

``jetstream_demo`` applies demo/demo.yaml (suppliers with keys, a priced model, a company with a
department budget and a second token) and then calls ``populate``, which goes through the same
doors as real traffic and real people:

- synthetic usage events, priced exactly as the proxy prices them (``lib.money.cost_micro`` with
  the model's current price version, the FX rate in force, the company's sell coefficient for the
  model and the serving key's buy coefficient), written by billing's ``record_usage_batch`` — so
  the demo company's wallet is charged and each supplier's payable accrues. Half of the events are
  older than the supplier holding period (their accruals are withdrawable), half are recent (this
  month's reports, the department's budget, the provider's last-hour figures); a few are upstream
  errors, so the error columns have data;
- a withdrawal request of half the first supplier's available balance (``request_supplier_withdrawal``),
  left pending for the superadmin to approve or reject;
- a top-up request, its invoice and the confirmed payment (``apps/invoicing/services.py``).

Idempotent: every event, transfer and request has a fixed id, so a second run finds them and
moves nothing. The events' times are relative to the first run.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from decimal import Decimal

from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from apps.accounts.models import Company, CompanyModelCoefficient, Department, Supplier
from apps.billing import suppliers
from apps.billing.models import FxRate, UsageRecord, UsageStatus, WithdrawalRequest
from apps.billing.usage import UsageEvent
from apps.billing.usage_records import record_usage_batch
from apps.invoicing import services as invoicing
from apps.invoicing.exceptions import RequisitesMissing
from apps.invoicing.models import TopUpRequest
from apps.providers.models import Model, Price, SupplierKey
from apps.proxy.models import ApiToken
from lib.money import MICRO, cost_micro, format_rub

logger = logging.getLogger(__name__)

COMPANY, DEPARTMENT, TOKEN, MODEL = "demo", "research", "reports", "gpt-4o-mini"
EVENTS = 24  # of which every sixth is an upstream error
REQUEST_PREFIX = "demo-usage-"
WITHDRAWAL_ID = "demo-withdrawal-1"
TOP_UP_KEY, TOP_UP_AMOUNT = "demo-invoice-1", 5_000 * MICRO
PAYOUT_DETAILS = {"recipient": "ООО «Норд Кейс»", "inn": "7700000001", "bank_name": "АО «Демо Банк»", "bik": "044500000",
                  "account_number": "40702810900000000002", "correspondent_account": "30101810400000000000"}


@dataclass
class DemoMoney:
    """What ``populate`` found or made, for the demo's summary (amounts in micro-RUB)."""

    usage_written: int = 0
    usage_total: int = 0
    spent: int = 0
    accrued: dict[str, int] = field(default_factory=dict)  # supplier name → buy cost accrued
    withdrawal: WithdrawalRequest | None = None
    top_up: TopUpRequest | None = None
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """The summary, one line per item (translated)."""
        out = [_("Usage: %(total)s demo requests of %(model)s (%(new)s new), %(spent)s RUB charged to the demo company")
               % {"total": self.usage_total, "model": MODEL, "new": self.usage_written, "spent": format_rub(self.spent)}]
        out += [_("Supplier %(name)s: %(amount)s RUB accrued") % {"name": name, "amount": format_rub(amount)}
                for name, amount in sorted(self.accrued.items())]
        if self.withdrawal is not None:
            out.append(_("Withdrawal request #%(pk)s of %(supplier)s: %(amount)s RUB, %(status)s") % {
                "pk": self.withdrawal.pk, "supplier": self.withdrawal.supplier.name,
                "amount": format_rub(self.withdrawal.amount), "status": self.withdrawal.get_status_display()})
        if self.top_up is not None:
            out.append(_("Top-up request #%(pk)s: invoice № %(number)s for %(amount)s RUB, %(status)s") % {
                "pk": self.top_up.pk, "number": self.top_up.invoice.number if self.top_up.invoice else "—",
                "amount": format_rub(self.top_up.amount), "status": self.top_up.get_status_display()})
        return out + self.notes


def populate(*, now: dt.datetime | None = None) -> DemoMoney:
    """Make (or find) the demo's usage, withdrawal and paid invoice; see the module docstring.

    Needs demo/demo.yaml applied. Runs in one transaction. Raises what billing's and invoicing's
    services raise, except ``RequisitesMissing`` (no invoice then; ``DemoMoney.notes`` says why)."""
    now = now or timezone.now()
    result = DemoMoney()
    with transaction.atomic():
        company = Company.objects.get(slug=COMPANY)
        _usage(company, now, result)
        _withdrawal(result, now)
        _paid_invoice(company, result)
    return result


def _coefficient(company: Company, model: Model) -> Decimal:
    row = CompanyModelCoefficient.objects.filter(company=company, model=model).first()
    return row.sell_coefficient if row is not None else company.effective_sell_coefficient


def _usage(company: Company, now: dt.datetime, result: DemoMoney) -> None:
    model = Model.objects.select_related("provider").get(name=MODEL)
    price = Price.objects.current_for(model)
    fx = FxRate.objects.filter(currency=price.currency, valid_from__lte=now).order_by("-valid_from").first()
    keys = list(SupplierKey.objects.select_related("supplier").filter(provider=model.provider).order_by("pk"))
    token = ApiToken.objects.get(company=company, name=TOKEN)
    department = Department.objects.get(company=company, slug=DEPARTMENT)
    assert fx is not None and keys, "demo/demo.yaml declares the model's FX rate and keys"
    coefficient = _coefficient(company, model)
    matured = suppliers.hold_days() + 1
    events = []
    for i in range(EVENTS):
        key = keys[i % len(keys)]
        # Half older than the holding period (withdrawable), half within the last hour.
        started = now - (dt.timedelta(days=matured + i) if i % 2 else dt.timedelta(minutes=2 + i))
        events.append(_event(i, started, key=key, token=token, department=department, price=price, fx=fx.rub_per_unit,
                             coefficient=coefficient))
    existing = set(UsageRecord.objects.filter(request_id__startswith=REQUEST_PREFIX).values_list("request_id", flat=True))
    written = record_usage_batch(events=[e for e in events if e.request_id not in existing]).written
    result.usage_written = len(written)
    records = UsageRecord.objects.filter(request_id__startswith=REQUEST_PREFIX)
    result.usage_total = records.count()
    result.spent = sum(r.sell_cost for r in records)
    for key in keys:
        result.accrued[key.supplier.name] = result.accrued.get(key.supplier.name, 0) + sum(
            r.buy_cost for r in records if r.supplier_key_id == key.pk)


def _event(i: int, started: dt.datetime, *, key: SupplierKey, token: ApiToken, department: Department, price: Price,
           fx: int, coefficient: Decimal) -> UsageEvent:
    """The ``i``-th synthetic request: a 502 upstream error every sixth (no tokens, no cost), else a
    chat answer with deterministic token counts priced like the proxy prices one."""
    failed = i % 6 == 5
    input_tokens, cached, output = (0, 0, 0) if failed else (800 + 137 * i, (100 * i) % 400, 150 + 61 * i)
    latency = 350 + 45 * i
    units = [(input_tokens - cached, price.input_per_1m), (cached, price.cached_input_per_1m), (output, price.output_per_1m)]
    sell = cost_micro(tokens_by_price=units, fx_micro=fx, coefficient=coefficient)
    buy = cost_micro(tokens_by_price=units, fx_micro=fx, coefficient=key.buy_coefficient)
    code = "upstream_unavailable" if failed else ""
    return UsageEvent(
        request_id=f"{REQUEST_PREFIX}{i:03d}", endpoint="chat",
        status=UsageStatus.UPSTREAM_ERROR if failed else UsageStatus.OK, http_status=502 if failed else 200,
        started_at=started.timestamp(), finished_at=started.timestamp() + latency / 1000,
        token_id=token.pk, company_id=token.company_id, department_id=department.pk, model_name=price.model.name,
        model_id=price.model_id, provider_id=key.provider_id, supplier_key_id=key.pk, supplier_id=key.supplier_id,
        price_id=price.pk, fx_rub_per_unit=fx, input_tokens=input_tokens, output_tokens=output, cached_tokens=cached,
        sell_cost=sell, buy_cost=buy, error_type="upstream_error" if failed else "", error_code=code, latency_ms=latency,
        ttft_ms=None, attempts=[{"key": key.pk, "status": 502 if failed else 200, "code": code, "ms": latency}])


def _withdrawal(result: DemoMoney, now: dt.datetime) -> None:
    existing = WithdrawalRequest.objects.select_related("supplier").filter(idempotency_id=WITHDRAWAL_ID).first()
    if existing is not None:
        result.withdrawal = existing
        return
    supplier = Supplier.objects.filter(slug="north-keys").first()
    if supplier is None:
        return
    available = suppliers.supplier_balance(supplier, now=now).available
    amount = available // 2 // 10_000 * 10_000  # half, in whole kopecks
    if amount <= 0:
        result.notes.append(_("No withdrawal request: %(name)s has nothing withdrawable yet (holding period %(days)s days).")
                            % {"name": supplier.name, "days": suppliers.hold_days()})
        return
    result.withdrawal = suppliers.request_supplier_withdrawal(supplier=supplier, amount=amount, idempotency_id=WITHDRAWAL_ID,
                                                              details=PAYOUT_DETAILS)


def _paid_invoice(company: Company, result: DemoMoney) -> None:
    request = invoicing.request_top_up(company=company, amount=TOP_UP_AMOUNT, request_key=TOP_UP_KEY)
    try:
        with transaction.atomic():
            invoicing.issue_invoice(top_up_request=request)
    except RequisitesMissing as exc:
        result.notes.append(_("No invoice: %(reason)s") % {"reason": exc})
        result.top_up = TopUpRequest.objects.get(pk=request.pk)
        return
    invoicing.confirm_payment(top_up_request=request)
    result.top_up = TopUpRequest.objects.select_related("invoice").get(pk=request.pk)
