-- One role and one database per service: a service can read and write only its own
-- tables (its migrations create them at start-up). Run once by the postgres image
-- on an empty data volume (/docker-entrypoint-initdb.d). The passwords come from the
-- container's environment through psql's \getenv (psql 15 or newer).

\getenv registry_password KASVU_REGISTRY_DB_PASSWORD
\getenv selfmonitoring_password KASVU_SELFMONITORING_DB_PASSWORD
\getenv tendering_password KASVU_TENDERING_DB_PASSWORD

CREATE ROLE registry LOGIN PASSWORD :'registry_password';
CREATE ROLE selfmonitoring LOGIN PASSWORD :'selfmonitoring_password';
CREATE ROLE tendering LOGIN PASSWORD :'tendering_password';

CREATE DATABASE kasvu_registry OWNER registry;
CREATE DATABASE kasvu_selfmonitoring OWNER selfmonitoring;
CREATE DATABASE kasvu_tendering OWNER tendering;

-- PostgreSQL 15+ no longer lets every role create objects in public; the owner of
-- each database gets the schema too.
\connect kasvu_registry
ALTER SCHEMA public OWNER TO registry;
\connect kasvu_selfmonitoring
ALTER SCHEMA public OWNER TO selfmonitoring;
\connect kasvu_tendering
ALTER SCHEMA public OWNER TO tendering;
