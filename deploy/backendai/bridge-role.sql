-- The bridge's read-only role in Backend.AI's PostgreSQL (README, "Beside an existing
-- Backend.AI"): it logs in, reads exactly the columns the bridge reads (an event's owner,
-- group and cluster role; the ended sessions it reconciles) and nothing else, and every
-- transaction it starts is read-only. Backend.AI 23.03 and later (the sessions table).
-- Run as the database's owner or a superuser, in Backend.AI's database:
--   psql "$BACKENDAI_DB_OWNER_DSN" -v ON_ERROR_STOP=1 -v password="$PASSWORD" -f bridge-role.sql
-- tests/system/test_bridge_readme.py runs it against the 23.09 and 26.8 schemas.
CREATE ROLE kev_bridge LOGIN PASSWORD :'password'
    NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
ALTER ROLE kev_bridge SET default_transaction_read_only = on;
GRANT CONNECT ON DATABASE :"DBNAME" TO kev_bridge;
GRANT USAGE ON SCHEMA public TO kev_bridge;
GRANT SELECT (id, session_id, session_name, access_key, domain_name, group_id, user_uuid,
              cluster_role, cluster_idx, status, status_history, terminated_at, result)
    ON TABLE kernels TO kev_bridge;
GRANT SELECT (id, name, access_key, domain_name, group_id, user_uuid, status, status_info,
              status_history, result, terminated_at, created_at)
    ON TABLE sessions TO kev_bridge;
GRANT SELECT (id, name, domain_name) ON TABLE groups TO kev_bridge;
