-- The example API's tables. Idempotent, so the app can apply it at start-up and tests can
-- apply it inside their rolled-back transaction. They live in their own schema, "api", so they
-- never meet tables a dataset seeded (envkit's default dataset has a public.users of its own).
CREATE SCHEMA IF NOT EXISTS api;
CREATE TABLE IF NOT EXISTS api.users (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name       text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    email      text NOT NULL UNIQUE CHECK (position('@' IN email) > 1),
    created_at timestamptz NOT NULL DEFAULT now()
);
