"""Indexes for a wallet's history in ledger order (account, id), built without locking out writes."""

from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("billing", "0008_node_usage"),
    ]

    operations = [
        AddIndexConcurrently(
            model_name="transfer",
            index=models.Index(fields=["debit_account", "id"], name="transfer_debit_id"),
        ),
        AddIndexConcurrently(
            model_name="transfer",
            index=models.Index(fields=["credit_account", "id"], name="transfer_credit_id"),
        ),
    ]
