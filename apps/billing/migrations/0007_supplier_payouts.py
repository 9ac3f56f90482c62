"""Suppliers: payout details, withdrawal requests, payout batches, and per-day credits to payables.

``billing_payablecreditday`` is kept by a statement-level AFTER INSERT trigger on
``billing_transfer``: the posted credits a statement inserts into supplier payables are added to
their (account, UTC day) rows. The trigger is named to fire after ``billing_transfer_after_insert``
(triggers of one event fire in name order), which has already locked the touched accounts in id
order: a writer reaches a payable's day rows only while holding that payable's row lock, so two
writers never deadlock on them. Existing credits are summed in once.
"""

import django.core.validators
import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

CREDIT_DAYS_SQL = r"""
CREATE OR REPLACE FUNCTION billing_transfer_credit_days() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO billing_payablecreditday (account_id, day, amount)
    SELECT n.credit_account_id, (n.created_at AT TIME ZONE 'UTC')::date, sum(n.amount)
    FROM new_rows n JOIN billing_account a ON a.id = n.credit_account_id AND a.kind = 'supplier_payable'
    WHERE n.status = 'posted'
    GROUP BY 1, 2
    ORDER BY 1, 2
    ON CONFLICT (account_id, day) DO UPDATE SET amount = billing_payablecreditday.amount + EXCLUDED.amount;
    RETURN NULL;
END $$;

CREATE TRIGGER billing_transfer_credit_days AFTER INSERT ON billing_transfer
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION billing_transfer_credit_days();

INSERT INTO billing_payablecreditday (account_id, day, amount)
SELECT t.credit_account_id, (t.created_at AT TIME ZONE 'UTC')::date, sum(t.amount)
FROM billing_transfer t JOIN billing_account a ON a.id = t.credit_account_id AND a.kind = 'supplier_payable'
WHERE t.status = 'posted'
GROUP BY 1, 2;
"""

CREDIT_DAYS_REVERSE_SQL = r"""
DROP TRIGGER IF EXISTS billing_transfer_credit_days ON billing_transfer;
DROP FUNCTION IF EXISTS billing_transfer_credit_days();
"""


