\set c random(0, 9)
SELECT c.id, c.name, c.country, c.balance, (SELECT coalesce(json_agg(json_build_object('id', o.id, 'amount', o.amount, 'status', o.status) ORDER BY o.id), '[]') FROM orders o WHERE o.customer_id = c.id) AS orders FROM customers c WHERE c.country = (ARRAY['US','DE','FR','GB','JP','BR','IN','CA','AU','NL'])[1 + :c] ORDER BY c.id LIMIT 20;
