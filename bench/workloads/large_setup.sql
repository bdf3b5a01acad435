-- Table for the large-result workload (large.pgbench): 10,000 customer-like rows, 6 text columns
-- (names, e-mails, phones, card numbers, IBANs, free-text notes), ~170 bytes of text per row.
-- Deterministic and idempotent; the bench runs it once per cluster, as the database owner.
SET client_min_messages = warning;

DROP TABLE IF EXISTS bench_customers;

CREATE TABLE bench_customers (
    id          integer PRIMARY KEY,
    full_name   text NOT NULL,
    email       text NOT NULL,
    phone       text NOT NULL,
    card_number text NOT NULL,
    iban        text NOT NULL,
    notes       text NOT NULL
);

INSERT INTO bench_customers
SELECT g,
       f.first || ' ' || l.last,
       lower(f.first) || '.' || lower(l.last) || g || '@example.com',
       '+1-202-555-' || lpad((g % 10000)::text, 4, '0'),
       (ARRAY['4111111111111111', '5555555555554444', '4012888888881881', '378282246310005',
              '6011111111111117', '5105105105105100'])[1 + g % 6],
       'DE' || lpad((g % 97)::text, 2, '0') || lpad((g::bigint * 2654435761 % 1000000000000000000)
                                                       ::text, 18, '0'),
       CASE g % 4
         WHEN 0 THEN 'Customer asked to be contacted at ' || lower(f.first) || '@mail.example.org'
                     || ' about order ' || (g * 7) || '.'
         WHEN 1 THEN 'Call back on +44 20 7946 ' || lpad((g % 10000)::text, 4, '0')
                     || ' after 2pm; prefers phone over e-mail.'
         WHEN 2 THEN 'Long-standing customer, loyalty tier ' || (g % 5) || ', no open tickets, '
                     || 'renewal due in month ' || (1 + g % 12) || '.'
         ELSE 'Paid with card ending ' || lpad((g % 10000)::text, 4, '0')
              || '; invoice sent; delivery confirmed by courier.'
       END
FROM generate_series(1, 10000) AS g
CROSS JOIN LATERAL (SELECT (ARRAY['Ada', 'Grace', 'Alan', 'Edsger', 'Barbara', 'Donald',
                                  'Frances', 'Ken', 'Margaret', 'Dennis'])[1 + g % 10] AS first)
               AS f
CROSS JOIN LATERAL (SELECT (ARRAY['Lovelace', 'Hopper', 'Turing', 'Dijkstra', 'Liskov', 'Knuth',
                                  'Allen', 'Thompson', 'Hamilton', 'Ritchie', 'Perlman'])
                             [1 + (g * 7) % 11] AS last) AS l;

ANALYZE bench_customers;
