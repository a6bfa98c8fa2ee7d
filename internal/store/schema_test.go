package store_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/ybrest/testsapi/internal/dbtest"
	"github.com/ybrest/testsapi/internal/store"
)

// latest is the version of the last schema step.
func latest() int {
	m := store.Migrations()
	return m[len(m)-1].Version()
}

// recorded returns the versions schema_migrations holds, in order.
func recorded(t *testing.T, pool *pgxpool.Pool) []int {
	t.Helper()
	rows, err := pool.Query(t.Context(), `SELECT version FROM schema_migrations ORDER BY version`)
	if err != nil {
		t.Fatal(err)
	}
	versions, err := pgx.CollectRows(rows, pgx.RowTo[int])
	if err != nil {
		t.Fatal(err)
	}
	return versions
}

// wantAllRecorded fails unless every step is recorded, once.
func wantAllRecorded(t *testing.T, pool *pgxpool.Pool) {
	t.Helper()
	got := recorded(t, pool)
	if len(got) != latest() || got[len(got)-1] != latest() {
		t.Fatalf("schema_migrations holds %v, want 1..%d", got, latest())
	}
}

// mustUsable fails unless st can create a row and read back want.
func mustUsable(t *testing.T, st *store.Store, want ...store.Test) {
	t.Helper()
	if _, err := st.Create(t.Context(), fmt.Sprintf("new-%d", time.Now().UnixNano())); err != nil {
		t.Fatalf("Create after Migrate: %v", err)
	}
	for _, w := range want {
		got, err := st.Get(t.Context(), int64(w.ID))
		if err != nil || got != w {
			t.Fatalf("row kept from before: %+v %v, want %+v", got, err, w)
		}
	}
}

// TestMigrateFromEachStep: a database left at any earlier step, rows and
// all, moves to the latest step and keeps its rows.
func TestMigrateFromEachStep(t *testing.T) {
	t.Parallel()
	steps := store.Migrations()
	for k := range len(steps) + 1 {
		t.Run(fmt.Sprintf("AtStep%d", k), func(t *testing.T) {
			t.Parallel()
			st, pool := mustStore(t, dbtest.NewSchema(t))
			if err := st.ApplySteps(t.Context(), steps[:k]); err != nil {
				t.Fatal(err)
			}
			if got := recorded(t, pool); len(got) != k {
				t.Fatalf("after %d steps schema_migrations holds %v", k, got)
			}
			var kept []store.Test
			if k >= 1 {
				var row store.Test
				if err := pool.QueryRow(t.Context(), `INSERT INTO test (name) VALUES ('old') RETURNING id, name`).Scan(&row.ID, &row.Name); err != nil {
					t.Fatal(err)
				}
				kept = append(kept, row)
			}
			if _, _, err := st.Migrate(t.Context()); err != nil {
				t.Fatal(err)
			}
			wantAllRecorded(t, pool)
			mustUsable(t, st, kept...)
		})
	}
}

// TestMigratePreMigrations: tables made by the service before it recorded
// its steps (CREATE TABLE IF NOT EXISTS at every start, no
// schema_migrations) are taken over as they are.
func TestMigratePreMigrations(t *testing.T) {
	t.Parallel()
	st, pool := mustStore(t, dbtest.NewSchema(t))
	// The last release without steps ran steps 1 and 2's DDL at every
	// start and recorded nothing.
	if err := st.ApplySteps(t.Context(), store.Migrations()[:2]); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(t.Context(), `DROP TABLE schema_migrations`); err != nil {
		t.Fatal(err)
	}
	var bob store.Test
	if err := pool.QueryRow(t.Context(), `INSERT INTO test (name) VALUES ('Bob') RETURNING id, name`).Scan(&bob.ID, &bob.Name); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(t.Context(), `INSERT INTO idempotency_keys (key, fingerprint, claim, status) VALUES ('k', 'f', 'c', 201)`); err != nil {
		t.Fatal(err)
	}
	if _, _, err := st.Migrate(t.Context()); err != nil {
		t.Fatal(err)
	}
	wantAllRecorded(t, pool)
	mustUsable(t, st, bob)
	var keys int
	if err := pool.QueryRow(t.Context(), `SELECT count(*) FROM idempotency_keys`).Scan(&keys); err != nil || keys != 1 {
		t.Fatalf("idempotency keys after Migrate: %d %v, want the 1 kept", keys, err)
	}
}

