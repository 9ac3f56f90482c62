"""``manage.py seed_usage --records 10000000 --company <slug>``: many usage records for scale tests,
written with PostgreSQL ``COPY`` (psycopg's copy), not ORM saves.

The company must exist. The command adds, once, ``--tokens`` tokens (``seed-token-N``, spread over
``--departments`` departments) and ``--models`` models of a ``seed`` mock provider, then writes
``--records`` requests spread evenly at random over the last ``--days`` days (3 % of them upstream
errors, costs in micro-RUB from the token counts). Each ``COPY`` statement carries ``--chunk`` rows;
the daily rollup (``billing.UsageDay``) is kept by its triggers as the rows land, so nothing else
needs running (``--rebuild-rollups`` recomputes the company's rollup afterwards anyway). Seeded
records move no money: no ledger transfer is written, the wallet is untouched. Random but
reproducible (``--seed``).
"""

from __future__ import annotations

import datetime as dt
import random
import time
import uuid
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection, transaction
from django.utils import timezone

from apps.billing.models import UsageRecord
from apps.billing.rollups import rebuild_usage_days

COLUMNS = ("request_id", "token_id", "company_id", "department_id", "endpoint", "model_name", "model_id", "provider_id", "stream",
           "input_tokens", "output_tokens", "cached_tokens", "usage_counted_locally", "sell_cost", "buy_cost", "status",
           "http_status", "error_type", "error_code", "latency_ms", "ttft_ms", "usage_clamped", "attempts", "started_at",
           "finished_at", "recorded_at")


def _model(field: str) -> Any:
    return UsageRecord._meta.get_field(field).related_model


class Command(BaseCommand):
    help = "Write many usage records for one company with COPY (scale tests and make bench); moves no money."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--records", type=int, required=True, help="how many usage records to write")
        parser.add_argument("--company", required=True, help="the company's slug (it must exist)")
        parser.add_argument("--days", type=int, default=90, help="spread over this many days back from now (90)")
        parser.add_argument("--tokens", type=int, default=50, help="tokens to spread them over (50)")
        parser.add_argument("--departments", type=int, default=5, help="departments the tokens belong to (5)")
        parser.add_argument("--models", type=int, default=8, help="models to spread them over (8)")
        parser.add_argument("--chunk", type=int, default=100_000, help="rows per COPY statement (100000)")
        parser.add_argument("--seed", type=int, default=1, help="random seed (1)")
        parser.add_argument("--rebuild-rollups", action="store_true", help="recompute the company's daily rollup afterwards")

    def handle(self, *args: Any, **options: Any) -> None:
        for name in ("records", "days", "tokens", "departments", "models", "chunk"):
            if options[name] < 1 and not (name == "records" and options[name] == 0):
                raise CommandError(f"--{name} must be at least 1")
        company_model = _model("company")
        try:
            company = company_model._default_manager.get(slug=options["company"])
        except company_model.DoesNotExist:
            raise CommandError(f"no company with the slug {options['company']!r}") from None
        tokens, models, provider_id = self._catalogue(company, options)
        started = time.monotonic()
        written = seed_records(company_id=company.pk, tokens=tokens, models=models, provider_id=provider_id,
                               count=options["records"], days=options["days"], chunk=options["chunk"], seed=options["seed"],
                               progress=lambda n: self.stdout.write(f"  {n} records"))
        seconds = time.monotonic() - started
        self.stdout.write(self.style.SUCCESS(f"Wrote {written} usage records for {company.slug} in {seconds:.1f} s"))
        if options["rebuild_rollups"]:
            rebuilt = rebuild_usage_days(company_id=company.pk)
            self.stdout.write(f"Rebuilt the daily rollup: {rebuilt.written} rows")

    def _catalogue(self, company: Any, options: dict[str, Any]) -> tuple[list[tuple[int, int | None]], list[tuple[int, str]], int]:
        """The seed tokens ``[(id, department id)]``, models ``[(id, name)]`` and the provider's id."""
        department_model, token_model, model_model = _model("department"), _model("token"), _model("model")
        provider_model = _model("provider")
        with transaction.atomic():
            departments = [department_model._default_manager.get_or_create(company=company, slug=f"seed-dept-{i}",
                                                                           defaults={"name": f"Seed department {i}"})[0]
                           for i in range(options["departments"])]
            tokens = []
            for i in range(options["tokens"]):
                token = token_model._default_manager.filter(company=company, name=f"seed-token-{i}").first()
                if token is None:
                    token = token_model(company=company, department=departments[i % len(departments)], name=f"seed-token-{i}")
                    token.set_secret()
                    token.save()
                tokens.append((token.pk, token.department_id))
            provider, _ = provider_model._default_manager.get_or_create(slug="seed", defaults={"name": "Seed (mock)", "kind": "mock"})
            models = [model_model._default_manager.get_or_create(name=f"seed-model-{i}",
                                                                 defaults={"provider": provider, "upstream_model": f"seed-{i}"})[0]
                      for i in range(options["models"])]
        return tokens, [(m.pk, m.name) for m in models], provider.pk


def seed_records(*, company_id: int, tokens: list[tuple[int, int | None]], models: list[tuple[int, str]], provider_id: int,
                 count: int, days: int, chunk: int = 100_000, seed: int = 1, progress: Any = None) -> int:
    """Write ``count`` usage records of ``company_id`` with ``COPY``, ``chunk`` rows per statement
    (each its own transaction), started at random in the last ``days`` days. Returns how many."""
    rng = random.Random(seed)
    run = uuid.uuid4().hex[:12]
    now = timezone.now()
    span = days * 86_400
    # Model weights: a few models carry most of the traffic, as in life.
    weights = [1 / (i + 1) for i in range(len(models))]
    sql = f"COPY billing_usagerecord ({', '.join(COLUMNS)}) FROM STDIN"
    written = 0
    while written < count:
        size = min(chunk, count - written)
        with transaction.atomic(), connection.cursor() as cursor, cursor.cursor.copy(sql) as copy:
            for n in range(written, written + size):
                token_id, department_id = tokens[rng.randrange(len(tokens))]
                model_id, model_name = rng.choices(models, weights)[0]
                started = now - dt.timedelta(seconds=rng.random() * span)
                failed = rng.random() < 0.03
                tokens_in, tokens_out = rng.randint(20, 4000), 0 if failed else rng.randint(1, 1500)
                sell = 0 if failed else tokens_in * 14 + tokens_out * 56
                latency = rng.randint(80, 9000)
                copy.write_row((
                    f"seed-{run}-{n}", token_id, company_id, department_id, "chat", model_name, model_id, provider_id, False,
                    tokens_in, tokens_out, 0, False, sell, sell * 7 // 10, "upstream_error" if failed else "ok",
                    502 if failed else 200, "api_error" if failed else "", "upstream_unavailable" if failed else "", latency,
                    None if failed else min(latency, rng.randint(50, 800)), False, "[]", started,
                    started + dt.timedelta(milliseconds=latency), now))
        written += size
        if progress is not None and (written % (chunk * 10) == 0 or written == count):
            progress(written)
    return written
