"""Top-up requests, company requisites, gapless document numbers and immutable documents.

The trigger makes an issued document unchangeable in the database itself: its number, amounts,
what it shows and its PDF never change and the row is never deleted (only ``created_by`` may be
cleared when that user is deleted). So a number always names the same PDF.
"""

import django.core.validators
import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

SQL = """
CREATE FUNCTION invoicing_document_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'document % is issued; documents are never deleted', OLD.id USING ERRCODE = 'restrict_violation';
    END IF;
    IF (NEW.kind, NEW.year, NEW.number, NEW.date, NEW.company_id, NEW.amount, NEW.vat_percent, NEW.vat_amount,
        NEW.period_start, NEW.period_end, NEW.details, NEW.pdf, NEW.sha256, NEW.created_at)
       IS DISTINCT FROM
       (OLD.kind, OLD.year, OLD.number, OLD.date, OLD.company_id, OLD.amount, OLD.vat_percent, OLD.vat_amount,
        OLD.period_start, OLD.period_end, OLD.details, OLD.pdf, OLD.sha256, OLD.created_at) THEN
        RAISE EXCEPTION 'document % is issued; it never changes', OLD.id USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER invoicing_document_immutable BEFORE UPDATE OR DELETE ON invoicing_document
    FOR EACH ROW EXECUTE FUNCTION invoicing_document_immutable();
"""

REVERSE_SQL = """
DROP TRIGGER IF EXISTS invoicing_document_immutable ON invoicing_document;
DROP FUNCTION IF EXISTS invoicing_document_immutable();
"""


