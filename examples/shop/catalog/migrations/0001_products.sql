-- The catalog's products, prices in cents.
CREATE TABLE products (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    price_cents INTEGER NOT NULL
);

INSERT INTO products (id, name, price_cents) VALUES
    ('tea', 'Green tea', 450),
    ('mug', 'Blue mug', 1200),
    ('pot', 'Tea pot', 3500);
