\set cid random(1, 100000)
INSERT INTO orders (customer_id, amount, status) VALUES (:cid, 12.50, 'new');
