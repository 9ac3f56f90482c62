"""What keeping the daily rollup costs the meter: ``record_usage_batch`` timed three ways on the
same batches, in a scratch database (``<DATABASE_URL's database>_rollup_cost``, dropped after).

- ``none``: the rollup's triggers disabled (the meter as it was before the rollup);
- ``trigger``: the statement-level triggers of migration 0009 (what ships);
- ``statement``: triggers disabled, and the batch folded into the rollup by one more
  ``INSERT … SELECT … FROM unnest(…) ON CONFLICT DO UPDATE`` sent by the writer in the same
  transaction (the alternative the issue names).

``python -m bench.rollup_cost --batches 40 --size 500`` prints events per second for each, the
median of ``--rounds`` interleaved rounds (the machine's drifting load hits all three alike).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import urllib.parse
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_STATEMENT = """
INSERT INTO billing_usageday AS d (day, company_id, department_id, token_id, model_id, requests, errors, input_tokens,
                                   output_tokens, cached_tokens, sell_cost, buy_cost, latency_ms)
SELECT (r.started_at AT TIME ZONE coalesce(c.time_zone, 'UTC'))::date, r.company_id, r.department_id, r.token_id, r.model_id,
       count(*), count(*) FILTER (WHERE r.status <> 'ok'), sum(r.input_tokens), sum(r.output_tokens), sum(r.cached_tokens),
       sum(r.sell_cost), sum(r.buy_cost), sum(r.latency_ms)
FROM unnest(%s::timestamptz[], %s::bigint[], %s::bigint[], %s::bigint[], %s::bigint[], %s::text[], %s::int[], %s::int[],
            %s::int[], %s::bigint[], %s::bigint[], %s::int[])
     AS r(started_at, company_id, department_id, token_id, model_id, status, input_tokens, output_tokens, cached_tokens,
          sell_cost, buy_cost, latency_ms)
LEFT JOIN accounts_company c ON c.id = r.company_id
GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5
ON CONFLICT (day, company_id, department_id, token_id, model_id) DO UPDATE SET
    requests = d.requests + EXCLUDED.requests, errors = d.errors + EXCLUDED.errors,
    input_tokens = d.input_tokens + EXCLUDED.input_tokens, output_tokens = d.output_tokens + EXCLUDED.output_tokens,
    cached_tokens = d.cached_tokens + EXCLUDED.cached_tokens, sell_cost = d.sell_cost + EXCLUDED.sell_cost,
    buy_cost = d.buy_cost + EXCLUDED.buy_cost, latency_ms = d.latency_ms + EXCLUDED.latency_ms
"""


def _scratch_database() -> str:
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    url = os.environ["DATABASE_URL"]
    name = (conninfo_to_dict(url).get("dbname") or "postgres") + "_rollup_cost"
    with psycopg.connect(make_conninfo(url, dbname="postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return urllib.parse.urlunsplit(urllib.parse.urlsplit(url)._replace(path="/" + name))


def _world() -> dict:
    """A company with a huge wallet, 20 tokens and 4 models of a mock provider."""
    from apps.accounts.models import Company
    from apps.billing import services
    from apps.providers.models import Model, Provider
    from apps.proxy.models import ApiToken

    company = Company.objects.create(slug="cost", name="Cost")
    services.top_up(company=company, amount=10**15, idempotency_id="cost-top-up")
    provider = Provider.objects.create(slug="mock", name="Mock", kind="mock")
    models = [Model.objects.create(name=f"m{i}", provider=provider, upstream_model=f"m{i}") for i in range(4)]
    tokens = []
    for i in range(20):
        token = ApiToken(company=company, name=f"t{i}")
        token.set_secret()
        token.save()
        tokens.append(token)
    return {"company": company, "provider": provider, "models": models, "tokens": tokens, "counter": iter(range(10**9))}


def _batch(world: dict, size: int) -> list:
    from apps.billing.usage import UsageEvent

    now = time.time()
    events = []
    for i in range(size):
        n = next(world["counter"])
        token, model = world["tokens"][n % len(world["tokens"])], world["models"][n % len(world["models"])]
        events.append(UsageEvent(request_id=f"c-{n}", endpoint="chat", status="ok", http_status=200, started_at=now - i,
                                 finished_at=now, token_id=token.pk, company_id=world["company"].pk, model_id=model.pk,
                                 model_name=model.name, provider_id=world["provider"].pk, input_tokens=100, output_tokens=20,
                                 sell_cost=1000, buy_cost=0, latency_ms=200))
    return events


def _triggers(enabled: bool) -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        for name in ("insert", "update", "delete"):
            cursor.execute(f"ALTER TABLE billing_usagerecord {'ENABLE' if enabled else 'DISABLE'} TRIGGER billing_usage_day_{name}")


def _fold_statement(events: list) -> None:
    from datetime import UTC, datetime

    from django.db import connection

    columns: list[list] = [[] for _ in range(12)]
    for e in events:
        for column, value in zip(columns, (datetime.fromtimestamp(e.started_at, UTC), e.company_id, e.department_id, e.token_id,
                                           e.model_id, e.status, e.input_tokens, e.output_tokens, e.cached_tokens, e.sell_cost,
                                           e.buy_cost, e.latency_ms), strict=True):
            column.append(value)
    with connection.cursor() as cursor:
        cursor.execute(_STATEMENT, columns)


def _run(way: str, world: dict, *, batches: int, size: int) -> float:
    """Events per second of ``batches`` batches of ``size`` written ``way``."""
    from django.db import transaction

    from apps.billing.usage_records import record_usage_batch

    _triggers(way == "trigger")
    prepared = [_batch(world, size) for _ in range(batches)]
    started = time.perf_counter()
    for events in prepared:
        if way == "statement":
            with transaction.atomic():
                record_usage_batch(events=events)
                _fold_statement(events)
        else:
            record_usage_batch(events=events)
    return batches * size / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--size", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    os.environ["DATABASE_URL"] = _scratch_database()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "jetstream.settings")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    call_command("migrate", verbosity=0, interactive=False)
    world = _world()
    results: dict[str, list[float]] = {"none": [], "trigger": [], "statement": []}
    _run("none", world, batches=args.batches, size=args.size)  # warm-up
    for _ in range(args.rounds):
        for way in results:
            results[way].append(_run(way, world, batches=args.batches, size=args.size))
    _triggers(True)
    base = statistics.median(results["none"])
    for way, rates in results.items():
        rate = statistics.median(rates)
        print(f"{way:10} {rate:9.0f} events/s  ({rate / base * 100:5.1f} % of no rollup)  rounds: {[round(r) for r in rates]}")
    connection.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
