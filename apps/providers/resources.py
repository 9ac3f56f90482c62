"""django-import-export resources for the model catalogue and its prices.

Models are keyed by their public name (an import updates the named model or adds it). Prices are
versions: every imported row becomes a new Price; an existing price is never looked up, so it
can never be updated (a row repeating a model's valid_from fails on the version constraint).
Amounts are exact decimal text in the price's currency per 1M tokens ("0.15"), as in the admin form.
"""

from __future__ import annotations

from typing import Any

from django.utils import timezone
from django.utils.translation import gettext
from import_export import fields, resources, widgets

from apps.providers.models import Model, Price, Provider
from lib.spreadsheets import MicroAmountWidget, SpreadsheetSafeMixin


class LookupWidget(widgets.ForeignKeyWidget):
    """A foreign key named by a unique field; an unknown name is a row error, not a traceback."""

    def clean(self, value: Any, row: dict | None = None, **kwargs: Any):
        try:
            return super().clean(value, row, **kwargs)
        except self.model.DoesNotExist:
            raise ValueError(gettext("No %(model)s with %(field)s “%(value)s”.") % {
                "model": self.model._meta.verbose_name, "field": self.field, "value": str(value)[:128]}) from None


class ModelResource(SpreadsheetSafeMixin, resources.ModelResource):
    provider = fields.Field(attribute="provider", column_name="provider", widget=LookupWidget(Provider, field="slug"))

    class Meta:
        model = Model
        import_id_fields = ["name"]
        fields = ["name", "provider", "upstream_model", "modality", "context_window", "max_output_tokens", "fallbacks", "routing",
                  "is_active"]
        export_order = fields
        clean_model_instances = True
        skip_unchanged = True
        report_skipped = True


class PriceResource(SpreadsheetSafeMixin, resources.ModelResource):
    id = fields.Field(attribute="id", column_name="id", readonly=True)
    model = fields.Field(attribute="model", column_name="model", widget=LookupWidget(Model, field="name"))
    input_per_1m = fields.Field(attribute="input_per_1m", column_name="input_per_1m", widget=MicroAmountWidget())
    output_per_1m = fields.Field(attribute="output_per_1m", column_name="output_per_1m", widget=MicroAmountWidget())
    cached_input_per_1m = fields.Field(attribute="cached_input_per_1m", column_name="cached_input_per_1m",
                                       widget=MicroAmountWidget())
    valid_from = fields.Field(attribute="valid_from", column_name="valid_from", widget=widgets.DateTimeWidget(),
                              default=timezone.now)

    class Meta:
        model = Price
        fields = ["id", "model", "currency", "input_per_1m", "output_per_1m", "cached_input_per_1m", "valid_from"]
        export_order = fields
        # Never look up an existing row: an import only ever adds price versions.
        force_init_instance = True
        clean_model_instances = True

    def before_import_row(self, row: Any, **kwargs: Any) -> None:
        # An empty cached price means "same as input", as in the admin form.
        if row.get("cached_input_per_1m") in (None, "") and "input_per_1m" in row:
            row["cached_input_per_1m"] = row["input_per_1m"]
