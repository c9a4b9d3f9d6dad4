"""On PostgreSQL: a NOTIFY on channel everlock_folders, with the ids of the folders changed,
whenever a transaction adds, changes or removes messages (mail.imap.notify listens)."""

from django.db import migrations

INSTALL = """
CREATE OR REPLACE FUNCTION everlock_notify_folders() RETURNS trigger AS $$
DECLARE
    ids text;
BEGIN
    IF TG_OP = 'DELETE' THEN
        SELECT string_agg(DISTINCT folder_id::text, ',') INTO ids FROM old_rows;
    ELSE
        SELECT string_agg(DISTINCT folder_id::text, ',') INTO ids FROM new_rows;
    END IF;
    IF ids IS NOT NULL THEN
        -- A NOTIFY payload holds under 8000 bytes: "*" stands for "any folder".
        PERFORM pg_notify('everlock_folders', CASE WHEN length(ids) > 7000 THEN '*' ELSE ids END);
    END IF;
    RETURN NULL;
END
$$ LANGUAGE plpgsql;
CREATE TRIGGER everlock_message_insert AFTER INSERT ON mail_message
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION everlock_notify_folders();
CREATE TRIGGER everlock_message_update AFTER UPDATE ON mail_message
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION everlock_notify_folders();
CREATE TRIGGER everlock_message_delete AFTER DELETE ON mail_message
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION everlock_notify_folders();
"""

REMOVE = """
DROP TRIGGER IF EXISTS everlock_message_insert ON mail_message;
DROP TRIGGER IF EXISTS everlock_message_update ON mail_message;
DROP TRIGGER IF EXISTS everlock_message_delete ON mail_message;
DROP FUNCTION IF EXISTS everlock_notify_folders();
"""


def install(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(INSTALL)


def remove(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(REMOVE)


class Migration(migrations.Migration):
    dependencies = [("mail", "0002_imap_state")]

    operations = [migrations.RunPython(install, remove)]
