-- GET /tests?limit=100&after=<random>: the service's keyset page from a
-- random place in the table (ids 1 to :rows, given with -D), as pages.lua
-- asks for it.
\set after random(0, greatest(:rows - 100, 0))
SELECT id, name FROM test WHERE id > :after ORDER BY id LIMIT 100;
