"""Usage per day (``UsageDay``), kept by statement-level triggers on usage records.

Each trigger sees the statement's rows at once (a transition table) and folds them into the
rollup with one ``INSERT … ON CONFLICT DO UPDATE`` grouped by the rollup's key and ordered by it
(two meter writers touching the same rows take their locks in the same order: no deadlock). An
update — the sweeper's ``gateway_lost`` placeholder replaced by the real event — takes the old
rows away and adds the new; a delete takes its rows away. Existing records are rolled up here.
Days are the company's wall-clock dates (``accounts_company.time_zone``), UTC without a company.
"""

import django.db.models.deletion
from django.db import migrations, models

# The rollup's sums of a set of usage records ``r``, each weighted by ``r.sign`` (+1 added, -1 taken away).
# Costs saturate at bigint's ceiling: a cost the meter clamped there (``usage_clamped``) must never
# make the rollup — and with it the usage record's write — fail on an overflow.
_FOLD = """
INSERT INTO billing_usageday AS d (day, company_id, department_id, token_id, model_id, requests, errors, input_tokens,
                                   output_tokens, cached_tokens, sell_cost, buy_cost, latency_ms)
SELECT (r.started_at AT TIME ZONE coalesce(c.time_zone, 'UTC'))::date, r.company_id, r.department_id, r.token_id, r.model_id,
       sum(r.sign), coalesce(sum(r.sign) FILTER (WHERE r.status <> 'ok'), 0), sum(r.sign * r.input_tokens::bigint),
       sum(r.sign * r.output_tokens::bigint), sum(r.sign * r.cached_tokens::bigint),
       least(sum(r.sign * r.sell_cost::numeric), {MAX}), least(sum(r.sign * r.buy_cost::numeric), {MAX}),
       sum(r.sign * r.latency_ms::bigint)
FROM ({rows}) AS r LEFT JOIN accounts_company c ON c.id = r.company_id
GROUP BY 1, 2, 3, 4, 5
ORDER BY 1, 2, 3, 4, 5
ON CONFLICT (day, company_id, department_id, token_id, model_id) DO UPDATE SET
    requests = d.requests + EXCLUDED.requests, errors = d.errors + EXCLUDED.errors,
    input_tokens = d.input_tokens + EXCLUDED.input_tokens, output_tokens = d.output_tokens + EXCLUDED.output_tokens,
    cached_tokens = d.cached_tokens + EXCLUDED.cached_tokens,
    sell_cost = least(d.sell_cost::numeric + EXCLUDED.sell_cost, {MAX}), buy_cost = least(d.buy_cost::numeric + EXCLUDED.buy_cost, {MAX}),
    latency_ms = d.latency_ms + EXCLUDED.latency_ms
"""
_FOLD = _FOLD.replace("{MAX}", "9223372036854775807")
_COLUMNS = "started_at, company_id, department_id, token_id, model_id, status, input_tokens, output_tokens, cached_tokens, sell_cost, buy_cost, latency_ms"
_ADDED = f"SELECT 1 AS sign, {_COLUMNS} FROM new_rows"
_TAKEN = f"SELECT -1 AS sign, {_COLUMNS} FROM old_rows"


def _function(name: str, rows: str) -> str:
    return f"""
CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
{_FOLD.format(rows=rows)};
RETURN NULL;
END
$$;"""


TRIGGERS = f"""
{_function("billing_usage_day_insert", _ADDED)}
{_function("billing_usage_day_update", _ADDED + " UNION ALL " + _TAKEN)}
{_function("billing_usage_day_delete", _TAKEN)}
CREATE TRIGGER billing_usage_day_insert AFTER INSERT ON billing_usagerecord
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION billing_usage_day_insert();
CREATE TRIGGER billing_usage_day_update AFTER UPDATE ON billing_usagerecord
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION billing_usage_day_update();
CREATE TRIGGER billing_usage_day_delete AFTER DELETE ON billing_usagerecord
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION billing_usage_day_delete();
"""
DROP_TRIGGERS = """
DROP TRIGGER IF EXISTS billing_usage_day_insert ON billing_usagerecord;
DROP TRIGGER IF EXISTS billing_usage_day_update ON billing_usagerecord;
DROP TRIGGER IF EXISTS billing_usage_day_delete ON billing_usagerecord;
DROP FUNCTION IF EXISTS billing_usage_day_insert();
DROP FUNCTION IF EXISTS billing_usage_day_update();
DROP FUNCTION IF EXISTS billing_usage_day_delete();
"""
# The table is new and empty (and its unique constraint is only added at the migration's end).
BACKFILL = _FOLD.format(rows=f"SELECT 1 AS sign, {_COLUMNS} FROM billing_usagerecord").split("ON CONFLICT")[0]


class Migration(migrations.Migration):

    dependencies = [
        ('accounts', '0003_company_model_coefficients'),
        ('billing', '0009_transfer_wallet_history_indexes'),
        ('providers', '0007_egress_points'),
        ('proxy', '0002_routing_fallbacks'),
    ]

    operations = [
        migrations.CreateModel(
            name='UsageDay',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('day', models.DateField(verbose_name='day (company time zone)')),
                ('requests', models.BigIntegerField(default=0, verbose_name='requests')),
                ('errors', models.BigIntegerField(default=0, verbose_name='errors')),
                ('input_tokens', models.BigIntegerField(default=0, verbose_name='input tokens')),
                ('output_tokens', models.BigIntegerField(default=0, verbose_name='output tokens')),
                ('cached_tokens', models.BigIntegerField(default=0, verbose_name='cached input tokens')),
                ('sell_cost', models.BigIntegerField(default=0, verbose_name='sell cost, micro-RUB')),
                ('buy_cost', models.BigIntegerField(default=0, verbose_name='buy cost, micro-RUB')),
                ('latency_ms', models.BigIntegerField(default=0, verbose_name='latency sum, ms')),
                ('company', models.ForeignKey(blank=True, db_constraint=False, db_index=False, null=True, on_delete=django.db.models.deletion.DO_NOTHING, related_name='+', to='accounts.company', verbose_name='company')),
                ('department', models.ForeignKey(blank=True, db_constraint=False, db_index=False, null=True, on_delete=django.db.models.deletion.DO_NOTHING, related_name='+', to='accounts.department', verbose_name='department')),
                ('model', models.ForeignKey(blank=True, db_constraint=False, db_index=False, null=True, on_delete=django.db.models.deletion.DO_NOTHING, related_name='+', to='providers.model', verbose_name='model')),
                ('token', models.ForeignKey(blank=True, db_constraint=False, db_index=False, null=True, on_delete=django.db.models.deletion.DO_NOTHING, related_name='+', to='proxy.apitoken', verbose_name='token')),
            ],
            options={
                'verbose_name': 'usage per day',
                'verbose_name_plural': 'usage per day',
                'ordering': ['-day'],
                'indexes': [models.Index(fields=['company', 'day'], name='usage_day_company'), models.Index(fields=['token', 'day'], name='usage_day_token'), models.Index(fields=['department', 'day'], name='usage_day_department')],
                'constraints': [models.UniqueConstraint(fields=('day', 'company', 'department', 'token', 'model'), name='usage_day_key', nulls_distinct=False)],
            },
        ),
        migrations.RunSQL(TRIGGERS, DROP_TRIGGERS),
        migrations.RunSQL(BACKFILL, migrations.RunSQL.noop),
    ]