// TestMigrateSQLAlchemyTable: the table the seed's SQLAlchemy program
// makes (SERIAL id, plain PRIMARY KEY, its rows inserted by SQLAlchemy)
// moves forward; new rows take ids after the sequence's.
func TestMigrateSQLAlchemyTable(t *testing.T) {
	t.Parallel()
	st, pool := mustStore(t, dbtest.NewSchema(t))
	// What SQLAlchemy emits for the seed's model (Column(Integer,
	// primary_key=True), Column(String(255), unique=True, nullable=False)).
	const ddl = `
CREATE TABLE test (
	id SERIAL NOT NULL, 
	name VARCHAR(255) NOT NULL, 
	PRIMARY KEY (id), 
	UNIQUE (name)
)`
	if _, err := pool.Exec(t.Context(), ddl); err != nil {
		t.Fatal(err)
	}
	var ann store.Test
	if err := pool.QueryRow(t.Context(), `INSERT INTO test (name) VALUES ('Ann') RETURNING id, name`).Scan(&ann.ID, &ann.Name); err != nil {
		t.Fatal(err)
	}
	if _, _, err := st.Migrate(t.Context()); err != nil {
		t.Fatal(err)
	}
	wantAllRecorded(t, pool)
	mustUsable(t, st, ann)
	if _, err := st.Create(t.Context(), "Ann"); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("name taken in SQLAlchemy's table: %v, want ErrConflict", err)
	}
}

// TestMigrateConcurrently starts several "instances" (each its own pool) on
// one empty schema at once: every one must come up, and each step must be
// recorded once.
func TestMigrateConcurrently(t *testing.T) {
	t.Parallel()
	url := dbtest.NewSchema(t)
	migrateAtOnce(t, url, url)
}

// TestMigrateConcurrentlyWithoutLock is TestMigrateConcurrently on a server
// without advisory locks, as YugabyteDB before 2025.1 is: pg_advisory_lock
// answers 0A000 (a function of the test's schema, found before
// pg_catalog's), and only the retries on concurrent DDL errors keep the
// instances from failing.
func TestMigrateConcurrentlyWithoutLock(t *testing.T) {
	t.Parallel()
	url := dbtest.NewSchema(t)
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	schema := cfg.RuntimeParams["search_path"]
	const noLock = `
CREATE FUNCTION pg_advisory_lock(bigint) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'advisory locks are not yet implemented' USING ERRCODE = '0A000';
END
$$`
	if err := exec(t, url, noLock); err != nil {
		t.Fatal(err)
	}
	migrateAtOnce(t, url, strings.Replace(url, "search_path="+schema, "search_path="+schema+"%2Cpg_catalog", 1))
}

// migrateAtOnce runs Migrate from 8 pools on instanceURL at once and checks
// on url that all came up and each step was recorded once.
func migrateAtOnce(t *testing.T, url, instanceURL string) {
	t.Helper()
	const instances = 8
	var wg sync.WaitGroup
	errs := make([]error, instances)
	stores := make([]*store.Store, instances)
	for i := range instances {
		stores[i], _ = mustStore(t, instanceURL)
	}
	for i := range instances {
		wg.Go(func() { _, _, errs[i] = stores[i].Migrate(t.Context()) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("instance %d: %v", i, err)
		}
	}
	for i, st := range stores {
		if _, err := st.Create(t.Context(), "from-"+string(rune('a'+i))); err != nil {
			t.Errorf("instance %d create: %v", i, err)
		}
	}
	_, pool := mustStore(t, url)
	wantAllRecorded(t, pool)
}

// exec runs one statement on a connection of its own.
func exec(t *testing.T, url, sql string) error {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), url)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	_, err = conn.Exec(t.Context(), sql)
	return err
}

// TestMigrateFailingStep: a step that fails part way leaves the recorded
// version where it was and none of its changes; Migrate reports it as a
// permanent error and the store stays not ready.
func TestMigrateFailingStep(t *testing.T) {
	t.Parallel()
	url := dbtest.NewSchema(t)
	st, pool := mustStore(t, url)
	if _, _, err := st.Migrate(t.Context()); err != nil {
		t.Fatal(err)
	}
	before := recorded(t, pool)
	broken := store.NewStep(latest()+1, "broken",
		`CREATE TABLE half_done (x integer)`,
		`ALTER TABLE test ADD COLUMN created_at timestamptz`,
		`SELECT 1/0`)
	st2, _ := mustStore(t, url) // another instance, whose Migrate has not succeeded yet
	_, _, err := st2.MigrateWith(t.Context(), append(store.Migrations(), broken))
	if err == nil || errors.Is(err, store.ErrUnavailable) || !strings.Contains(err.Error(), "broken") {
		t.Fatalf("Migrate with a failing step: %v, want a permanent error naming the step", err)
	}
	if err := st2.Ping(t.Context()); !errors.Is(err, store.ErrUnavailable) {
		t.Fatalf("Ping after a failed Migrate: %v, want ErrUnavailable", err)
	}
	if got := recorded(t, pool); fmt.Sprint(got) != fmt.Sprint(before) {
		t.Fatalf("schema_migrations after a failed step: %v, want %v", got, before)
	}
	var n int
	const q = `
SELECT count(*)
FROM information_schema.columns
WHERE table_schema = current_schema()
  AND (table_name = 'half_done' OR column_name = 'created_at' AND table_name = 'test')`
	if err := pool.QueryRow(t.Context(), q).Scan(&n); err != nil || n != 0 {
		t.Fatalf("the failed step's DDL was kept: %d objects, %v", n, err)
	}
}

