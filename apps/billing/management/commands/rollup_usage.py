"""``manage.py rollup_usage``: recompute the daily usage rollup (``billing.UsageDay``) from the
usage records, or check it (``--check``). See ``apps/billing/rollups.py``."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.billing.models import UsageRecord
from apps.billing.rollups import check_usage_days, rebuild_usage_days


class Command(BaseCommand):
    help = "Recompute (or --check) the daily usage rollup from the usage records, for one company or all, from a day on."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--company", help="the company's slug (default: every company)")
        parser.add_argument("--since", type=dt.date.fromisoformat, help="first local day, YYYY-MM-DD (default: every day)")
        parser.add_argument("--check", action="store_true", help="only count the rollup rows that differ from a recount; exit 1 if any")

    def handle(self, *args: Any, **options: Any) -> None:
        company_id = None
        if options["company"]:
            company_model: Any = UsageRecord._meta.get_field("company").related_model
            company = company_model._default_manager.filter(slug=options["company"]).first()
            if company is None:
                raise CommandError(f"no company with the slug {options['company']!r}")
            company_id = company.pk
        if options["check"]:
            differing = check_usage_days(company_id=company_id, since=options["since"])
            if differing:
                raise CommandError(f"{differing} rollup rows differ from the records; run without --check to rebuild them")
            self.stdout.write(self.style.SUCCESS("The rollup matches the records."))
            return
        rebuilt = rebuild_usage_days(company_id=company_id, since=options["since"])
        self.stdout.write(self.style.SUCCESS(f"Rollup rebuilt: {rebuilt.removed} rows removed, {rebuilt.written} written."))
