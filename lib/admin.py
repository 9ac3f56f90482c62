"""Helpers every app's admin module shares: amount fields and columns, spreadsheet formats, and
the read-only, append-only and export-permission mixins.

Amounts are integer micro-units (micro-rubles, or micro-units of a price's currency); pages
show and take them as decimal text, never as floats.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeAlias

from django import forms
from django.core.exceptions import ValidationError
from django.db.models import Model as DjangoModel
from django.http import HttpRequest
from django.utils.text import capfirst
from django.utils.translation import gettext_lazy as _
from import_export.formats import base_formats

from lib.money import MoneyFormatError, format_rub, to_micro

if TYPE_CHECKING:
    from django.contrib.admin.options import _FieldGroups
    from django_stubs_ext import StrOrPromise

    # What ModelAdmin.get_fields returns in django-stubs (a private alias there), for overrides.
    # Its lists are invariant: return a list display (``[*names]``), not a list[str] variable.
    FieldGroups: TypeAlias = _FieldGroups

# The file formats offered for export and import. XLSX is offered only while openpyxl is installed.
SPREADSHEET_FORMATS = [f for f in (base_formats.CSV, base_formats.XLSX) if f.is_available()]

_BIGINT_MAX = 2**63 - 1  # the amount columns are PostgreSQL bigint


class MicroAmountField(forms.Field):
    """An amount typed as a decimal string ("1500", "0.15") and cleaned to integer micro-units.

    Floats never appear: the text goes straight to ``lib.money.to_micro``. The bound initial
    value (an integer from the model) is shown back as the same exact decimal text.
    """

    widget = forms.TextInput
    max_chars = 32
    default_error_messages = {
        "invalid": _("Enter a non-negative amount with at most 6 decimal places, e.g. 1500 or 0.15."),
        "zero": _("The amount must be greater than zero."),
        "too_large": _("The amount is too large."),
    }

    def __init__(self, *, allow_zero: bool = True, **kwargs: Any) -> None:
        self.allow_zero = allow_zero
        if kwargs.get("label"):
            # Model fields get this from Django; declared form fields must do it themselves.
            kwargs["label"] = capfirst(kwargs["label"])
        super().__init__(**kwargs)

    def widget_attrs(self, widget: forms.Widget) -> dict[str, Any]:
        """Ask for a decimal keypad (``inputmode``) and cap the input at ``max_chars`` characters."""
        return {**super().widget_attrs(widget), "inputmode": "decimal", "maxlength": str(self.max_chars)}

    def prepare_value(self, value: Any) -> Any:
        """Show an integer micro-unit value as exact decimal text (1_500_000 → "1.5"); typed text as is."""
        if isinstance(value, int) and not isinstance(value, bool):
            return format_rub(value, 0, exact=True)
        return value

    def to_python(self, value: Any) -> int | None:
        """Typed text → integer micro-units, None when empty (spaces and no-break spaces dropped, "," read
        as "."). Raises ``ValidationError``: ``invalid`` (not an exact non-negative amount with at most
        6 decimals, or over ``max_chars``), ``too_large`` (beyond a bigint), ``zero`` (unless ``allow_zero``)."""
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if value in self.empty_values:
            return None
        text = str(value).strip().replace(" ", "").replace("\u00a0", "").replace(",", ".")
        if not text:
            return None
        if len(text) > self.max_chars:
            raise ValidationError(self.error_messages["invalid"], code="invalid")
        try:
            micro = to_micro(text)
        except MoneyFormatError:
            raise ValidationError(self.error_messages["invalid"], code="invalid") from None
        if micro > _BIGINT_MAX:
            raise ValidationError(self.error_messages["too_large"], code="too_large")
        if micro == 0 and not self.allow_zero:
            raise ValidationError(self.error_messages["zero"], code="zero")
        return micro


class MappingField(forms.JSONField):
    """A JSON mapping typed into a form: empty means ``{}`` (a model's non-null JSON default), not
    ``None`` — which Django would store as SQL NULL and the database refuse."""

    def to_python(self, value: Any) -> Any:
        """The parsed JSON, ``{}`` for an empty input. Raises ``ValidationError`` for invalid JSON."""
        parsed = super().to_python(value)
        return {} if parsed is None else parsed


def rub_column(
    field: str,
    description: StrOrPromise,
    *,
    ordering: bool = True,
    places: int = 2,
    exact: bool = False,
    currency: Callable[[Any], str] | None = None,
) -> Callable[[Any, DjangoModel], str]:
    """A list/detail column showing the integer micro-unit attribute ``field`` of a row as money.

    ``"1234.57 ₽"`` by default; ``places``/``exact`` are those of ``lib.money.format_rub``;
    ``currency(obj)`` names another currency shown instead of "₽" (a price's USD). An empty
    value shows "—". ``ordering`` sorts the column by ``field`` (a database column or annotation).
    """

    def column(self: Any, obj: DjangoModel) -> str:
        value = getattr(obj, field)
        if value is None:
            return "—"
        unit = "₽" if currency is None else currency(obj)
        return f"{format_rub(value, places, exact=exact)} {unit}"

    column.short_description = description  # type: ignore[attr-defined]
    if ordering:
        column.admin_order_field = field  # type: ignore[attr-defined]
    column.__name__ = f"{field}_rub"
    return column


class ViewOnlyAdminMixin:
    """History: visible, never added, changed or deleted through the admin."""

    def has_add_permission(self, request: HttpRequest, obj: DjangoModel | None = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: DjangoModel | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: DjangoModel | None = None) -> bool:
        return False


class AppendOnlyAdminMixin:
    """Versioned rows: new versions are added, existing ones are only viewed, nothing is deleted."""

    def has_change_permission(self, request: HttpRequest, obj: DjangoModel | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: DjangoModel | None = None) -> bool:
        return False


class ExportPermissionMixin:
    """Export (and import, where mixed in) follow the model permissions, not a blanket yes."""

    def has_export_permission(self, request: HttpRequest) -> bool:
        return self.has_view_permission(request)  # type: ignore[attr-defined]

    def has_import_permission(self, request: HttpRequest) -> bool:
        return self.has_add_permission(request)  # type: ignore[attr-defined]
