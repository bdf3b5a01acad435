-- veilgate sample schema: customers holding PII, and their orders.
--
-- Self-contained (no extensions), deterministic (the same rows on every run) and idempotent
-- (drops and recreates its tables).  All values are fake: names from small lists, e-mail
-- addresses on the reserved example.* domains, 555 phone numbers, Luhn-valid test card numbers,
-- SSNs in never-issued-looking but well-formed shapes, mod-97-valid IBANs, documentation IPs.
--
-- Run with:  psql -v ON_ERROR_STOP=1 -d app -f sample.sql

SET client_min_messages = warning;

DROP TABLE IF EXISTS orders CASCADE;
DROP TABLE IF EXISTS customers CASCADE;

-- Luhn check digit for a string of digits (session-local helper, gone when the session ends).
CREATE OR REPLACE FUNCTION pg_temp.luhn_check_digit(digits text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT AS $$
  SELECT ((10 - (sum(
           CASE WHEN i % 2 = 1
                THEN CASE WHEN d * 2 > 9 THEN d * 2 - 9 ELSE d * 2 END
                ELSE d END) % 10)) % 10)::text
  FROM (SELECT i, substr(reverse(digits), i, 1)::int AS d
        FROM generate_series(1, length(digits)) AS i) AS s
$$;

-- IBAN check digits (ISO 13616 mod 97) for a country code and a numeric BBAN.
CREATE OR REPLACE FUNCTION pg_temp.iban(country text, bban text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT AS $$
  SELECT country
         || lpad((98 - ((bban
                         || (ascii(substr(country, 1, 1)) - 55)::text
                         || (ascii(substr(country, 2, 1)) - 55)::text
                         || '00')::numeric % 97))::text, 2, '0')
         || bban
$$;

CREATE TABLE customers (
    id          integer PRIMARY KEY,
    full_name   text        NOT NULL,
    email       text        NOT NULL,
    phone       text        NOT NULL,
    card_number text        NOT NULL,
    ssn         text        NOT NULL,
    iban        text        NOT NULL,
    ip_address  inet        NOT NULL,
    notes       text,
    created_at  timestamptz NOT NULL
);

COMMENT ON TABLE customers IS 'veilgate demo: fake customer PII (deterministic)';

WITH names AS (
    SELECT ARRAY['Ada', 'Grace', 'Alan', 'Edsger', 'Barbara', 'Donald', 'Frances', 'Ken',
                 'Margaret', 'Dennis', 'Radia', 'Linus', 'Sophie', 'Tim', 'Hedy', 'John',
                 'Katherine', 'Niklaus', 'Shafi', 'Leslie', 'Anita', 'Guido', 'Ruth', 'Bjarne']
               AS firsts,
           ARRAY['Lovelace', 'Hopper', 'Turing', 'Dijkstra', 'Liskov', 'Knuth', 'Allen',
                 'Thompson', 'Hamilton', 'Ritchie', 'Perlman', 'Torvalds', 'Wilson',
                 'Berners-Lee', 'Lamarr', 'McCarthy', 'Johnson', 'Wirth', 'Goldwasser',
                 'Lamport', 'Borg', 'van Rossum', 'Teitelbaum', 'Stroustrup', 'O''Neil']
               AS lasts,
           ARRAY['example.com', 'example.org', 'example.net'] AS domains,
           -- Well-known public test card numbers (all Luhn-valid).
           ARRAY['4111111111111111', '4012888888881881', '5555555555554444',
                 '5105105105105100', '378282246310005', '371449635398431',
                 '6011111111111117', '4242424242424242', '5200828282828210',
                 '3566002020360505'] AS test_cards,
           ARRAY['Prefers e-mail.', 'VIP since 2019.', 'Asked about the new pricing.',
                 'Requested invoice copies for Q3.', 'Do not call before 10am.',
                 'Loyalty programme member.', 'Moved to the annual plan.',
                 'Complained about late delivery; refund issued.', 'Referred by a colleague.',
                 'Wants paper statements.'] AS phrases
),
base AS (
    SELECT g AS id,
           n.*,
           md5('veilgate-customer-' || g) AS h
    FROM generate_series(1, 1000) AS g, names AS n
),
people AS (
    SELECT b.id,
           b.h,
           b.phrases,
           b.firsts[1 + (b.id * 7) % array_length(b.firsts, 1)] AS first_name,
           b.lasts[1 + (b.id * 11) % array_length(b.lasts, 1)] AS last_name,
           b.domains[1 + b.id % array_length(b.domains, 1)] AS domain,
           b.test_cards,
           -- 15 digits from the hash, issuer prefix 4 (Visa-like) or 5 (Mastercard-like).
           CASE WHEN b.id % 2 = 0 THEN '4' ELSE '5' || (1 + b.id % 5)::text END
             || substr(regexp_replace(
                  (('x' || substr(b.h, 1, 15))::bit(60)::bigint)::text, '\D', '', 'g')
                  || '00000000000000', 1, CASE WHEN b.id % 2 = 0 THEN 14 ELSE 13 END)
             AS card_prefix
    FROM base AS b
)
INSERT INTO customers (id, full_name, email, phone, card_number, ssn, iban, ip_address, notes,
                       created_at)
SELECT p.id,
       p.first_name || ' ' || p.last_name,
       lower(p.first_name) || '.' || lower(regexp_replace(p.last_name, '[^A-Za-z]', '', 'g'))
         || p.id || '@' || p.domain,
       CASE p.id % 3
         WHEN 0 THEN '+1-202-555-' || lpad((p.id % 10000)::text, 4, '0')
         WHEN 1 THEN '(312) 555-' || lpad(((p.id * 37) % 10000)::text, 4, '0')
         ELSE '+44 20 7946 ' || lpad(((p.id * 53) % 10000)::text, 4, '0')
       END,
       CASE
         WHEN p.id % 10 = 0 THEN p.test_cards[1 + (p.id / 10) % array_length(p.test_cards, 1)]
         WHEN p.id % 10 = 5 THEN
           -- grouped with spaces, as people type them
           regexp_replace(p.card_prefix || pg_temp.luhn_check_digit(p.card_prefix),
                          '(\d{4})(?=\d)', '\1 ', 'g')
         ELSE p.card_prefix || pg_temp.luhn_check_digit(p.card_prefix)
       END,
       lpad((100 + (p.id * 61) % 565)::text, 3, '0') || '-'
         || lpad((1 + (p.id * 17) % 99)::text, 2, '0') || '-'
         || lpad((1 + (p.id * 7919) % 9999)::text, 4, '0'),
       CASE WHEN p.id % 4 = 0
         THEN pg_temp.iban('GB', lpad(((p.id * 104729) % 100000000)::text, 8, '0')
                                  || lpad(((p.id * 7) % 1000000)::text, 6, '0') || '00000000')
         ELSE pg_temp.iban('DE', lpad(((p.id::bigint * 15485863) % 100000000)::text, 8, '0')
                                  || lpad(((p.id::bigint * 2654435761) % 10000000000)::text, 10, '0'))
       END,
       (CASE p.id % 3
          WHEN 0 THEN '192.0.2.'
          WHEN 1 THEN '198.51.100.'
          ELSE '203.0.113.'
        END || (1 + p.id % 254)::text)::inet,
       CASE
         WHEN p.id % 11 = 0 THEN NULL
         WHEN p.id % 7 = 0 THEN 'Prefers contact at ' || lower(p.first_name) || '@'
                                 || 'mail.example.org; ' || p.phrases[1 + p.id % 10]
         WHEN p.id % 7 = 3 THEN 'Call back on +1-202-555-' || lpad(((p.id * 3) % 10000)::text, 4,
                                 '0') || ' after 2pm. ' || p.phrases[1 + (p.id / 7) % 10]
         WHEN p.id % 13 = 0 THEN 'Paid by card ending ' || right(p.card_prefix, 4) || '. '
                                  || p.phrases[1 + p.id % 10]
         ELSE p.phrases[1 + p.id % 10]
       END,
       timestamptz '2024-01-01 00:00:00+00' + make_interval(hours => p.id * 13)
FROM people AS p
ORDER BY p.id;

CREATE TABLE orders (
    id           integer       PRIMARY KEY,
    customer_id  integer       NOT NULL REFERENCES customers (id) ON DELETE CASCADE,
    ordered_at   timestamptz   NOT NULL,
    status       text          NOT NULL,
    amount       numeric(10,2) NOT NULL,
    currency     char(3)       NOT NULL,
    ship_to      text          NOT NULL
);

CREATE INDEX orders_customer_id_idx ON orders (customer_id);

INSERT INTO orders (id, customer_id, ordered_at, status, amount, currency, ship_to)
SELECT g,
       1 + (g * 7919) % 1000,
       timestamptz '2024-02-01 00:00:00+00' + make_interval(mins => g * 97),
       (ARRAY['pending', 'paid', 'shipped', 'delivered', 'refunded'])[1 + g % 5],
       round((5 + (g * 7.13) % 995)::numeric, 2),
       (ARRAY['USD', 'EUR', 'GBP'])[1 + g % 3],
       (1 + g % 200)::text || ' ' ||
         (ARRAY['Main St', 'High Street', 'Elm Ave', 'Baker Street', 'Unter den Linden'])
           [1 + g % 5] || ', ' ||
         (ARRAY['Springfield', 'London', 'Berlin', 'Chicago', 'Washington'])[1 + (g / 5) % 5]
FROM generate_series(1, 3000) AS g;

ANALYZE customers;
ANALYZE orders;