class Migration(migrations.Migration):

    dependencies = [
        ('accounts', '0002_routing_fallbacks'),
        ('billing', '0006_fx_feeds'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name='PayoutBatch',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('created_at', models.DateTimeField(auto_now_add=True, verbose_name='created')),
                ('total', models.BigIntegerField(default=0, verbose_name='total, micro-RUB')),
                ('count', models.PositiveIntegerField(default=0, verbose_name='withdrawals')),
            ],
            options={
                'verbose_name': 'payout batch',
                'verbose_name_plural': 'payout batches',
                'ordering': ['-id'],
                'constraints': [models.CheckConstraint(condition=models.Q(('total__gte', 0)), name='payout_batch_total_non_negative')],
            },
        ),
        migrations.CreateModel(
            name='SupplierPayoutDetails',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('recipient', models.CharField(max_length=200, verbose_name='recipient')),
                ('inn', models.CharField(blank=True, max_length=12, validators=[django.core.validators.RegexValidator('^(\\d{10}|\\d{12})$')], verbose_name='INN')),
                ('kpp', models.CharField(blank=True, max_length=9, validators=[django.core.validators.RegexValidator('^\\d{9}$')], verbose_name='KPP')),
                ('bank_name', models.CharField(blank=True, max_length=200, verbose_name='bank')),
                ('bik', models.CharField(blank=True, max_length=9, validators=[django.core.validators.RegexValidator('^\\d{9}$')], verbose_name='BIK')),
                ('account_number', models.CharField(blank=True, max_length=20, validators=[django.core.validators.RegexValidator('^\\d{20}$')], verbose_name='settlement account')),
                ('correspondent_account', models.CharField(blank=True, max_length=20, validators=[django.core.validators.RegexValidator('^\\d{20}$')], verbose_name='correspondent account')),
                ('card_reference', models.CharField(blank=True, help_text='A reference your payment provider gives for a card or account (never a full card number).', max_length=64, verbose_name='card or account reference')),
                ('updated_at', models.DateTimeField(auto_now=True, verbose_name='updated')),
                ('supplier', models.OneToOneField(on_delete=django.db.models.deletion.PROTECT, related_name='payout_details', to='accounts.supplier', verbose_name='supplier')),
            ],
            options={
                'verbose_name': 'supplier payout details',
                'verbose_name_plural': 'supplier payout details',
            },
        ),
        migrations.CreateModel(
            name='PayableCreditDay',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('day', models.DateField(verbose_name='day (UTC)')),
                ('amount', models.BigIntegerField(default=0, verbose_name='credits, micro-RUB')),
                ('account', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='credit_days', to='billing.account', verbose_name='account')),
            ],
            options={
                'verbose_name': 'payable credits per day',
                'verbose_name_plural': 'payable credits per day',
                'constraints': [models.UniqueConstraint(fields=('account', 'day'), name='payable_credit_day_unique')],
            },
        ),
        migrations.CreateModel(
            name='WithdrawalRequest',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('amount', models.BigIntegerField(verbose_name='amount, micro-RUB')),
                ('payout_details', models.JSONField(default=dict, verbose_name='payout details (as requested)')),
                ('status', models.CharField(choices=[('requested', 'Requested'), ('approved', 'Approved'), ('rejected', 'Rejected'), ('paid', 'Paid'), ('lapsed', 'Lapsed (hold expired)')], default='requested', max_length=16, verbose_name='status')),
                ('idempotency_id', models.CharField(max_length=200, unique=True, verbose_name='idempotency id')),
                ('decided_at', models.DateTimeField(blank=True, null=True, verbose_name='decided')),
                ('reject_reason', models.CharField(blank=True, max_length=300, verbose_name='reason for rejection')),
                ('paid_at', models.DateTimeField(blank=True, null=True, verbose_name='paid')),
                ('created_at', models.DateTimeField(auto_now_add=True, verbose_name='requested')),
                ('batch', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.PROTECT, related_name='withdrawals', to='billing.payoutbatch', verbose_name='payout batch')),
                ('decided_by', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to=settings.AUTH_USER_MODEL, verbose_name='approved or rejected by')),
                ('hold', models.OneToOneField(on_delete=django.db.models.deletion.PROTECT, related_name='withdrawal_request', to='billing.transfer', verbose_name='ledger hold')),
                ('payment', models.OneToOneField(blank=True, null=True, on_delete=django.db.models.deletion.PROTECT, related_name='paid_withdrawal', to='billing.transfer', verbose_name='payment transfer')),
                ('requested_by', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to=settings.AUTH_USER_MODEL, verbose_name='requested by')),
                ('supplier', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='withdrawal_requests', to='accounts.supplier', verbose_name='supplier')),
            ],
            options={
                'verbose_name': 'withdrawal request',
                'verbose_name_plural': 'withdrawal requests',
                'ordering': ['-id'],
                'indexes': [models.Index(fields=['status', 'id'], name='withdrawal_status')],
                'constraints': [models.CheckConstraint(condition=models.Q(('amount__gt', 0)), name='withdrawal_amount_positive'), models.CheckConstraint(condition=models.Q(models.Q(('status', 'paid'), _negated=True), models.Q(('batch__isnull', False), ('payment__isnull', False)), _connector='OR'), name='withdrawal_paid_has_payment')],
            },
        ),
        migrations.AddIndex(
            model_name='transfer',
            index=models.Index(condition=models.Q(('kind', 'payout'), ('status', 'posted')), fields=['debit_account'], name='transfer_posted_payouts'),
        ),
        migrations.RunSQL(CREDIT_DAYS_SQL, CREDIT_DAYS_REVERSE_SQL),
    ]
