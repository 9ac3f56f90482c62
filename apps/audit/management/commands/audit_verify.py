"""``manage.py audit_verify [--anchor SEQ:HASH]``: walk the audit chain; exit 1 at the first broken link."""

from __future__ import annotations

import re

from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.audit.services import check_anchor, verify_chain

_ANCHOR = re.compile(r"(\d+):([0-9a-f]{64})")


class Command(BaseCommand):
    help = ("Check the audit trail's hash chain row by row and name the first broken link (an edited, deleted or "
            "reordered row). Exit status 0: intact; 1: broken.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--anchor", action="append", default=[], metavar="SEQ:HASH",
                            help="a row's sequence number and hash kept outside the database (a SIEM's copy, an earlier "
                                 "run's output); the row must still carry it. Catches a truncated tail. Repeatable.")

    def handle(self, *args, **options) -> None:
        anchors = []
        for anchor in options["anchor"]:
            match = _ANCHOR.fullmatch(anchor.strip().lower())
            if match is None:
                raise CommandError(f"--anchor takes SEQ:HASH (a number, a colon, 64 hex characters), got {anchor!r}")
            anchors.append((int(match[1]), match[2]))
        result = verify_chain()
        if result.broken is not None:
            raise CommandError(f"audit chain broken after {result.checked} good rows ({result.broken.kind}): {result.broken.message}")
        for seq, expected in anchors:
            problem = check_anchor(seq, expected)
            if problem is not None:
                raise CommandError(f"audit chain broken: {problem}")
        self.stdout.write(f"audit chain intact: {result.checked} rows; head seq={result.head_seq} hash={result.head_hash}")
