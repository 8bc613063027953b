-- Orders of the shop. items is the cart's items as JSON:
-- [{"product":"tea","name":"Green tea","qty":2,"price_cents":450}, ...]
CREATE TABLE orders (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    cart        TEXT NOT NULL,
    total_cents INTEGER NOT NULL,
    items       TEXT NOT NULL
);
