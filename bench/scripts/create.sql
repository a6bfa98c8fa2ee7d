-- One create per transaction, as POST /tests does. pgbench's variables live
-- as long as its client: i counts this client's creates, base is different
-- for every run (-D), client_id tells the clients apart, so no two
-- transactions of any run insert the same name. -M prepared makes :name a
-- parameter.
\set i :i + 1
\set name :base + :client_id * 100000000 + :i
INSERT INTO test (name) VALUES (:name) RETURNING id, name;
