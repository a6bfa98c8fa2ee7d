package store_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/ybrest/testsapi/internal/dbtest"
	"github.com/ybrest/testsapi/internal/store"
)

// answer201 is an answer that records the ids it was given.
func answer201(created []store.Test, err error) store.Response {
	if err != nil {
		return store.Response{Status: 409, Body: []byte(err.Error())}
	}
	return store.Response{Status: 201, Body: []byte(created[0].Name)}
}

// claimOf returns the claim on key, "" when there is no row.
func claimOf(t *testing.T, pool *pgxpool.Pool, key string) string {
	t.Helper()
	var claim []byte
	err := pool.QueryRow(t.Context(), `SELECT claim FROM idempotency_keys WHERE key = $1`, key).Scan(&claim)
	if err != nil {
		return ""
	}
	return string(claim)
}

// TestCreateOnceTakeover: a request still running when its key is taken
// over as stale (a replica that was only slow, not dead) must not commit:
// exactly one of the two creates the row. The takeover is forced by making
// the first claim look old while the table is locked under both.
func TestCreateOnceTakeover(t *testing.T) {
	t.Parallel()
	st, pool := mustStore(t, dbtest.NewSchema(t))
	if _, _, err := st.Migrate(t.Context()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	lock, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Rollback(context.Background())
	if _, err := lock.Exec(ctx, `LOCK TABLE test IN ACCESS EXCLUSIVE MODE`); err != nil {
		t.Fatal(err)
	}
	k := store.KeyedCreate{Key: "k", Fingerprint: []byte("f"), Names: []string{"a"}, TTL: time.Hour, StaleAfter: time.Minute}
	type result struct {
		resp store.Response
		err  error
	}
	run := func() chan result {
		done := make(chan result, 1)
		go func() {
			resp, err := st.CreateOnce(ctx, k, answer201)
			done <- result{resp, err}
		}()
		return done
	}
	wait := func(what string, cond func() bool) {
		t.Helper()
		for !cond() {
			if ctx.Err() != nil {
				t.Fatalf("no %s", what)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}

	first := run()
	wait("first claim", func() bool { return claimOf(t, pool, "k") != "" })
	firstClaim := claimOf(t, pool, "k")
	if _, err := pool.Exec(ctx, `UPDATE idempotency_keys SET created_at = now() - interval '2 minutes'`); err != nil {
		t.Fatal(err)
	}
	second := run()
	wait("takeover", func() bool { c := claimOf(t, pool, "k"); return c != "" && c != firstClaim })
	if err := lock.Rollback(ctx); err != nil {
		t.Fatal(err)
	}

	r1, r2 := <-first, <-second
	if !errors.Is(r1.err, store.ErrUnavailable) {
		t.Errorf("first (taken over): %+v, %v; want ErrUnavailable", r1.resp, r1.err)
	}
	if r2.err != nil || r2.resp.Status != 201 {
		t.Errorf("second (took over): %+v, %v; want 201", r2.resp, r2.err)
	}
	var n int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM test`).Scan(&n); err != nil || n != 1 {
		t.Fatalf("%d rows (%v), want 1", n, err)
	}
	// The kept answer is the second's.
	again, err := st.CreateOnce(ctx, k, answer201)
	if err != nil || again.Status != 201 || string(again.Body) != "a" {
		t.Fatalf("replay: %+v, %v", again, err)
	}
}

// TestMigrateRejectsForeignKeysTable: an idempotency_keys table that is not
// ours stops start-up instead of failing keyed requests later.
func TestMigrateRejectsForeignKeysTable(t *testing.T) {
	t.Parallel()
	st, pool := mustStore(t, dbtest.NewSchema(t))
	if _, err := pool.Exec(t.Context(), `CREATE TABLE idempotency_keys (key text PRIMARY KEY, value text)`); err != nil {
		t.Fatal(err)
	}
	_, _, err := st.Migrate(t.Context())
	if err == nil || errors.Is(err, store.ErrUnavailable) {
		t.Fatalf("Migrate on a foreign idempotency_keys: %v, want a permanent error", err)
	}
}

// TestCreateOnceNotReady: like every method, CreateOnce and PurgeKeys
// answer ErrUnavailable before Migrate.
func TestCreateOnceNotReady(t *testing.T) {
	t.Parallel()
	st, _ := mustStore(t, dbtest.NewSchema(t))
	k := store.KeyedCreate{Key: "k", Fingerprint: []byte("f"), Names: []string{"a"}, TTL: time.Hour, StaleAfter: time.Minute}
	if _, err := st.CreateOnce(t.Context(), k, answer201); !errors.Is(err, store.ErrUnavailable) {
		t.Fatalf("CreateOnce before Migrate: %v", err)
	}
	if _, err := st.PurgeKeys(t.Context(), time.Hour); !errors.Is(err, store.ErrUnavailable) {
		t.Fatalf("PurgeKeys before Migrate: %v", err)
	}
}

// TestPurgeKeysInBatches: more expired keys than one batch are all purged,
// by statements of at most one batch each (a statement trigger the test
// installs logs how many rows each DELETE took), and keys alive stay.
func TestPurgeKeysInBatches(t *testing.T) {
	t.Parallel()
	st, pool := mustStore(t, dbtest.NewSchema(t))
	if _, _, err := st.Migrate(t.Context()); err != nil {
		t.Fatal(err)
	}
	const expired, alive = 2*store.PurgeBatch + 7, 5
	const fill = `
INSERT INTO idempotency_keys (key, fingerprint, claim, status, created_at)
SELECT $1 || g, 'f', 'c', 201, now() - make_interval(secs => $2)
FROM generate_series(1, $3) AS g`
	if _, err := pool.Exec(t.Context(), fill, "old-", 7200, expired); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(t.Context(), fill, "new-", 0, alive); err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{
		`CREATE TABLE purge_log (n bigint, at timestamptz DEFAULT clock_timestamp())`,
		`CREATE FUNCTION log_purge() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO purge_log (n) SELECT count(*) FROM gone;
    RETURN NULL;
END
$$`,
		`CREATE TRIGGER log_purge AFTER DELETE ON idempotency_keys
REFERENCING OLD TABLE AS gone FOR EACH STATEMENT EXECUTE FUNCTION log_purge()`,
	} {
		if _, err := pool.Exec(t.Context(), q); err != nil {
			t.Fatal(err)
		}
	}
	n, err := st.PurgeKeys(t.Context(), time.Hour)
	if err != nil || n != expired {
		t.Fatalf("PurgeKeys: %d, %v; want %d", n, err, expired)
	}
	var left int
	if err := pool.QueryRow(t.Context(), `SELECT count(*) FROM idempotency_keys WHERE key LIKE 'new-%'`).Scan(&left); err != nil || left != alive {
		t.Fatalf("keys alive after the purge: %d %v, want %d", left, err, alive)
	}
	rows, err := pool.Query(t.Context(), `SELECT n FROM purge_log ORDER BY at`)
	if err != nil {
		t.Fatal(err)
	}
	batches, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if want := []int64{store.PurgeBatch, store.PurgeBatch, 7}; err != nil || fmt.Sprint(batches) != fmt.Sprint(want) {
		t.Fatalf("rows per DELETE: %v %v, want %v", batches, err, want)
	}
	if n, err := st.PurgeKeys(t.Context(), time.Hour); err != nil || n != 0 {
		t.Fatalf("second PurgeKeys: %d, %v; want 0", n, err)
	}
}
