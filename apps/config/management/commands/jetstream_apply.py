"""``manage.py jetstream_apply FILE.yaml [--dry-run]``: bring the database to a configuration file.

The schema is in docs/configuration.md; the work is in apps/config/ (apply.py). A file
with problems changes nothing and exits with status 2, naming each problem's place.
"""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError
from django.utils.translation import gettext as _

from apps.config.apply import apply_config
from apps.config.exceptions import ConfigError

INVALID_FILE = 2  # exit status for a file that cannot be applied (argparse uses 2 for bad usage too)


def read_config_file(path: str) -> str:
    """The file's text. Raises ``CommandError`` (exit status 2) if it cannot be read or is not UTF-8."""
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except UnicodeDecodeError:
        raise CommandError(_("%(path)s is not UTF-8 text") % {"path": path}, returncode=INVALID_FILE) from None
    except OSError as exc:
        raise CommandError(_("cannot read %(path)s: %(reason)s") % {"path": path, "reason": exc.strerror},
                           returncode=INVALID_FILE) from None


class Command(BaseCommand):
    """``jetstream_apply FILE [--dry-run]``: prints the report (the plan, with ``--dry-run``). A file
    with problems raises ``CommandError`` (exit status 2) listing each; nothing is written then."""

    help = "Create or update suppliers, providers, models, prices, FX rates and companies from a YAML file, in one transaction."

    def add_arguments(self, parser) -> None:
        parser.add_argument("file", help="the configuration file (YAML); see docs/configuration.md")
        parser.add_argument("--dry-run", action="store_true", help="validate and print the plan; write nothing")

    def handle(self, *args, file: str, dry_run: bool, **options) -> None:
        text = read_config_file(file)
        try:
            report = apply_config(text, dry_run=dry_run)
        except ConfigError as exc:
            lines = [_("%(path)s was not applied; nothing was changed:") % {"path": file}]
            lines += [f"  {place}: {message}" if place else f"  {message}" for place, message in exc.problems]
            raise CommandError("\n".join(lines), returncode=INVALID_FILE) from None
        self.stdout.write(report.render())