// TestMigrateUpToDate: on a database at the latest step Migrate runs no
// step again. The list here has a step that fails if run twice.
func TestMigrateUpToDate(t *testing.T) {
	t.Parallel()
	st, pool := mustStore(t, dbtest.NewSchema(t))
	steps := append(store.Migrations(), store.NewStep(latest()+1, "not idempotent", `CREATE TABLE once (x integer)`))
	if _, _, err := st.MigrateWith(t.Context(), steps); err != nil {
		t.Fatal(err)
	}
	var before time.Time
	if err := pool.QueryRow(t.Context(), `SELECT max(applied_at) FROM schema_migrations`).Scan(&before); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if _, _, err := st.MigrateWith(t.Context(), steps); err != nil {
			t.Fatalf("Migrate on an up-to-date database: %v", err)
		}
	}
	var after time.Time
	if err := pool.QueryRow(t.Context(), `SELECT max(applied_at) FROM schema_migrations`).Scan(&after); err != nil {
		t.Fatal(err)
	}
	if got := recorded(t, pool); len(got) != latest()+1 || !after.Equal(before) {
		t.Fatalf("schema_migrations changed by an up-to-date Migrate: %v, applied_at %v -> %v", got, before, after)
	}
}

// TestMigrateLockErrorClosesConnection: when pg_advisory_lock answers an
// error (here a lock timeout while another session holds the lock),
// the connection that asked is closed, not put back in the pool, since on
// YugabyteDB it may hold the lock all the same (yugabyte-db#26105). A
// dedicated server: the test holds the lock every instance on the shared
// database would wait for.
func TestMigrateLockErrorClosesConnection(t *testing.T) {
	t.Parallel()
	srv := dbtest.NewServer(t)
	holder, err := pgx.Connect(t.Context(), srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close(context.Background())
	if _, err := holder.Exec(t.Context(), `SELECT pg_advisory_lock($1)`, store.SchemaLock); err != nil {
		t.Fatal(err)
	}
	cfg, err := pgxpool.ParseConfig(srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	// lock_timeout, not statement_timeout: it cuts only the wait for the
	// lock, so the Migrate after the unlock is not failed by a statement
	// that a busy machine runs in more than 200 ms.
	cfg.ConnConfig.RuntimeParams["lock_timeout"] = "200"
	pool, err := pgxpool.NewWithConfig(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	st := store.New(pool)
	_, _, err = st.Migrate(t.Context())
	if !errors.Is(err, store.ErrUnavailable) || !strings.Contains(err.Error(), "lock for schema") {
		t.Fatalf("Migrate while the lock is held past lock_timeout: %v, want ErrUnavailable from the lock", err)
	}
	if n := pool.Stat().TotalConns(); n != 0 {
		t.Fatalf("the pool keeps %d connections after the failed lock call, want the connection closed", n)
	}
	if _, err := holder.Exec(t.Context(), `SELECT pg_advisory_unlock($1)`, store.SchemaLock); err != nil {
		t.Fatal(err)
	}
	if _, _, err := st.Migrate(t.Context()); err != nil {
		t.Fatalf("Migrate once the lock is free: %v", err)
	}
}

func TestHashSharded(t *testing.T) {
	tests := []struct {
		indexdef string
		want     bool
	}{
		// As YugabyteDB's pg_get_indexdef (and pg_indexes.indexdef) shows
		// primary keys: a plain PRIMARY KEY (id), SQLAlchemy's included...
		{"CREATE UNIQUE INDEX test_pkey ON public.test USING lsm (id HASH)", true},
		// ...PRIMARY KEY (id ASC), as this service makes it there...
		{"CREATE UNIQUE INDEX test_pkey ON public.test USING lsm (id ASC)", false},
		{"CREATE UNIQUE INDEX test_pkey ON public.test USING lsm (id DESC)", false},
		// ...and multi-column or bucketed forms, and ysql_dump's tablet clause.
		{"CREATE UNIQUE INDEX t_pkey ON s.t USING lsm ((a, b) HASH, c ASC)", true},
		{"CREATE UNIQUE INDEX t_pkey ON s.t USING lsm (a HASH, b ASC)", true},
		{"CREATE UNIQUE INDEX t_pkey ON s.t USING lsm (a ASC, b ASC)", false},
		{"CREATE UNIQUE INDEX t_pkey ON s.t USING lsm (((yb_hash_code(id) % 3)) HASH, id ASC)", true},
		{"CREATE INDEX idx1 ON public.table1 USING lsm (id HASH) SPLIT INTO 3 TABLETS", true},
		{"CREATE INDEX idx1 ON public.table1 USING lsm (id ASC) SPLIT AT VALUES ((100))", false},
		// PostgreSQL's btree keys are ordered.
		{"CREATE UNIQUE INDEX test_pkey ON public.test USING btree (id)", false},
		{"", false},
	}
	for _, tc := range tests {
		if got := store.HashSharded(tc.indexdef); got != tc.want {
			t.Errorf("HashSharded(%q) = %v, want %v", tc.indexdef, got, tc.want)
		}
	}
}

// TestRangeIndexStep runs on PostgreSQL what the hash-sharding step can:
// as on YugabyteDB it reads the primary key's definition and leaves a
// table whose key is ordered alone; and RangeIndexSQL is a valid index the
// page query can read in id order without a sort.
func TestRangeIndexStep(t *testing.T) {
	t.Parallel()
	st, pool := mustStore(t, dbtest.NewSchema(t))
	if _, _, err := st.Migrate(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := st.RunRangeIndexStep(t.Context(), store.YugabyteDB); err != nil {
		t.Fatalf("the step on a btree primary key: %v", err)
	}
	var n int
	if err := pool.QueryRow(t.Context(), `SELECT count(*) FROM pg_indexes WHERE schemaname = current_schema() AND indexname = 'test_id_asc'`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("range index made for an ordered primary key: %d %v", n, err)
	}
	// Without an ordered primary key (as a hash-sharded one is on
	// YugabyteDB), the page query must use the range index.
	for _, q := range []string{
		`ALTER TABLE test DROP CONSTRAINT test_pkey`,
		store.RangeIndexSQL,
		`INSERT INTO test (name) SELECT 'r' || g FROM generate_series(1, 5000) AS g`,
		`ANALYZE test`,
	} {
		if _, err := pool.Exec(t.Context(), q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	rows, err := pool.Query(t.Context(), `EXPLAIN SELECT id, name FROM test WHERE id > 100 ORDER BY id LIMIT 10`)
	if err != nil {
		t.Fatal(err)
	}
	lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	plan := strings.Join(lines, "\n")
	if !strings.Contains(plan, "test_id_asc") || strings.Contains(plan, "Sort") {
		t.Fatalf("page query does not read the range index in order:\n%s", plan)
	}
}

// TestRangeIndexRebuildsInvalid: an index left invalid by a build that
// failed part way (YugabyteDB's online build can) is built again, not kept
// because it exists. A dedicated server: marking an index invalid takes a
// superuser.
func TestRangeIndexRebuildsInvalid(t *testing.T) {
	t.Parallel()
	srv := dbtest.NewServer(t)
	st, pool := mustStore(t, srv.URL())
	if _, _, err := st.Migrate(t.Context()); err != nil {
		t.Fatal(err)
	}
	valid := func() bool {
		t.Helper()
		var v bool
		if err := pool.QueryRow(t.Context(), `SELECT indisvalid FROM pg_index WHERE indexrelid = 'test_id_asc'::regclass`).Scan(&v); err != nil {
			t.Fatal(err)
		}
		return v
	}
	if err := st.EnsureRangeIndex(t.Context()); err != nil || !valid() {
		t.Fatalf("EnsureRangeIndex: %v", err)
	}
	if _, err := pool.Exec(t.Context(), `UPDATE pg_index SET indisvalid = false WHERE indexrelid = 'test_id_asc'::regclass`); err != nil {
		t.Fatal(err)
	}
	if err := st.EnsureRangeIndex(t.Context()); err != nil || !valid() {
		t.Fatalf("EnsureRangeIndex on an invalid index: %v, valid %v", err, valid())
	}
}
