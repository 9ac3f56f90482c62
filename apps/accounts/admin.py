"""Superadmin pages for users (email login), companies, departments, suppliers and memberships."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.contrib.auth.forms import BaseUserCreationForm, UserChangeForm
from django.db.models import F, OuterRef, Subquery
from django.http import HttpRequest
from django.utils.translation import gettext_lazy as _

from apps.accounts import services
from apps.accounts.models import Company, CompanyModelCoefficient, Department, Invitation, Membership, Supplier, SupplierMembership, User
from apps.billing.models import Account, AccountKind
from lib.admin import MappingField, MicroAmountField, rub_column


class UserCreationForm(BaseUserCreationForm):
    """Email + password twice (the password validators run on it)."""

    class Meta:
        model = User
        fields = ["email", "full_name", "language"]


class UserEditForm(UserChangeForm):
    class Meta:
        model = User
        fields = "__all__"
        field_classes: dict[str, Any] = {}


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user", "company"]
    fields = ["company", "user", "role", "created_at"]
    readonly_fields = ["created_at"]


class SupplierMembershipInline(admin.TabularInline):
    model = SupplierMembership
    extra = 0
    autocomplete_fields = ["user", "supplier"]
    fields = ["supplier", "user", "role", "created_at"]
    readonly_fields = ["created_at"]


class UserMembershipInline(MembershipInline):
    fields = ["company", "role", "created_at"]


class UserSupplierMembershipInline(SupplierMembershipInline):
    fields = ["supplier", "role", "created_at"]


@admin.register(User)
class UserAdmin(DjangoUserAdmin):
    form = UserEditForm
    add_form = UserCreationForm
    list_display = ["email", "full_name", "language", "is_active", "is_staff", "is_superuser", "last_login", "date_joined"]
    list_filter = ["is_active", "is_staff", "is_superuser", "language"]
    search_fields = ["email", "full_name"]
    ordering = ["email"]
    date_hierarchy = "date_joined"
    filter_horizontal = ["groups", "user_permissions"]
    readonly_fields = ["last_login", "date_joined"]
    fieldsets = [
        (None, {"fields": ["email", "password"]}),
        (_("Personal info"), {"fields": ["full_name", "language"]}),
        (_("Permissions"), {"fields": ["is_active", "is_staff", "is_superuser", "groups", "user_permissions"]}),
        (_("Important dates"), {"fields": ["last_login", "date_joined"]}),
    ]
    add_fieldsets = [
        (None, {"classes": ["wide"], "fields": ["email", "full_name", "language", "password1", "password2"]}),
    ]

    def get_inlines(self, request: HttpRequest, obj: User | None) -> list[type[admin.options.InlineModelAdmin]]:
        return [] if obj is None else [UserMembershipInline, UserSupplierMembershipInline]


class CompanyForm(forms.ModelForm):
    fallbacks = MappingField(label=_("fallback chains"), required=False, help_text=Company._meta.get_field("fallbacks").help_text)

    class Meta:
        model = Company
        fields = ["name", "slug", "time_zone", "sell_coefficient", "data_residency", "fallbacks", "is_active"]


class DepartmentForm(forms.ModelForm):
    monthly_budget = MicroAmountField(
        label=_("monthly budget, RUB"), required=False,
        help_text=_("Spend cap per calendar month for all tokens of this department; empty = none."),
    )

    class Meta:
        model = Department
        fields = ["company", "parent", "slug", "name", "monthly_budget"]


class DepartmentInline(admin.TabularInline):
    model = Department
    form = DepartmentForm
    fk_name = "company"
    extra = 0
    autocomplete_fields = ["parent"]
    fields = ["slug", "name", "parent", "monthly_budget"]
    show_change_link = True


class CompanyMembershipInline(MembershipInline):
    fields = ["user", "role", "created_at"]


class ModelCoefficientInline(admin.TabularInline):
    """The company's per-model sell coefficients (in place of its own for those models)."""

    model = CompanyModelCoefficient
    extra = 0
    autocomplete_fields = ["model"]
    fields = ["model", "sell_coefficient"]


