"""Superadmin pages for top-up requests, company requisites and issued documents.

Pages only call services (apps/invoicing/services.py): a top-up request is added through
``request_top_up`` (the form carries a one-time key, so a double-submitted form makes one
request); the buttons on its page and the list actions issue the invoice, confirm the payment
or cancel it. Documents are view-only; their PDF downloads from the document's page, and
"Issue a closing act" issues a month's closing act on demand. "Credit a company directly" (on the
top-up requests' list) credits a wallet without an invoice.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import TYPE_CHECKING, Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from apps.billing.exceptions import LedgerError
from apps.invoicing import services
from apps.invoicing.amounts import format_amount
from apps.invoicing.exceptions import InvoicingError
from apps.invoicing.models import CompanyRequisites, Document, DocumentSequence, TopUpRequest
from lib.admin import MicroAmountField, ViewOnlyAdminMixin, rub_column

if TYPE_CHECKING:
    from django.urls import URLPattern

    from lib.admin import FieldGroups


@admin.register(CompanyRequisites)
class CompanyRequisitesAdmin(admin.ModelAdmin):
    list_display = ["company", "legal_name", "inn", "kpp", "contract"]
    search_fields = ["company__name", "company__slug", "legal_name", "=inn"]
    list_select_related = ["company"]
    autocomplete_fields = ["company"]


class TopUpRequestForm(forms.ModelForm):
    amount = MicroAmountField(label=_("amount, RUB"), allow_zero=False, help_text=_("Whole kopecks, e.g. 15000 or 1500.50."))
    # One key per rendered form: submitting the same form twice makes one request. Not the model
    # field itself, so the form does not refuse a repeated key (request_top_up returns its request).
    form_key = forms.CharField(widget=forms.HiddenInput, max_length=90)

    class Meta:
        model = TopUpRequest
        fields = ["company", "amount"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["form_key"].initial = str(uuid.uuid4())

    def clean_amount(self) -> int:
        try:
            return services.check_top_up_amount(self.cleaned_data["amount"])
        except InvoicingError as exc:
            raise ValidationError(str(exc)) from None


class DirectCreditForm(forms.Form):
    company: forms.ModelChoiceField = forms.ModelChoiceField(label=_("Company"), queryset=None)
    amount = MicroAmountField(label=_("amount, RUB"), allow_zero=False, help_text=_("Whole kopecks, e.g. 15000 or 1500.50."))
    description = forms.CharField(label=_("Description"), max_length=200, required=False,
                                  help_text=_("What the money is, e.g. the payment order's number."))
    form_key = forms.CharField(widget=forms.HiddenInput, max_length=90)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        from apps.accounts.models import Company

        super().__init__(*args, **kwargs)
        self.fields["company"].queryset = Company.objects.order_by("name")  # type: ignore[attr-defined]
        self.fields["form_key"].initial = str(uuid.uuid4())

    def clean_amount(self) -> int:
        try:
            return services.check_top_up_amount(self.cleaned_data["amount"])
        except InvoicingError as exc:
            raise ValidationError(str(exc)) from None


_STEPS = {
    # button / action name: (service call, what the message says it did)
    "_issue_invoice": (lambda request, obj: services.issue_invoice(top_up_request=obj, issued_by=request.user),
                       _("Invoice issued for top-up request #%(pk)s.")),
    "_confirm_payment": (lambda request, obj: services.confirm_payment(top_up_request=obj, confirmed_by=request.user),
                         _("Payment confirmed for top-up request #%(pk)s; the wallet is credited.")),
    "_cancel": (lambda request, obj: services.cancel_top_up(top_up_request=obj, cancelled_by=request.user),
                _("Top-up request #%(pk)s cancelled.")),
}


@admin.register(TopUpRequest)
class TopUpRequestAdmin(admin.ModelAdmin):
    form = TopUpRequestForm
    change_form_template = "admin/invoicing/topuprequest/change_form.html"
    change_list_template = "admin/invoicing/topuprequest/change_list.html"
    list_display = ["id", "requested_at", "company", "amount_rub", "status", "requested_by", "invoice_link", "paid_at"]
    list_display_links = ["id", "requested_at"]
    list_filter = ["status"]
    search_fields = ["=id", "company__name", "company__slug"]
    list_select_related = ["company", "requested_by", "invoice"]
    autocomplete_fields = ["company"]
    date_hierarchy = "requested_at"
    actions = ["issue_invoices", "confirm_payments", "cancel_requests"]
    _view_fields = ["company", "amount_rub", "status", "request_key", "requested_by", "requested_at", "invoice_link",
                    "invoiced_at", "transfer", "paid_at", "confirmed_by", "cancelled_at", "cancelled_by"]

    amount_rub = rub_column("amount", _("amount, RUB"))

    @admin.display(description=_("invoice"))
    def invoice_link(self, obj: TopUpRequest) -> str:
        if obj.invoice is None:
            return "—"
        url = reverse("admin:invoicing_document_pdf", args=[obj.invoice.pk])
        return format_html('<a href="{}">{}</a>', url, str(obj.invoice))

    def get_queryset(self, request: HttpRequest) -> QuerySet[TopUpRequest]:
        # The invoice's number for the column, not its PDF.
        # (ChangeList skips list_select_related once a queryset selects anything, so name them all.)
        return super().get_queryset(request).select_related(*self.list_select_related).defer("invoice__pdf", "invoice__details")

    def get_fields(self, request: HttpRequest, obj: TopUpRequest | None = None) -> FieldGroups:
        return ["company", "amount", "form_key"] if obj is None else [*self._view_fields]

    def get_readonly_fields(self, request: HttpRequest, obj: TopUpRequest | None = None) -> list[str]:
        # A request changes only through its steps (the buttons), never by editing fields.
        return [] if obj is None else [*self._view_fields]

    def has_delete_permission(self, request: HttpRequest, obj: TopUpRequest | None = None) -> bool:
        return False

    def get_form(self, request: HttpRequest, obj: TopUpRequest | None = None, change: bool = False, **kwargs: Any) -> Any:
        if obj is not None:
            kwargs["form"] = forms.ModelForm  # a request's page edits nothing; its buttons post the steps
        return super().get_form(request, obj, change, **kwargs)

    def save_model(self, request: HttpRequest, obj: TopUpRequest, form: forms.ModelForm, change: bool) -> None:
        if change:
            return  # nothing on a request's page is editable
        created = services.request_top_up(company=obj.company, amount=obj.amount, request_key=f"admin:{form.cleaned_data['form_key']}",
                                          requested_by=request.user)
        obj.pk, obj.status, obj.requested_by, obj.requested_at = created.pk, created.status, created.requested_by, created.requested_at
        obj._state.adding = False

    def response_change(self, request: HttpRequest, obj: TopUpRequest) -> HttpResponse:
        step = next((name for name in _STEPS if name in request.POST), None)
        if step is None:
            return super().response_change(request, obj)
        self._run_step(request, step, obj)
        return HttpResponseRedirect(request.path)

    def _run_step(self, request: HttpRequest, step: str, obj: TopUpRequest) -> bool:
        call, done = _STEPS[step]
        try:
            call(request, obj)
        except (InvoicingError, LedgerError) as exc:
            self.message_user(request, str(exc), messages.ERROR)
            return False
        self.log_change(request, obj, [{"changed": {"fields": [step.strip("_")]}}])
        self.message_user(request, done % {"pk": obj.pk}, messages.SUCCESS)
        return True

    def _run_action(self, request: HttpRequest, queryset: QuerySet[TopUpRequest], step: str) -> None:
        for obj in queryset.order_by("pk"):
            self._run_step(request, step, obj)

    def get_urls(self) -> list[URLPattern]:
        own = [path("credit/", self.admin_site.admin_view(self.credit_view), name="invoicing_topuprequest_credit")]
        return own + super().get_urls()

    def credit_view(self, request: HttpRequest) -> HttpResponse:
        """A form: company, amount, description → ``services.credit_directly`` (the form's one-time key
        makes a double submit one credit)."""
        if not request.user.is_superuser:
            raise PermissionDenied
        form = DirectCreditForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            data = form.cleaned_data
            try:
                transfer = services.credit_directly(company=data["company"], amount=data["amount"], credit_key=data["form_key"],
                                                    credited_by=request.user, description=data["description"])
            except (InvoicingError, LedgerError) as exc:
                form.add_error(None, str(exc))
            else:
                self.message_user(request, gettext("%(company)s credited with %(amount)s RUB (transfer #%(pk)s).") % {
                    "company": data["company"], "amount": format_amount(transfer.amount), "pk": transfer.pk}, messages.SUCCESS)
                return HttpResponseRedirect(reverse("admin:invoicing_topuprequest_changelist"))
        context = {**self.admin_site.each_context(request), "title": gettext("Credit a company directly"), "form": form,
                   "opts": self.model._meta, "submit": gettext("Credit the wallet")}
        return TemplateResponse(request, "admin/invoicing/form.html", context)

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        return super().changelist_view(request, {**(extra_context or {}), "can_credit": request.user.is_superuser})

    @admin.action(description=_("Issue invoices"), permissions=["change"])
    def issue_invoices(self, request: HttpRequest, queryset: QuerySet[TopUpRequest]) -> None:
        self._run_action(request, queryset, "_issue_invoice")

    @admin.action(description=_("Confirm payments (credit the wallets)"), permissions=["change"])
    def confirm_payments(self, request: HttpRequest, queryset: QuerySet[TopUpRequest]) -> None:
        self._run_action(request, queryset, "_confirm_payment")

    @admin.action(description=_("Cancel requests"), permissions=["change"])
    def cancel_requests(self, request: HttpRequest, queryset: QuerySet[TopUpRequest]) -> None:
        self._run_action(request, queryset, "_cancel")


class IssueActForm(forms.Form):
    company: forms.ModelChoiceField = forms.ModelChoiceField(label=_("Company"), queryset=None)
    month = forms.DateField(label=_("Month"), input_formats=["%Y-%m"], help_text=_("YYYY-MM, a month that has ended."),
                            widget=forms.TextInput(attrs={"placeholder": "2026-11"}))

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        from apps.accounts.models import Company

        super().__init__(*args, **kwargs)
        self.fields["company"].queryset = Company.objects.order_by("name")  # type: ignore[attr-defined]
        last = timezone.localdate().replace(day=1) - dt.timedelta(days=1)
        self.fields["month"].initial = last.strftime("%Y-%m")


@admin.register(Document)
class DocumentAdmin(ViewOnlyAdminMixin, admin.ModelAdmin):
    change_list_template = "admin/invoicing/document/change_list.html"
    list_display = ["__str__", "date", "company", "amount_rub", "vat_rub", "period_start", "download", "created_at"]
    list_filter = ["kind", "year"]
    search_fields = ["=number", "company__name", "company__slug", "=sha256"]
    list_select_related = ["company"]
    date_hierarchy = "date"
    readonly_fields = ["kind", "year", "number", "date", "company", "amount_rub", "vat_percent", "vat_rub", "period_start",
                       "period_end", "sha256", "download", "created_by", "created_at"]
    fields = [*readonly_fields]

    amount_rub = rub_column("amount", _("amount incl. VAT, RUB"))
    vat_rub = rub_column("vat_amount", _("VAT, RUB"))

    def get_queryset(self, request: HttpRequest) -> QuerySet[Document]:
        # The PDF stays in the database until someone downloads it.
        return super().get_queryset(request).defer("pdf")

    @admin.display(description=_("PDF"))
    def download(self, obj: Document) -> str:
        return format_html('<a href="{}">{}</a>', reverse("admin:invoicing_document_pdf", args=[obj.pk]), obj.filename)

    def get_urls(self) -> list[URLPattern]:
        own = [
            path("<int:pk>/pdf/", self.admin_site.admin_view(self.pdf_view), name="invoicing_document_pdf"),
            path("issue-act/", self.admin_site.admin_view(self.issue_act_view), name="invoicing_document_issue_act"),
        ]
        return own + super().get_urls()

    def pdf_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        """The document's PDF as it was issued (an attachment named after the document)."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        document = get_object_or_404(Document, pk=pk)
        response = HttpResponse(bytes(document.pdf), content_type="application/pdf")
        response["Content-Disposition"] = f'attachment; filename="{document.filename}"'
        response["X-Content-SHA256"] = document.sha256
        return response

    def issue_act_view(self, request: HttpRequest) -> HttpResponse:
        """A form: company and month → ``services.issue_act`` (an act already issued is shown, not re-issued)."""
        if not request.user.has_perm("invoicing.add_document"):
            raise PermissionDenied
        form = IssueActForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            company, month = form.cleaned_data["company"], form.cleaned_data["month"]
            try:
                act = services.issue_act(company=company, year=month.year, month=month.month, issued_by=request.user)
            except InvoicingError as exc:
                form.add_error(None, str(exc))
            else:
                self.message_user(request, gettext("%(act)s for %(company)s, %(amount)s RUB.") % {
                    "act": act, "company": company, "amount": format_amount(act.amount)}, messages.SUCCESS)
                return HttpResponseRedirect(reverse("admin:invoicing_document_change", args=[act.pk]))
        context = {**self.admin_site.each_context(request), "title": gettext("Issue a closing act"), "form": form,
                   "opts": self.model._meta, "submit": gettext("Issue the act")}
        return TemplateResponse(request, "admin/invoicing/form.html", context)

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        can_issue = request.user.has_perm("invoicing.add_document")
        return super().changelist_view(request, {**(extra_context or {}), "can_issue_act": can_issue})


@admin.register(DocumentSequence)
class DocumentSequenceAdmin(ViewOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["kind", "year", "last_number"]
    list_filter = ["kind"]
