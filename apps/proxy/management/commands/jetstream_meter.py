from __future__ import annotations

import signal

from django.core.management.base import BaseCommand

from apps.proxy.metering import MeterWriter


class Command(BaseCommand):
    """``jetstream_meter``: runs one ``MeterWriter`` until SIGTERM (its handler raises ``SystemExit``
    wherever the writer is) or, with ``--stop-after``, for that many seconds."""

    help = "Write usage events from the Redis stream to PostgreSQL (usage records + ledger transfers)."

    def add_arguments(self, parser):
        parser.add_argument("--batch-size", type=int, default=1000)
        parser.add_argument("--block-ms", type=int, default=100)
        parser.add_argument("--consumer", default=None, help="Consumer name in the 'meter' group (default: host-pid).")
        parser.add_argument("--reclaim-idle-ms", type=int, default=15_000,
                            help="Take over entries another writer left unacknowledged this long (it died).")
        parser.add_argument("--stop-after", type=float, default=None, help="Exit after this many seconds (tests).")

    def handle(self, *args, batch_size, block_ms, consumer, reclaim_idle_ms, stop_after, **options):
        writer = MeterWriter(batch_size=batch_size, block_ms=block_ms, consumer=consumer, reclaim_idle_ms=reclaim_idle_ms)

        def stop(signum, frame):  # exit now: an unacknowledged batch stays pending and is rewritten idempotently
            raise SystemExit(0)

        signal.signal(signal.SIGTERM, stop)
        self.stdout.write(f"meter writer {writer.consumer} started")
        try:
            writer.run(stop_after=stop_after)
        finally:
            self.stdout.write(f"meter writer {writer.consumer} stopped after {writer.written} events")
