"""The transaction journal's indexes: every filter (company, token, department, model, failed
requests) followed by ``(started_at, id)``, the keyset the journal pages by (apps/billing/journal.py).
The three ``(…, started_at)`` indexes they extend go. Built ``CONCURRENTLY`` (a busy table keeps
taking writes), so this migration runs outside a transaction."""

from django.contrib.postgres.operations import AddIndexConcurrently, RemoveIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):

    atomic = False

    dependencies = [
        ('billing', '0010_usage_day_rollup'),
    ]

    operations = [
        AddIndexConcurrently(
            model_name='usagerecord',
            index=models.Index(fields=['company', 'started_at', 'id'], name='usage_company_time_id'),
        ),
        AddIndexConcurrently(
            model_name='usagerecord',
            index=models.Index(fields=['token', 'started_at', 'id'], name='usage_token_time_id'),
        ),
        AddIndexConcurrently(
            model_name='usagerecord',
            index=models.Index(fields=['department', 'started_at', 'id'], name='usage_department_time_id'),
        ),
        AddIndexConcurrently(
            model_name='usagerecord',
            index=models.Index(fields=['company', 'model', 'started_at', 'id'], name='usage_company_model_time'),
        ),
        AddIndexConcurrently(
            model_name='usagerecord',
            index=models.Index(condition=models.Q(('status', 'ok'), _negated=True), fields=['company', 'started_at', 'id'],
                               name='usage_company_failed_time'),
        ),
        RemoveIndexConcurrently(model_name='usagerecord', name='usage_company_time'),
        RemoveIndexConcurrently(model_name='usagerecord', name='usage_token_time'),
        RemoveIndexConcurrently(model_name='usagerecord', name='usage_department_time'),
    ]
