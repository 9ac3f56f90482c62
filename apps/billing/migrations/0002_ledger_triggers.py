"""The database keeps account sums in step with transfers and guards transfer immutability.

* AFTER INSERT (per statement, over a transition table): pending/posted sums of the touched
  accounts grow by the new transfers, one UPDATE per account per statement (so a batch of
  usage transfers touches the hot platform accounts once). The accounts are locked in id order
  first, so two statements never deadlock on each other. The account CHECK constraint
  ``account_debits_within_credits`` is evaluated on that UPDATE, under the row lock: a wallet
  that must not go negative cannot be overdrawn however many transactions post at once.
* BEFORE UPDATE (per row): only a pending hold may change, only its status (to committed,
  voided or expired) and resolved_at; everything else about a transfer is immutable.
* AFTER UPDATE (per statement): resolved holds leave the pending sums.
* BEFORE DELETE: transfers are never deleted (corrections are new transfers).
"""

from __future__ import annotations

from django.db import migrations

SQL = r"""
CREATE OR REPLACE FUNCTION billing_lock_accounts(ids bigint[]) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM billing_account WHERE id = ANY(ids) ORDER BY id FOR NO KEY UPDATE;
END $$;

CREATE OR REPLACE FUNCTION billing_transfer_after_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM new_rows WHERE status NOT IN ('pending', 'posted')) THEN
        RAISE EXCEPTION 'a transfer is created pending or posted' USING ERRCODE = 'check_violation';
    END IF;
    PERFORM billing_lock_accounts(ARRAY(
        SELECT debit_account_id FROM new_rows UNION SELECT credit_account_id FROM new_rows));
    UPDATE billing_account a SET
        posted_debits = a.posted_debits + d.posted_debits,
        posted_credits = a.posted_credits + d.posted_credits,
        pending_debits = a.pending_debits + d.pending_debits,
        pending_credits = a.pending_credits + d.pending_credits
    FROM (
        SELECT account_id, sum(pd) AS posted_debits, sum(pc) AS posted_credits,
               sum(nd) AS pending_debits, sum(nc) AS pending_credits
        FROM (
            SELECT debit_account_id AS account_id,
                   CASE WHEN status = 'posted' THEN amount ELSE 0 END AS pd, 0::bigint AS pc,
                   CASE WHEN status = 'pending' THEN amount ELSE 0 END AS nd, 0::bigint AS nc
            FROM new_rows
            UNION ALL
            SELECT credit_account_id, 0::bigint,
                   CASE WHEN status = 'posted' THEN amount ELSE 0 END,
                   0::bigint, CASE WHEN status = 'pending' THEN amount ELSE 0 END
            FROM new_rows
        ) legs GROUP BY account_id
    ) d
    WHERE a.id = d.account_id;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION billing_transfer_before_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status <> 'pending' THEN
        RAISE EXCEPTION 'transfer % is %, which is final', OLD.id, OLD.status USING ERRCODE = 'restrict_violation';
    END IF;
    IF NEW.status NOT IN ('committed', 'voided', 'expired') THEN
        RAISE EXCEPTION 'a hold can only become committed, voided or expired' USING ERRCODE = 'restrict_violation';
    END IF;
    IF (NEW.idempotency_id, NEW.debit_account_id, NEW.credit_account_id, NEW.amount, NEW.kind,
        NEW.pending_id, NEW.expires_at, NEW.description, NEW.metadata, NEW.created_at)
       IS DISTINCT FROM
       (OLD.idempotency_id, OLD.debit_account_id, OLD.credit_account_id, OLD.amount, OLD.kind,
        OLD.pending_id, OLD.expires_at, OLD.description, OLD.metadata, OLD.created_at) THEN
        RAISE EXCEPTION 'transfers are immutable; only a hold''s status may change' USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN NEW;
END $$;

CREATE OR REPLACE FUNCTION billing_transfer_after_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM billing_lock_accounts(ARRAY(
        SELECT debit_account_id FROM new_rows UNION SELECT credit_account_id FROM new_rows));
    UPDATE billing_account a SET
        pending_debits = a.pending_debits - d.pending_debits,
        pending_credits = a.pending_credits - d.pending_credits
    FROM (
        SELECT account_id, sum(nd) AS pending_debits, sum(nc) AS pending_credits
        FROM (
            SELECT n.debit_account_id AS account_id, n.amount AS nd, 0::bigint AS nc
            FROM new_rows n JOIN old_rows o ON o.id = n.id WHERE o.status = 'pending' AND n.status <> 'pending'
            UNION ALL
            SELECT n.credit_account_id, 0::bigint, n.amount
            FROM new_rows n JOIN old_rows o ON o.id = n.id WHERE o.status = 'pending' AND n.status <> 'pending'
        ) legs GROUP BY account_id
    ) d
    WHERE a.id = d.account_id;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION billing_transfer_forbid_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger transfers are never deleted; post a correction' USING ERRCODE = 'restrict_violation';
END $$;

CREATE TRIGGER billing_transfer_after_insert AFTER INSERT ON billing_transfer
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION billing_transfer_after_insert();
CREATE TRIGGER billing_transfer_before_update BEFORE UPDATE ON billing_transfer
    FOR EACH ROW EXECUTE FUNCTION billing_transfer_before_update();
CREATE TRIGGER billing_transfer_after_update AFTER UPDATE ON billing_transfer
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION billing_transfer_after_update();
CREATE TRIGGER billing_transfer_forbid_delete BEFORE DELETE ON billing_transfer
    FOR EACH ROW EXECUTE FUNCTION billing_transfer_forbid_delete();
"""

REVERSE_SQL = r"""
DROP TRIGGER IF EXISTS billing_transfer_forbid_delete ON billing_transfer;
DROP TRIGGER IF EXISTS billing_transfer_after_update ON billing_transfer;
DROP TRIGGER IF EXISTS billing_transfer_before_update ON billing_transfer;
DROP TRIGGER IF EXISTS billing_transfer_after_insert ON billing_transfer;
DROP FUNCTION IF EXISTS billing_transfer_forbid_delete();
DROP FUNCTION IF EXISTS billing_transfer_after_update();
DROP FUNCTION IF EXISTS billing_transfer_before_update();
DROP FUNCTION IF EXISTS billing_transfer_after_insert();
DROP FUNCTION IF EXISTS billing_lock_accounts(bigint[]);
"""


class Migration(migrations.Migration):
    dependencies = [("billing", "0001_initial")]

    operations = [migrations.RunSQL(SQL, REVERSE_SQL)]
