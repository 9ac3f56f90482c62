"""``manage.py load_prices [FILE] [--dry-run]``: price the operator's models from the catalogue.

Without FILE the catalogue shipped with Jetstream (apps/providers/catalogue/prices.json) is used;
the format is in docs/billing.md "Prices and currencies". Models are matched by provider kind and
upstream model id. Nothing is overwritten: a changed price is a new version from now, an equal
one adds nothing. A document with problems changes nothing and exits with status 2.
"""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from apps.billing.fx_sources import FeedError, fetch_document
from apps.providers.catalogue import SHIPPED, apply_prices, parse_document

INVALID_FILE = 2


class Command(BaseCommand):
    """``load_prices [FILE] [--dry-run]``: prints the models given a new price version (or that would be, dry)."""

    help = "Add price versions for your models from the shipped price catalogue or a price document (JSON)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("file", nargs="?", default=str(SHIPPED), help="a price document (JSON); default: the shipped catalogue")
        parser.add_argument("--dry-run", action="store_true", help="validate and list what would change; write nothing")

    def handle(self, *args, file: str, dry_run: bool, **options) -> None:
        try:
            result = apply_prices(parse_document(fetch_document(file)), dry_run=dry_run)
        except (FeedError, ValidationError) as exc:
            raise CommandError(f"{file} was not applied; nothing was changed: {exc}", returncode=INVALID_FILE) from None
        verb = "would add" if dry_run else "added"
        for name in result.added:
            self.stdout.write(f"{verb} a price version: {name}")
            if name in result.notes:
                self.stdout.write(f"    note: {result.notes[name]}")
        self.stdout.write(f"{len(result.added)} {verb}, {len(result.unchanged)} unchanged, "
                          f"{result.unmatched} catalogue entries match none of your models")
