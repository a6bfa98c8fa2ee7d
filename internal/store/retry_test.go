package store_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/ybrest/testsapi/internal/dbtest"
	"github.com/ybrest/testsapi/internal/store"
)

// TestRetryDeadlock provokes a real deadlock (40P01) with the store's own
// transaction as the victim, and shows CreateMany retries and succeeds:
//
//	other: INSERT b            (holds b)
//	store: INSERT a, b         (holds a, waits for b)
//	other: INSERT a            (waits for a: deadlock; the store, which has
//	                            waited longer, is aborted and retries)
//	other: ROLLBACK            (the retry goes through)
//
// The other transaction's INSERT a can only return once the store's first
// attempt is gone, so its return proves the deadlock happened.
func TestRetryDeadlock(t *testing.T) {
	t.Parallel()
	st, pool := mustStore(t, dbtest.NewSchema(t)+"&application_name="+t.Name())
	if _, _, err := st.Migrate(t.Context()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	other, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Rollback(context.Background())
	// The backend whose deadlock_timeout (1 s) ends first finds the
	// deadlock and is its victim: the store's, which waits first, unless
	// the shared machine keeps it from running for the moment between the
	// two waits (seen once). The other's check comes much later.
	if _, err := other.Exec(ctx, `SET LOCAL deadlock_timeout = '10s'`); err != nil {
		t.Fatal(err)
	}
	if _, err := other.Exec(ctx, `INSERT INTO test (name) VALUES ('b')`); err != nil {
		t.Fatal(err)
	}

	done := createABInBackground(ctx, st)
	waitForLockWaiters(t, pool, 1) // the store's transaction, blocked on b
	if _, err := other.Exec(ctx, `INSERT INTO test (name) VALUES ('a')`); err != nil {
		t.Fatalf("the other transaction was the deadlock victim (%v); the store should have been", err)
	}
	if err := other.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	wantAB(t, "CreateMany after a deadlock", <-done)
}

// TestRetrySerializationFailure provokes a real serialization failure
// (40001) between two SERIALIZABLE transactions, with the store's as the
// victim, and shows CreateMany retries and succeeds. The store runs
// SERIALIZABLE here (default_transaction_isolation on its connections), as
// a YugabyteDB cluster may:
//
//	other:   INSERT b                   (uncommitted)
//	store:   INSERT a, b                (waits for other's b)
//	cleaner: LOCK TABLE test (SHARE)    (queued behind both)
//	other:   COMMIT                     (the store's b meets a row its
//	                                     snapshot cannot see: 40001; its
//	                                     transaction ends, the cleaner gets
//	                                     the lock, the store's retry waits)
//	cleaner: DELETE b; COMMIT           (the retry goes through)
//
// The cleaner's LOCK can only return once the store's first attempt is
// gone, so its return proves the first attempt failed.
func TestRetrySerializationFailure(t *testing.T) {
	t.Parallel()
	st, pool := mustStore(t, dbtest.NewSchema(t)+"&default_transaction_isolation=serializable&application_name="+t.Name())
	if _, _, err := st.Migrate(t.Context()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	begin := func() pgx.Tx {
		tx, err := pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.Serializable})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = tx.Rollback(context.Background()) })
		return tx
	}
	other := begin()
	if _, err := other.Exec(ctx, `INSERT INTO test (name) VALUES ('b')`); err != nil {
		t.Fatal(err)
	}

	done := createABInBackground(ctx, st)
	waitForLockWaiters(t, pool, 1)
	cleaner := begin()
	locked := make(chan error, 1)
	go func() {
		_, err := cleaner.Exec(ctx, `LOCK TABLE test IN SHARE MODE`)
		locked <- err
	}()
	waitForLockWaiters(t, pool, 2)
	if err := other.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-locked; err != nil {
		t.Fatal(err)
	}
	if _, err := cleaner.Exec(ctx, `DELETE FROM test WHERE name = 'b'`); err != nil {
		t.Fatal(err)
	}
	if err := cleaner.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	wantAB(t, "CreateMany after a serialization failure", <-done)
}

// waitForLockWaiters waits until n lock requests from pool's connections
// are waiting. The pool's application_name is the test's name, which keeps
// tests running in parallel on the same server out of the count.
func waitForLockWaiters(t *testing.T, pool *pgxpool.Pool, n int) {
	t.Helper()
	const q = `
SELECT count(*)
FROM pg_locks AS l
JOIN pg_stat_activity AS a USING (pid)
WHERE NOT l.granted
  AND a.application_name = $1`
	for {
		var waiting int
		if err := pool.QueryRow(t.Context(), q, t.Name()).Scan(&waiting); err != nil {
			t.Fatal(err)
		}
		if waiting >= n {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

type createResult struct {
	rows []store.Test
	err  error
}

// createABInBackground runs CreateMany(a, b) on its own goroutine.
func createABInBackground(ctx context.Context, st *store.Store) <-chan createResult {
	done := make(chan createResult, 1)
	go func() {
		rows, err := st.CreateMany(ctx, []string{"a", "b"})
		done <- createResult{rows, err}
	}()
	return done
}

// wantAB fails the test unless res created a and b, in that order.
func wantAB(t *testing.T, what string, res createResult) {
	t.Helper()
	if res.err != nil || len(res.rows) != 2 || res.rows[0].Name != "a" || res.rows[1].Name != "b" {
		t.Fatalf("%s: %+v, %v; want a and b created on retry", what, res.rows, res.err)
	}
}
