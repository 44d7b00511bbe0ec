-- A read-only role for Grafana's PostgreSQL datasource (runs once, at first start).
-- Earmark creates its tables later (earmark migrate), hence the default privileges.
CREATE ROLE grafana_reader LOGIN PASSWORD 'grafana_reader';
GRANT USAGE ON SCHEMA public TO grafana_reader;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO grafana_reader;
