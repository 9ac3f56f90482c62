"""The scale cells of `make bench` (issue 10, item 7): the server time of the company dashboard, a
filtered journal page and the journal export's first byte, on a company with many usage records.

``python -m bench.journal_cells --records 10000000`` (bench/runner.py starts it with its own
database, ``<bench database>_journal``): migrates, seeds the company ``bench-journal`` once with
``manage.py seed_usage`` (COPY; the database is kept between runs and seeded again only when it
holds fewer records than asked), then times each page ``--repeats`` times in-process through
Django's test client (the server's work: URL routing, middleware, access checks, the queries, the
template; no network) and prints the result as one JSON line. ``measure`` is what the suite
tests with a small company.

Export: "first byte" is the CSV header (sent before the records are read); "first rows" is the
first piece of ``EXPORT_CHUNK`` records, the time a person waits before data arrives.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import time
import zoneinfo
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
COMPANY = "bench-journal"
MANAGER = "bench-journal-manager@bench.invalid"
TARGET_MS = 300


def _client(company: Any) -> Any:
    """A test client signed in as the company's bench manager, TOTP step passed."""
    from django.contrib.auth import get_user_model
    from django.test import Client
    from django_otp import DEVICE_ID_SESSION_KEY
    from django_otp.plugins.otp_totp.models import TOTPDevice

    from apps.accounts.models import CompanyRole, Membership

    user, _ = get_user_model().objects.get_or_create(email=MANAGER)
    Membership.objects.get_or_create(user=user, company=company, defaults={"role": CompanyRole.MANAGER})
    device = TOTPDevice.objects.filter(user=user, confirmed=True).first() or TOTPDevice.objects.create(user=user, name="bench",
                                                                                                         confirmed=True)
    client = Client(HTTP_HOST="127.0.0.1")  # a host DEBUG's ALLOWED_HOSTS takes
    client.force_login(user)
    session = client.session
    session[DEVICE_ID_SESSION_KEY] = device.persistent_id
    session.save()
    return client


def _timed(get: Any, repeats: int) -> dict[str, Any]:
    times = []
    for _ in range(repeats + 1):  # the first is a warm-up (template compilation, caches)
        started = time.perf_counter()
        get()
        times.append((time.perf_counter() - started) * 1000)
    measured = times[1:]
    return {"median_ms": round(statistics.median(measured), 2), "max_ms": round(max(measured), 2),
            "runs_ms": [round(t, 2) for t in measured], "target_ms": TARGET_MS,
            "met": statistics.median(measured) < TARGET_MS}


def measure(company: Any, *, repeats: int = 5) -> dict[str, Any]:
    """Time the dashboard, a filtered journal page and the export's first byte and first rows for
    ``company`` (its busiest token, status ok, the last 30 days), ``repeats`` times each after a
    warm-up. Returns ``{cell: {median_ms, max_ms, runs_ms, target_ms, met}}`` plus ``records`` and
    the filter used. Raises ``RuntimeError`` when a page does not answer 200."""
    from django.db.models import Sum
    from django.urls import reverse

    from apps.billing.journal import EXPORT_CHUNK
    from apps.billing.models import UsageDay, UsageRecord

    client = _client(company)
    today = dt.datetime.now(zoneinfo.ZoneInfo(company.time_zone)).date()
    busiest = (UsageDay.objects.filter(company=company, token__isnull=False).values("token_id")
               .annotate(n=Sum("requests")).order_by("-n").first())
    query = {"status": "ok", "start": (today - dt.timedelta(days=29)).isoformat(), "end": today.isoformat()}
    if busiest:
        query["token"] = str(busiest["token_id"])

    def page(url: str, params: dict[str, str] | None = None) -> Any:
        response = client.get(url, params or {})
        if response.status_code != 200:
            raise RuntimeError(f"GET {url} answered {response.status_code}")
        return response

    def first(n_chunks: int) -> None:
        response = page(reverse("cabinets:company:journal_export_csv"), query)
        chunks = iter(response.streaming_content)
        for _ in range(n_chunks):
            next(chunks, b"")
        # The client leaves. The test client wraps the stream in a generator that closes the response
        # (the export's read transaction and server-side cursor end) with request_finished's
        # connection closing switched off; closing that wrapper is leaving as it means it.
        response._iterator.close()

    result: dict[str, Any] = {
        "dashboard": _timed(lambda: page(reverse("cabinets:company:dashboard")), repeats),
        "journal_page": _timed(lambda: page(reverse("cabinets:company:journal"), query), repeats),
        "export_first_byte": _timed(lambda: first(1), repeats),
        "export_first_rows": _timed(lambda: first(2), repeats),
    }
    result["records"] = UsageRecord.objects.filter(company=company).count()
    result["export_chunk"] = EXPORT_CHUNK
    result["filter"] = query
    return result


def _ensure_seeded(records: int) -> Any:
    from django.core.management import call_command
    from django.db.models import Sum

    from apps.accounts.models import Company
    from apps.billing.models import UsageDay

    company, _ = Company.objects.get_or_create(slug=COMPANY, defaults={"name": "Bench journal company"})
    have = UsageDay.objects.filter(company=company).aggregate(n=Sum("requests"))["n"] or 0
    if have < records:
        print(f"bench: seeding {records - have} usage records into {COMPANY} (once; kept between runs)", file=sys.stderr, flush=True)
        call_command("seed_usage", records=records - have, company=COMPANY, stdout=sys.stderr)
    return company


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=10_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "jetstream.settings")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)
    started = time.monotonic()
    company = _ensure_seeded(args.records)
    seeded_s = time.monotonic() - started
    result = measure(company, repeats=args.repeats)
    result["seed_or_check_s"] = round(seeded_s, 1)
    print("BENCH_JOURNAL " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
