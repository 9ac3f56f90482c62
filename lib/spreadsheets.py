"""django-import-export helpers every app's resources share: exact amounts, formula-safe cells,
export-only resources.
"""

from __future__ import annotations

from typing import Any

from import_export import fields, resources, widgets

from lib.money import MoneyFormatError, format_rub, to_micro


class MicroAmountWidget(widgets.Widget):
    """Integer micro-units ⇄ exact decimal text in whole units ("0.15"); never a float."""

    def clean(self, value: Any, row: dict | None = None, **kwargs: Any) -> int | None:
        """A cell → integer micro-units, or None for an empty cell. Raises ``ValueError`` (reported on
        the row) for anything ``lib.money.to_micro`` refuses."""
        if value is None or str(value).strip() == "":
            return None
        if isinstance(value, float):
            # Spreadsheet cells arrive as floats; their shortest repr is the number the user typed.
            value = repr(value)
        try:
            return to_micro(str(value).strip())
        except MoneyFormatError as exc:
            raise ValueError(str(exc)) from None

    def render(self, value: Any, obj: Any = None, **kwargs: Any) -> str:
        """Integer micro-units → exact decimal text (1_500_000 → "1.5"); None → ""."""
        if value is None:
            return ""
        return format_rub(value, 0, exact=True)


# A cell starting with one of these is run as a formula by spreadsheet programs (CSV injection);
# request ids, model names and descriptions come from API clients, so exports defuse them.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value: Any) -> Any:
    """``value``, or for text a spreadsheet would run as a formula (``=``, ``+``, ``-``, ``@``, a tab or
    a CR first) the same text after a ``'`` — for exports written without django-import-export."""
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


class SpreadsheetSafeMixin:
    """Exports a text cell that a spreadsheet would run as a formula with a leading quote."""

    def export_field(self, field: fields.Field, instance: Any, **kwargs: Any) -> Any:
        """The field's exported value; text starting with ``=``, ``+``, ``-``, ``@``, a tab or a CR gets a
        leading ``'`` so a spreadsheet shows it instead of running it."""
        value = super().export_field(field, instance, **kwargs)  # type: ignore[misc]
        if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
            return "'" + value
        return value


def rub_field(attribute: str, column_name: str) -> fields.Field:
    """A read-only export column: the integer micro-unit ``attribute`` as exact decimal text ("1.5")."""
    return fields.Field(attribute=attribute, column_name=column_name, widget=MicroAmountWidget(), readonly=True)


class ExportOnlyResource(SpreadsheetSafeMixin, resources.ModelResource):
    """Refuses to import whatever the admin wiring: these rows are written only by services."""

    def import_data(self, *args: Any, **kwargs: Any):
        """Always raises ``PermissionError``: these rows are never imported."""
        raise PermissionError(f"{type(self).__name__} is export-only")
