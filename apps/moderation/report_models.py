"""The moderation report: one row per finding the policy acted on (log, mask or block).

Kept in a module of its own so the policy model (``models.py``) and the report can change
independently; ``models.py`` imports it so Django registers it with the app.
"""

from __future__ import annotations

from django.db import models
from django.utils.translation import gettext_lazy as _

from .findings import Action, Category, Direction


class ModerationReport(models.Model):
    """A logged, masked or blocked finding of one request (``request_id`` is the usage record's).

    ``snippet`` is the text around the finding with every detected value replaced by its category's
    stem (``[PHONE]``): the report never holds the value itself. Written off the hot path
    (``reports.write_report_batch``), idempotently by (request id, position)."""

    request_id = models.CharField(_("request id"), max_length=64, db_index=True)
    position = models.PositiveIntegerField(_("position in the request"), default=0)
    company = models.ForeignKey("accounts.Company", on_delete=models.CASCADE, related_name="moderation_reports",
                                verbose_name=_("company"))
    token = models.ForeignKey("proxy.ApiToken", on_delete=models.SET_NULL, null=True, blank=True,
                              related_name="moderation_reports", verbose_name=_("token"))
    # No choices: the vocabulary (findings.Category) grows without a migration; ``category_label`` names it.
    category = models.CharField(_("category"), max_length=32)
    detector = models.CharField(_("detector"), max_length=32)
    action = models.CharField(_("action"), max_length=8, choices=[(Action.LOG.value, _("logged")), (Action.MASK.value, _("masked")),
                                                                   (Action.BLOCK.value, _("blocked"))])
    direction = models.CharField(_("direction"), max_length=8, choices=[(Direction.PROMPT.value, _("prompt")),
                                                                        (Direction.RESPONSE.value, _("response"))])
    content_type = models.CharField(_("content type"), max_length=16, default="text")
    snippet = models.CharField(_("masked snippet"), max_length=240, blank=True)
    # The request's placeholder mapping, sealed with lib.crypto, on its first row — only when the
    # policy keeps mappings (``masking.Masker.sealed``); "" otherwise.
    sealed_mapping = models.TextField(_("sealed placeholder mapping"), blank=True)
    rerouted = models.BooleanField(_("routed to a sensitive-data route"), default=False)
    created_at = models.DateTimeField(_("time"), db_index=True)

    class Meta:
        verbose_name = _("moderation report")
        verbose_name_plural = _("moderation reports")
        ordering = ["-created_at", "request_id", "position"]
        constraints = [models.UniqueConstraint(fields=["request_id", "position"], name="moderation_report_once")]
        indexes = [models.Index(fields=["company", "-created_at"], name="moderation_report_company")]

    def __str__(self) -> str:
        return f"{self.request_id}: {self.category} {self.action}"

    @property
    def category_label(self) -> str:
        """The category's human name (translated); the raw value for a code that is no category
        (``image_not_allowed``, ``sensitive_route_unavailable``)."""
        try:
            return Category(self.category).label
        except ValueError:
            return self.category
