ALTER TABLE users ADD PRIMARY KEY (id);
ALTER TABLE users ADD UNIQUE (email);
ALTER TABLE users ADD CHECK (length(name) BETWEEN 1 AND 200);
ALTER TABLE users ADD CHECK (position('@' IN email) > 1);
-- New rows (POST /users) continue after the seeded ids.
SELECT setval(pg_get_serial_sequence('users', 'id'), (SELECT max(id) FROM users));
