"""``manage.py jetstream_eval_moderation``: precision and recall per category on the labelled set and
latency per layer on a 4 KB prompt (``make eval-moderation``); exits 1 when a target is missed."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from apps.moderation.eval.evaluate import evaluate, format_report


class Command(BaseCommand):
    help = "Evaluate the moderation detectors: precision and recall per category, latency per layer."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--misses", action="store_true", help="also list every false positive and negative")
        parser.add_argument("--no-latency", action="store_true", help="skip the 4 KB latency measurement")

    def handle(self, *args, **options) -> None:
        report = evaluate(latency=not options["no_latency"])
        self.stdout.write(format_report(report))
        if options["misses"]:
            self.stdout.write("\n".join(["", *report.misses]))
        failures = report.failures()
        if failures:
            raise CommandError("targets missed:\n" + "\n".join(failures))
        self.stdout.write("\nevery target met")
