"""``manage.py audit_export --format jsonl|syslog [--since …] [--until …] [--company slug] [--action …]``."""

from __future__ import annotations

import datetime as dt

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from apps.audit.exceptions import InvalidExportFilter
from apps.audit.export import FORMATS, lines
from apps.audit.services import EventFilter, company_id_for_slug, iter_events


def parse_moment(value: str) -> dt.datetime:
    """An ISO 8601 date ("2026-11-01": its midnight in TIME_ZONE) or date-time (naive: in TIME_ZONE);
    ``ValueError`` otherwise."""
    moment = parse_datetime(value)
    if moment is None:
        day = parse_date(value)
        if day is None:
            raise ValueError(f"{value!r} is not an ISO 8601 date or date-time")
        moment = dt.datetime.combine(day, dt.time(0))
    return timezone.make_aware(moment) if timezone.is_naive(moment) else moment


class Command(BaseCommand):
    help = ("Write audit events, oldest first, to standard output as JSON lines or RFC 5424 syslog messages "
            "(for a SIEM). The period is [--since, --until).")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--format", choices=FORMATS, default="jsonl")
        parser.add_argument("--since", help="ISO 8601 date or date-time (naive: in TIME_ZONE); default: the first event")
        parser.add_argument("--until", help="ISO 8601 date or date-time, exclusive; default: now")
        parser.add_argument("--company", metavar="SLUG", help="only this company's events")
        parser.add_argument("--action", default="", help='one action ("token.revoked") or a prefix ending in "." ("token.")')

    def handle(self, *args, **options) -> None:
        try:
            filters = EventFilter(
                since=parse_moment(options["since"]) if options["since"] else None,
                until=parse_moment(options["until"]) if options["until"] else None,
                action=options["action"],
                company_id=company_id_for_slug(options["company"]) if options["company"] else None,
            )
        except (ValueError, InvalidExportFilter) as exc:
            raise CommandError(str(exc)) from None
        for line in lines(iter_events(filters), options["format"]):
            self.stdout.write(line, ending="")
