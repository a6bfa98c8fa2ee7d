package store_test

import (
	"context"
	"testing"
	"time"

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
	st, pool := mustStore(t, dbtest.NewSchema(t))
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
	if _, err := other.Exec(ctx, `INSERT INTO test (name) VALUES ('b')`); err != nil {
		t.Fatal(err)
	}

	type result struct {
		rows []store.Test
		err  error
	}
	done := make(chan result, 1)
	go func() {
		rows, err := st.CreateMany(ctx, []string{"a", "b"})
		done <- result{rows, err}
	}()
	// Wait until the store's transaction is blocked on b.
	for {
		var waiting int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM pg_locks WHERE NOT granted`).Scan(&waiting); err != nil {
			t.Fatal(err)
		}
		if waiting > 0 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := other.Exec(ctx, `INSERT INTO test (name) VALUES ('a')`); err != nil {
		t.Fatalf("the other transaction was the deadlock victim (%v); the store should have been", err)
	}
	if err := other.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	res := <-done
	if res.err != nil || len(res.rows) != 2 || res.rows[0].Name != "a" || res.rows[1].Name != "b" {
		t.Fatalf("CreateMany after a deadlock: %+v, %v; want a and b created on retry", res.rows, res.err)
	}
}
