-- 100 tables for the start-to-ready figure: each with a primary key, a few typed columns, an
-- index and a foreign key to the table before it, so introspection sees keys and relations.
DO $$
BEGIN
  FOR n IN 1..100 LOOP
    EXECUTE format('DROP TABLE IF EXISTS t%s CASCADE', lpad(n::text, 3, '0'));
  END LOOP;
  FOR n IN 1..100 LOOP
    EXECUTE format(
      'CREATE TABLE t%s (
         id bigserial PRIMARY KEY,
         name text NOT NULL,
         status text NOT NULL DEFAULT ''new'',
         amount numeric(12,2),
         payload jsonb,
         created_at timestamptz NOT NULL DEFAULT now(),
         parent_id bigint %s
       )',
      lpad(n::text, 3, '0'),
      CASE WHEN n > 1 THEN format('REFERENCES t%s(id)', lpad((n - 1)::text, 3, '0')) ELSE '' END);
    EXECUTE format('CREATE INDEX t%s_status_idx ON t%s (status)', lpad(n::text, 3, '0'), lpad(n::text, 3, '0'));
  END LOOP;
END
$$;
