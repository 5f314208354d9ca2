-- The default dataset: bare tables only. Primary keys, unique constraints, foreign keys and
-- indexes are in constraints.sql, applied after COPY (building them once over loaded rows is
-- several times faster than maintaining them row by row).
CREATE TABLE users (
    id          bigint      NOT NULL,
    first_name  text        NOT NULL,
    last_name   text        NOT NULL,
    email       text        NOT NULL,
    phone       text        NOT NULL,
    street      text        NOT NULL,
    city        text        NOT NULL,
    state       text        NOT NULL,
    postcode    text        NOT NULL,
    birth_date  date        NOT NULL,
    created_at  timestamptz NOT NULL
);

CREATE TABLE orders (
    id           bigint      NOT NULL,
    user_id      bigint      NOT NULL,
    status       text        NOT NULL,
    total_cents  integer     NOT NULL,
    currency     text        NOT NULL,
    created_at   timestamptz NOT NULL
);

CREATE TABLE payments (
    id            bigint      NOT NULL,
    order_id      bigint      NOT NULL,
    amount_cents  integer     NOT NULL,
    card_number   text        NOT NULL,
    status        text        NOT NULL,
    paid_at       timestamptz NOT NULL
);
