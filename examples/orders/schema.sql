-- The orders app as it was before realtime_ext: a table, and a trigger that tells a LISTENing
-- bridge process about every order. Nothing here changes; the last line replaces the bridge.
CREATE TABLE IF NOT EXISTS orders (
    id         bigserial PRIMARY KEY,
    customer   text NOT NULL,
    total      numeric(10,2) NOT NULL,
    status     text NOT NULL DEFAULT 'new',
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE OR REPLACE FUNCTION orders_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('orders', row_to_json(NEW)::text);
    RETURN NEW;
END
$$;

DROP TRIGGER IF EXISTS orders_notify ON orders;
CREATE TRIGGER orders_notify AFTER INSERT OR UPDATE ON orders
    FOR EACH ROW EXECUTE FUNCTION orders_notify();

-- The one line that replaces the bridge: relay NOTIFY 'orders' to the browsers of web_anon.
SELECT realtime_relay('orders', as_json => true, readers => '{web_anon}');
