"""PostgreSQL refuses UPDATE and DELETE on the audit trail: a trigger raises for every row.

Only a superuser (or the table's owner) can drop or disable the trigger; ``manage.py audit_verify``
names any row changed or removed while it was off. TRUNCATE is left to privileges — Django's own test
flush truncates every table — and is caught by an anchor kept outside (``audit_verify --anchor``).
"""

from django.db import migrations

CREATE_FUNCTION = """
CREATE FUNCTION audit_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
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