@admin.register(Company)
class CompanyAdmin(admin.ModelAdmin):
    form = CompanyForm
    list_display = ["name", "slug", "coefficient", "data_residency", "wallet_balance", "is_active", "created_at"]
    list_filter = ["is_active", "data_residency"]
    search_fields = ["name", "slug"]
    prepopulated_fields = {"slug": ["name"]}
    date_hierarchy = "created_at"
    fields = ["name", "slug", "time_zone", "sell_coefficient", "data_residency", "fallbacks", "is_active"]
    inlines = [DepartmentInline, ModelCoefficientInline, CompanyMembershipInline]

    def get_queryset(self, request: HttpRequest):
        wallet = Account.objects.filter(kind=AccountKind.COMPANY_WALLET, company=OuterRef("pk"))
        return super().get_queryset(request).annotate(
            _wallet_balance=Subquery(wallet.values(balance=F("posted_credits") - F("posted_debits"))[:1]))

    wallet_balance = rub_column("_wallet_balance", _("wallet balance, RUB"))

    @admin.display(description=_("sell coefficient"), ordering="sell_coefficient")
    def coefficient(self, company: Company) -> str:
        """The company's own coefficient, or the platform default it follows."""
        if company.sell_coefficient is not None:
            return str(company.sell_coefficient)
        return _("%(coef)s (platform default)") % {"coef": company.effective_sell_coefficient}


@admin.register(CompanyModelCoefficient)
class CompanyModelCoefficientAdmin(admin.ModelAdmin):
    """Every company's per-model sell coefficients in one list (each is also a company page's inline)."""

    list_display = ["company", "model", "sell_coefficient"]
    search_fields = ["company__name", "company__slug", "model__name"]
    list_filter = ["model"]
    list_select_related = ["company", "model"]
    autocomplete_fields = ["company", "model"]
    fields = ["company", "model", "sell_coefficient"]


@admin.register(Department)
class DepartmentAdmin(admin.ModelAdmin):
    form = DepartmentForm
    list_display = ["name", "slug", "company", "parent", "budget", "created_at"]
    search_fields = ["name", "slug", "company__name", "company__slug"]
    list_filter = ["company"]
    list_select_related = ["company", "parent__company"]
    autocomplete_fields = ["company", "parent"]
    date_hierarchy = "created_at"

    budget = rub_column("monthly_budget", _("monthly budget, RUB"))


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ["user", "company", "role", "created_at"]
    list_filter = ["role"]
    search_fields = ["user__email", "company__name", "company__slug"]
    list_select_related = ["user", "company"]
    autocomplete_fields = ["user", "company"]
    date_hierarchy = "created_at"


class SupplierSupplierMembershipInline(SupplierMembershipInline):
    fields = ["user", "role", "created_at"]


@admin.register(Supplier)
class SupplierAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "is_active", "created_at"]
    list_filter = ["is_active"]
    search_fields = ["name", "slug"]
    prepopulated_fields = {"slug": ["name"]}
    date_hierarchy = "created_at"
    fields = ["name", "slug", "is_active"]
    inlines = [SupplierSupplierMembershipInline]


@admin.register(SupplierMembership)
class SupplierMembershipAdmin(admin.ModelAdmin):
    list_display = ["user", "supplier", "role", "created_at"]
    list_filter = ["role"]
    search_fields = ["user__email", "supplier__name", "supplier__slug"]
    list_select_related = ["user", "supplier"]
    autocomplete_fields = ["user", "supplier"]
    date_hierarchy = "created_at"


@admin.register(Invitation)
class InvitationAdmin(admin.ModelAdmin):
    """Invitations as sent from the cabinets: read-only (they are made by ``services.invite``), with
    an action to revoke pending ones. The link's key is never shown (only its hash is stored)."""

    list_display = ["email", "company", "supplier", "role", "status", "expires_at", "invited_by", "created_at"]
    list_filter = ["status"]
    search_fields = ["email", "company__name", "supplier__name"]
    list_select_related = ["company", "supplier", "invited_by"]
    fields = ["email", "company", "supplier", "role", "status", "invited_by", "accepted_by", "created_at", "expires_at", "closed_at"]
    readonly_fields = fields
    actions = ["revoke_invitations"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.action(description=_("Revoke the selected pending invitations"))
    def revoke_invitations(self, request: HttpRequest, queryset: Any) -> None:
        """Revoke each selected invitation through the service (a no-op for one no longer pending)."""
        for invitation in queryset:
            services.revoke_invitation(invitation=invitation)
