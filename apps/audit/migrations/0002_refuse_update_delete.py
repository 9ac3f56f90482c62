"""PostgreSQL refuses UPDATE and DELETE on the audit trail — with one exception, the seal.

A row is inserted pending (``seq`` and ``hash`` NULL) and sealed once, by ``services.seal_pending``:
an UPDATE that only sets ``seq``, ``prev_hash`` and ``hash`` of a row that has none yet, every other
column unchanged. Everything else — editing content, re-sealing, deleting — raises.

Only a superuser (or the table's owner) can drop or disable the trigger; ``manage.py audit_verify``
names any sealed row changed or removed while it was off. TRUNCATE is left to privileges — Django's
own test flush truncates every table — and is caught by an anchor kept outside
(``audit_verify --anchor``).
"""

from django.db import migrations

CREATE_FUNCTION = """
CREATE FUNCTION audit_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND OLD.hash IS NULL AND OLD.seq IS NULL AND NEW.hash IS NOT NULL AND NEW.seq IS NOT NULL
       AND (NEW.id, NEW.occurred_at, NEW.actor_id, NEW.actor_email, NEW.actor_role, NEW.company_id, NEW.supplier_id,
            NEW.action, NEW.object_type, NEW.object_id, NEW.object_label, NEW.before, NEW.after, NEW.client_ip,
            NEW.request_id)
           IS NOT DISTINCT FROM
           (OLD.id, OLD.occurred_at, OLD.actor_id, OLD.actor_email, OLD.actor_role, OLD.company_id, OLD.supplier_id,
            OLD.action, OLD.object_type, OLD.object_id, OLD.object_label, OLD.before, OLD.after, OLD.client_ip,
            OLD.request_id) THEN
        RETURN NEW;  -- the seal: chain fields set once, content untouched
    END IF;
    RAISE EXCEPTION 'audit_auditevent is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege', HINT = 'The audit trail is never edited; record a new event instead.';
END;
$$;
"""

CREATE_TRIGGER = """
CREATE TRIGGER audit_auditevent_append_only
    BEFORE UPDATE OR DELETE ON audit_auditevent
    FOR EACH ROW EXECUTE FUNCTION audit_refuse_change();
"""

BACKWARD = """
DROP TRIGGER IF EXISTS audit_auditevent_append_only ON audit_auditevent;
DROP FUNCTION IF EXISTS audit_refuse_change();
"""


class Migration(migrations.Migration):
    dependencies = [("audit", "0001_audit_event")]

    operations = [migrations.RunSQL(CREATE_FUNCTION + CREATE_TRIGGER, BACKWARD)]
