-- The identity sync's read-only role in Backend.AI's PostgreSQL (README, "Identities from
-- Backend.AI"): it reads exactly the columns gateway sync-identities reads (keypairs, users,
-- groups, memberships, domains: the same from 23.09 to 26.8) and nothing else, read-only.
-- keypairs.secret_key is plaintext: this role is as sensitive as the manager's own.
-- Run as the database's owner or a superuser, in Backend.AI's database:
--   psql "$BACKENDAI_DB_OWNER_DSN" -v ON_ERROR_STOP=1 -v password="$PASSWORD" -f sync-role.sql
CREATE ROLE kev_sync LOGIN PASSWORD :'password'
    NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
ALTER ROLE kev_sync SET default_transaction_read_only = on;
GRANT CONNECT ON DATABASE :"DBNAME" TO kev_sync;
GRANT USAGE ON SCHEMA public TO kev_sync;
GRANT SELECT (access_key, secret_key, is_active, is_admin, "user") ON TABLE keypairs TO kev_sync;
GRANT SELECT (uuid, email, role, status, domain_name) ON TABLE users TO kev_sync;
GRANT SELECT (id, name, domain_name, is_active) ON TABLE groups TO kev_sync;
GRANT SELECT (user_id, group_id) ON TABLE association_groups_users TO kev_sync;
GRANT SELECT (name, is_active) ON TABLE domains TO kev_sync;
