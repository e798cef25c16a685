#!/bin/sh
# Runs once, on an empty data directory (/docker-entrypoint-initdb.d). Creates the application role as a
# NON-superuser (row-level security does not apply to superusers) and installs pgvector as the superuser,
# in template1 too so that test databases the app role creates inherit it; the app's own
# CREATE EXTENSION IF NOT EXISTS is then a no-op, as on managed PostgreSQL.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -v app_user="$VISOR_DB_USER" -v app_password="$VISOR_DB_PASSWORD" -v app_db="$VISOR_DB_NAME" <<'SQL'
CREATE ROLE :"app_user" LOGIN CREATEDB NOSUPERUSER NOBYPASSRLS PASSWORD :'app_password';
CREATE DATABASE :"app_db" OWNER :"app_user";
\connect template1
CREATE EXTENSION IF NOT EXISTS vector;
\connect :"app_db"
CREATE EXTENSION IF NOT EXISTS vector;
SQL
