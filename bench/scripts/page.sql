-- One page of 100 rows, as GET /tests?limit=100 reads it.
SELECT id, name FROM test ORDER BY id LIMIT 100;