class Migration(migrations.Migration):

    initial = True

    dependencies = [
        ('accounts', '0002_routing_fallbacks'),
        ('billing', '0004_usage_clamped'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name='CompanyRequisites',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('legal_name', models.CharField(help_text='As in the register, e.g. ООО «Ромашка».', max_length=300, verbose_name='legal name')),
                ('inn', models.CharField(max_length=12, validators=[django.core.validators.RegexValidator('^(\\d{10}|\\d{12})$', 'An INN is 10 digits (a company) or 12 (a person).')], verbose_name='INN')),
                ('kpp', models.CharField(blank=True, max_length=9, validators=[django.core.validators.RegexValidator('^\\d{9}$', 'A KPP is 9 digits.')], verbose_name='KPP')),
                ('address', models.CharField(blank=True, max_length=500, verbose_name='legal address')),
                ('contract', models.CharField(blank=True, help_text='Number and date, as documents name it: № 17/2026 от 01.02.2026.', max_length=200, verbose_name='contract')),
                ('company', models.OneToOneField(on_delete=django.db.models.deletion.CASCADE, related_name='requisites', to='accounts.company', verbose_name='company')),
            ],
            options={
                'verbose_name': 'company requisites',
                'verbose_name_plural': 'company requisites',
            },
        ),
        migrations.CreateModel(
            name='Document',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('kind', models.CharField(choices=[('invoice', 'Invoice'), ('act', 'Closing act')], max_length=16, verbose_name='kind')),
                ('year', models.PositiveSmallIntegerField(verbose_name='year')),
                ('number', models.PositiveIntegerField(verbose_name='number')),
                ('date', models.DateField(verbose_name='date')),
                ('amount', models.BigIntegerField(verbose_name='amount incl. VAT, micro-RUB')),
                ('vat_percent', models.DecimalField(decimal_places=2, max_digits=5, verbose_name='VAT, %')),
                ('vat_amount', models.BigIntegerField(verbose_name='VAT included, micro-RUB')),
                ('period_start', models.DateField(blank=True, help_text='Acts: the first day of the month.', null=True, verbose_name='period from')),
                ('period_end', models.DateField(blank=True, help_text='Acts: the last day of the month.', null=True, verbose_name='period to')),
                ('details', models.JSONField(default=dict, editable=False, verbose_name='details')),
                ('pdf', models.BinaryField(verbose_name='PDF')),
                ('sha256', models.CharField(editable=False, max_length=64, verbose_name='SHA-256 of the PDF')),
                ('created_at', models.DateTimeField(auto_now_add=True, verbose_name='issued')),
                ('company', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='documents', to='accounts.company', verbose_name='company')),
                ('created_by', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to=settings.AUTH_USER_MODEL, verbose_name='issued by')),
            ],
            options={
                'verbose_name': 'document',
                'verbose_name_plural': 'documents',
                'ordering': ['-year', 'kind', '-number'],
            },
        ),
        migrations.CreateModel(
            name='DocumentSequence',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('kind', models.CharField(choices=[('invoice', 'Invoice'), ('act', 'Closing act')], max_length=16, verbose_name='kind')),
                ('year', models.PositiveSmallIntegerField(verbose_name='year')),
                ('last_number', models.PositiveIntegerField(default=0, verbose_name='last number')),
            ],
            options={
                'verbose_name': 'document number sequence',
                'verbose_name_plural': 'document number sequences',
                'constraints': [models.UniqueConstraint(fields=('kind', 'year'), name='document_sequence_unique')],
            },
        ),
        migrations.CreateModel(
            name='TopUpRequest',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('amount', models.BigIntegerField(verbose_name='amount, micro-RUB')),
                ('status', models.CharField(choices=[('requested', 'Requested'), ('invoiced', 'Invoiced'), ('paid', 'Paid'), ('cancelled', 'Cancelled')], default='requested', max_length=16, verbose_name='status')),
                ('request_key', models.CharField(help_text="The caller's idempotency key: the same key for the same company is one request.", max_length=100, verbose_name='request key')),
                ('requested_at', models.DateTimeField(auto_now_add=True, verbose_name='requested')),
                ('invoiced_at', models.DateTimeField(blank=True, null=True, verbose_name='invoiced')),
                ('paid_at', models.DateTimeField(blank=True, null=True, verbose_name='payment confirmed')),
                ('cancelled_at', models.DateTimeField(blank=True, null=True, verbose_name='cancelled')),
                ('cancelled_by', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to=settings.AUTH_USER_MODEL, verbose_name='cancelled by')),
                ('company', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='top_up_requests', to='accounts.company', verbose_name='company')),
                ('confirmed_by', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to=settings.AUTH_USER_MODEL, verbose_name='confirmed by')),
                ('invoice', models.OneToOneField(blank=True, null=True, on_delete=django.db.models.deletion.PROTECT, related_name='top_up_request', to='invoicing.document', verbose_name='invoice')),
                ('requested_by', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to=settings.AUTH_USER_MODEL, verbose_name='requested by')),
                ('transfer', models.OneToOneField(blank=True, null=True, on_delete=django.db.models.deletion.PROTECT, related_name='+', to='billing.transfer', verbose_name='ledger transfer')),
            ],
            options={
                'verbose_name': 'top-up request',
                'verbose_name_plural': 'top-up requests',
                'ordering': ['-requested_at'],
            },
        ),
        migrations.AddConstraint(
            model_name='document',
            constraint=models.UniqueConstraint(fields=('kind', 'year', 'number'), name='document_number_unique'),
        ),
        migrations.AddConstraint(
            model_name='document',
            constraint=models.UniqueConstraint(condition=models.Q(('kind', 'act')), fields=('company', 'period_start'), name='one_act_per_company_month'),
        ),
        migrations.AddConstraint(
            model_name='document',
            constraint=models.CheckConstraint(condition=models.Q(('amount__gt', 0), ('number__gt', 0), ('vat_amount__gte', 0)), name='document_amounts_valid'),
        ),
        migrations.AddConstraint(
            model_name='document',
            constraint=models.CheckConstraint(condition=models.Q(models.Q(('kind', 'act'), _negated=True), models.Q(('period_end__isnull', False), ('period_start__isnull', False)), _connector='OR'), name='act_has_period'),
        ),
        migrations.AddConstraint(
            model_name='topuprequest',
            constraint=models.CheckConstraint(condition=models.Q(('amount__gt', 0)), name='top_up_request_amount_positive'),
        ),
        migrations.AddConstraint(
            model_name='topuprequest',
            constraint=models.UniqueConstraint(fields=('company', 'request_key'), name='top_up_request_key_unique'),
        ),
        migrations.AddConstraint(
            model_name='topuprequest',
            constraint=models.CheckConstraint(condition=models.Q(models.Q(('status', 'paid'), _negated=True), models.Q(('paid_at__isnull', False), ('transfer__isnull', False)), _connector='OR'), name='paid_top_up_has_transfer'),
        ),
        migrations.AddConstraint(
            model_name='topuprequest',
            constraint=models.CheckConstraint(condition=models.Q(('status__in', ['requested', 'cancelled']), ('invoice__isnull', False), _connector='OR'), name='invoiced_top_up_has_invoice'),
        ),
        migrations.RunSQL(SQL, REVERSE_SQL),
    ]
