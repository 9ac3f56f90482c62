from __future__ import annotations

from django.db import models
from django.utils.translation import gettext_lazy as _


class PolicyMode(models.TextChoices):
    OFF = "off", _("Off")
    MONITOR = "monitor", _("Monitor (log findings, send unchanged)")
    MASK = "mask", _("Mask (depersonalize before sending, restore in the answer)")
    BLOCK = "block", _("Block requests with findings")


class Policy(models.Model):
    """A company's data policy for prompts. The detectors themselves arrive in a later issue."""

    company = models.OneToOneField("accounts.Company", on_delete=models.CASCADE, related_name="policy", verbose_name=_("company"))
    mode = models.CharField(_("mode"), max_length=16, choices=PolicyMode.choices, default=PolicyMode.OFF)
    detect_email = models.BooleanField(_("e-mail addresses"), default=True)
    detect_phone = models.BooleanField(_("phone numbers"), default=True)
    detect_person_name = models.BooleanField(_("person names"), default=False)
    detect_passport = models.BooleanField(_("Russian passport numbers"), default=True)
    detect_snils = models.BooleanField(_("SNILS"), default=True)
    detect_inn = models.BooleanField(_("INN"), default=True)
    detect_bank_card = models.BooleanField(_("bank card numbers"), default=True)
    detect_secrets = models.BooleanField(_("API keys and passwords"), default=True)
    blocked_words = models.TextField(_("blocked words"), blank=True, help_text=_("One per line."))
    updated_at = models.DateTimeField(_("updated"), auto_now=True)

    class Meta:
        verbose_name = _("moderation policy")
        verbose_name_plural = _("moderation policies")

    def __str__(self) -> str:
        return f"{self.company}: {self.get_mode_display()}"


from .report_models import ModerationReport  # noqa: E402, F401 - registered with the app here
