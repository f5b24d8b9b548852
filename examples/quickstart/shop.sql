-- The quickstart's sample shop, created by sluice-runtime on first start when quickstart.db
-- does not exist. SQLite dialect; deterministic (no random()), so every fresh start has the same
-- rows. About 500 customers, 120 products, 2,000 orders and 5,000 order lines.
PRAGMA foreign_keys = ON;

CREATE TABLE customers (
  id          INTEGER PRIMARY KEY,
  name        TEXT    NOT NULL,
  email       TEXT    NOT NULL UNIQUE,
  phone       TEXT,                                  -- NULL for every seventh customer
  country     TEXT    NOT NULL,
  vip         BOOLEAN NOT NULL DEFAULT 0,
  balance     DECIMAL(12,2) NOT NULL DEFAULT 0,
  signed_up   DATE    NOT NULL,
  created_at  TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
);

CREATE TABLE products (
  id               INTEGER PRIMARY KEY,
  sku              TEXT    NOT NULL UNIQUE,
  name             TEXT    NOT NULL,
  category         TEXT    NOT NULL,
  price            DECIMAL(10,2) NOT NULL CHECK (price >= 0),
  in_stock         BOOLEAN NOT NULL DEFAULT 1,
  attributes       JSON,                             -- colour, weight; NULL for some
  discontinued_on  DATE
);

CREATE TABLE orders (
  id           INTEGER PRIMARY KEY,
  customer_id  INTEGER NOT NULL REFERENCES customers(id),
  status       TEXT    NOT NULL DEFAULT 'new' CHECK (status IN ('new', 'paid', 'shipped', 'cancelled')),
  ordered_at   TIMESTAMP NOT NULL,
  shipped_on   DATE,
  total        DECIMAL(12,2) NOT NULL DEFAULT 0,
  note         TEXT
);
CREATE INDEX orders_customer_id_idx ON orders (customer_id);

CREATE TABLE order_items (
  order_id    INTEGER NOT NULL REFERENCES orders(id) ON DELETE CASCADE,
  product_id  INTEGER NOT NULL REFERENCES products(id),
  quantity    INTEGER NOT NULL CHECK (quantity > 0),
  unit_price  DECIMAL(10,2) NOT NULL,
  PRIMARY KEY (order_id, product_id)
);
CREATE INDEX order_items_product_id_idx ON order_items (product_id);

CREATE VIEW product_catalog AS
  SELECT id, sku, name, category, price
  FROM products
  WHERE in_stock AND discontinued_on IS NULL;

WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 500)
INSERT INTO customers (id, name, email, phone, country, vip, balance, signed_up, created_at)
SELECT i,
       'Customer ' || i,
       'customer' || i || '@example.com',
       CASE WHEN i % 7 = 0 THEN NULL ELSE '+33 6 ' || printf('%02d %02d %02d %02d', i % 100, (i * 7) % 100, (i * 13) % 100, (i * 31) % 100) END,
       (CASE i % 8 WHEN 0 THEN 'FR' WHEN 1 THEN 'DE' WHEN 2 THEN 'US' WHEN 3 THEN 'GB'
                   WHEN 4 THEN 'JP' WHEN 5 THEN 'BR' WHEN 6 THEN 'IN' ELSE 'NL' END),
       i % 11 = 0,
       round(((i * 7919) % 100000) / 10.0, 2),
       date('2023-01-01', '+' || (i % 700) || ' days'),
       datetime('2023-01-01 08:00:00', '+' || (i % 700) || ' days', '+' || (i * 37 % 600) || ' minutes')
FROM n;

WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 120)
INSERT INTO products (id, sku, name, category, price, in_stock, attributes, discontinued_on)
SELECT i,
       'SKU-' || printf('%04d', i),
       (CASE i % 6 WHEN 0 THEN 'Kettle' WHEN 1 THEN 'Mug' WHEN 2 THEN 'Teapot' WHEN 3 THEN 'Grinder'
                   WHEN 4 THEN 'Scale' ELSE 'Filter' END) || ' ' || i,
       (CASE i % 4 WHEN 0 THEN 'kitchen' WHEN 1 THEN 'tableware' WHEN 2 THEN 'coffee' ELSE 'tea' END),
       round(4.5 + ((i * 389) % 9000) / 100.0, 2),
       i % 9 <> 0,
       CASE WHEN i % 5 = 0 THEN NULL
            ELSE json_object('colour', (CASE i % 3 WHEN 0 THEN 'black' WHEN 1 THEN 'white' ELSE 'red' END),
                             'weight_g', 100 + (i * 17) % 900,
                             'tags', json_array('shop', 'sample')) END,
       CASE WHEN i % 13 = 0 THEN date('2024-06-01', '+' || i || ' days') END
FROM n;

WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000)
INSERT INTO orders (id, customer_id, status, ordered_at, shipped_on, note)
SELECT i,
       1 + (i * 37) % 500,
       (CASE i % 4 WHEN 0 THEN 'new' WHEN 1 THEN 'paid' WHEN 2 THEN 'shipped' ELSE 'cancelled' END),
       datetime('2024-01-01 09:00:00', '+' || (i / 3) || ' hours', '+' || (i % 60) || ' minutes'),
       CASE WHEN i % 4 = 2 THEN date('2024-01-03', '+' || (i / 72) || ' days') END,
       CASE WHEN i % 10 = 0 THEN 'Leave at the door' END
FROM n;

-- Two or three lines per order, each a distinct product.
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000),
line(k) AS (SELECT 0 UNION ALL SELECT 1 UNION ALL SELECT 2)
INSERT INTO order_items (order_id, product_id, quantity, unit_price)
SELECT n.i,
       1 + (n.i * 7 + line.k * 41) % 120,
       1 + (n.i + line.k) % 4,
       p.price
FROM n CROSS JOIN line
JOIN products p ON p.id = 1 + (n.i * 7 + line.k * 41) % 120
WHERE line.k < 2 OR n.i % 2 = 0;

UPDATE orders SET total = (
  SELECT round(sum(quantity * unit_price), 2) FROM order_items WHERE order_items.order_id = orders.id
);
