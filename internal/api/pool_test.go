package api_test

import (
	"fmt"
	"log/slog"
	"net/http"
	"runtime"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/ybrest/testsapi/internal/api"
	"github.com/ybrest/testsapi/internal/dbtest"
	"github.com/ybrest/testsapi/internal/store"
)

// TestPoolExhausted sends many more creates than the pool has connections
// while the table is locked: the two requests that get a connection wait on
// the lock, and every other one must be refused with a 503 once the acquire
// timeout passes, while the lock is still held, instead of queueing until
// the request timeout. Afterwards the goroutines are back to what they were:
// waiting requests do not pile up.
//
// Not parallel: it counts the process's goroutines.
func TestPoolExhausted(t *testing.T) {
	const (
		conns          = 2
		requests       = 40
		acquireTimeout = 500 * time.Millisecond
		// Far beyond the acquire timeout and far below the request
		// timeout: a refusal later than this was not the acquire timeout.
		refusedWithin = 20 * time.Second
	)
	lim := testLimits
	lim.RequestTimeout = 2 * time.Minute // the requests holding connections wait for the lock, not the clock
	url := dbtest.NewSchema(t)
	pool := mustPool(t, url, func(cfg *pgxpool.Config) { cfg.MaxConns = conns }, store.AcquireTimeout(acquireTimeout))
	st := store.New(pool)
	if _, _, err := st.Migrate(t.Context()); err != nil {
		t.Fatal(err)
	}
	h := api.NewHandler(slog.New(slog.DiscardHandler), st, lim)

	locker := mustPool(t, url, nil)
	tx := lockTable(t, locker)

	baseline := runtime.NumGoroutine()
	type result struct {
		res  response
		took time.Duration
	}
	results := make(chan result, requests)
	for i := range requests {
		go func() {
			start := time.Now()
			// Arrays: each takes a connection of its own, where single
			// creates would share one batch (store's TestBatchQueueTimeout
			// covers their queue).
			res := do(t, h, "POST", "/tests", fmt.Sprintf(`[{"name": "req-%d"}]`, i))
			results <- result{res, time.Since(start)}
		}()
	}

	deadline := time.After(refusedWithin)
	var slowest time.Duration
	for i := range requests - conns {
		select {
		case r := <-results:
			problemOf(t, r.res, http.StatusServiceUnavailable)
			if r.res.header.Get("Retry-After") == "" {
				t.Fatal("503 without Retry-After")
			}
			slowest = max(slowest, r.took)
		case <-deadline:
			t.Fatalf("%d of %d requests refused within %s while the pool was exhausted; the others still wait",
				i, requests-conns, refusedWithin)
		}
	}
	if st := pool.Stat(); st.AcquiredConns() != conns || st.CanceledAcquireCount() < requests-conns {
		t.Fatalf("pool: %d connections acquired, %d acquisitions given up; want %d and at least %d",
			st.AcquiredConns(), st.CanceledAcquireCount(), conns, requests-conns)
	}
	t.Logf("%d requests refused, the slowest after %s (acquire timeout %s)", requests-conns, slowest, acquireTimeout)

	// The two that held connections go through once the lock is gone.
	if err := tx.Rollback(t.Context()); err != nil {
		t.Fatal(err)
	}
	for range conns {
		if r := <-results; r.res.status != http.StatusCreated {
			t.Fatalf("a request holding a connection: %d %s, want 201 once the lock is released", r.res.status, r.res.body)
		}
	}
	if names := tableNames(t, pool); len(names) != conns {
		t.Fatalf("table has %d rows, want the %d that got a connection", len(names), conns)
	}

	// A little slack for the pool's own background goroutines.
	dbtest.WaitFor(t, "goroutines back to the baseline", 10*time.Second, func() bool {
		return runtime.NumGoroutine() <= baseline+2
	})
}
