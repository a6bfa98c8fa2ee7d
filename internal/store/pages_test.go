package store_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/ybrest/testsapi/internal/dbtest"
	"github.com/ybrest/testsapi/internal/store"
)

// pageEnv is a migrated store whose page queries can be held after they
// ran (their rows read, their connection back in the pool), and counted.
type pageEnv struct {
	st      *store.Store
	pool    *pgxpool.Pool
	ran     chan struct{} // a held query has its rows
	release chan struct{} // lets one held query return

	mu      sync.Mutex
	readers []int // per query, the Lists sharing it
}

func mustPageEnv(t *testing.T) *pageEnv {
	t.Helper()
	url := dbtest.NewSchema(t)
	pool := mustPool(t, url, nil)
	e := &pageEnv{pool: pool, ran: make(chan struct{}, 10), release: make(chan struct{}, 10)}
	e.st = store.New(pool, store.OnPageRead(func(n int) {
		e.mu.Lock()
		defer e.mu.Unlock()
		e.readers = append(e.readers, n)
	}))
	t.Cleanup(e.st.Close)
	if _, _, err := e.st.Migrate(t.Context()); err != nil {
		t.Fatal(err)
	}
	e.st.WrapPageRead(func(next store.PageReadFunc) store.PageReadFunc {
		return func(ctx context.Context, after int64, limit int) ([]store.Test, time.Duration, error) {
			rows, took, err := next(ctx, after, limit)
			e.ran <- struct{}{}
			select {
			case <-e.release:
				if ctx.Err() != nil {
					return nil, 0, ctx.Err() // cancelled while held
				}
				return rows, took, err
			case <-ctx.Done():
				// Cancelled, as a query still at the server would be (and
				// nobody would release it).
				return nil, 0, ctx.Err()
			}
		}
	})
	if _, err := e.st.CreateMany(t.Context(), []string{"a", "b", "c"}); err != nil {
		t.Fatal(err)
	}
	return e
}

type listResult struct {
	rows []store.Test
	err  error
}

// list starts a List of the first page of 100.
func (e *pageEnv) list(ctx context.Context) <-chan listResult {
	ch := make(chan listResult, 1)
	go func() {
		rows, err := e.st.List(ctx, 0, 100)
		ch <- listResult{rows, err}
	}()
	return ch
}

// joined starts n Lists and waits until all of them wait for the next query.
func (e *pageEnv) joined(t *testing.T, ctx context.Context, n int) []<-chan listResult {
	t.Helper()
	before := e.st.PageWaiting(0, 100)
	chs := make([]<-chan listResult, n)
	for i := range chs {
		chs[i] = e.list(ctx)
	}
	dbtest.WaitFor(t, fmt.Sprintf("%d Lists waiting for the next query", n), within, func() bool {
		return e.st.PageWaiting(0, 100) == before+n
	})
	return chs
}

// releaseBoth lets the held query return, then the one the Lists queued
// behind it share.
func (e *pageEnv) releaseBoth() {
	e.release <- struct{}{}
	<-e.ran
	e.release <- struct{}{}
}

func (e *pageEnv) queries() []int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.readers)
}

func names(rows []store.Test) []string {
	var out []string
	for _, r := range rows {
		out = append(out, r.Name)
	}
	return out
}

// TestListCoalesces: Lists of a page that arrive while its query runs
// share the next query: 1 query for the first, 1 for the ten others.
func TestListCoalesces(t *testing.T) {
	t.Parallel()
	e := mustPageEnv(t)
	first := e.list(t.Context())
	<-e.ran
	others := e.joined(t, t.Context(), 10)
	e.releaseBoth()
	for _, ch := range append(others, first) {
		r := <-ch
		if r.err != nil || !slices.Equal(names(r.rows), []string{"a", "b", "c"}) {
			t.Fatalf("List: %v, %v; want a, b, c", names(r.rows), r.err)
		}
	}
	if got := e.queries(); !slices.Equal(got, []int{1, 10}) {
		t.Errorf("Lists per query %v, want [1 10]", got)
	}
}

// TestListSeesAcknowledgedWrites: a List never shares a query that
// started before it was called, so a write acknowledged before the List
// began is in its rows, even while an older query for the page is running.
func TestListSeesAcknowledgedWrites(t *testing.T) {
	t.Parallel()
	e := mustPageEnv(t)
	older := e.list(t.Context())
	<-e.ran // its rows are read: a, b, c
	mustCreate(t, e.st, "d")
	newer := e.joined(t, t.Context(), 1)[0]
	e.releaseBoth()
	if r := <-older; !slices.Equal(names(r.rows), []string{"a", "b", "c"}) {
		t.Fatalf("the older List: %v, %v", names(r.rows), r.err)
	}
	if r := <-newer; r.err != nil || !slices.Equal(names(r.rows), []string{"a", "b", "c", "d"}) {
		t.Fatalf("a List begun after d was acknowledged: %v, %v; want d in it", names(r.rows), r.err)
	}
}

// TestListErrorReachesAll: a database error of a shared query reaches
// every List that shared it.
func TestListErrorReachesAll(t *testing.T) {
	t.Parallel()
	e := mustPageEnv(t)
	first := e.list(t.Context())
	<-e.ran
	others := e.joined(t, t.Context(), 5)
	// The table is gone for the shared query: a real error (42P01).
	if _, err := e.pool.Exec(t.Context(), `ALTER TABLE test RENAME TO test_gone`); err != nil {
		t.Fatal(err)
	}
	e.releaseBoth()
	if r := <-first; r.err != nil {
		t.Fatalf("the first List: %v", r.err)
	}
	for _, ch := range others {
		var pgErr *pgconn.PgError
		if r := <-ch; !errors.As(r.err, &pgErr) || pgErr.Code != "42P01" {
			t.Errorf("a List of the failed query: %v, %v; want its error", names(r.rows), r.err)
		}
	}
}

// TestListLeave: a List that gives up leaves its query to the others; the
// query is cancelled on the server only once every List of it has left.
func TestListLeave(t *testing.T) {
	t.Parallel()
	e := mustPageEnv(t)
	first := e.list(t.Context())
	<-e.ran
	ctx, cancel := context.WithCancel(t.Context())
	gone := e.joined(t, ctx, 1)[0]
	stay := e.joined(t, t.Context(), 1)[0]
	cancel()
	if r := <-gone; !errors.Is(r.err, context.Canceled) {
		t.Fatalf("a List that gave up: %v; want context.Canceled", r.err)
	}
	e.releaseBoth()
	for _, ch := range []<-chan listResult{first, stay} {
		if r := <-ch; r.err != nil || len(r.rows) != 3 {
			t.Fatalf("a List beside one that gave up: %v, %v", names(r.rows), r.err)
		}
	}

	// Alone on a query that waits on a lock: leaving cancels it.
	tx, err := e.pool.Begin(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(context.Background())
	if _, err := tx.Exec(t.Context(), `LOCK TABLE test IN ACCESS EXCLUSIVE MODE`); err != nil {
		t.Fatal(err)
	}
	ctx, cancel = context.WithCancel(t.Context())
	alone := e.list(ctx)
	dbtest.WaitFor(t, "the query waiting on the lock", within, func() bool { return e.lockWaits(t) == 1 })
	cancel()
	if r := <-alone; !errors.Is(r.err, context.Canceled) {
		t.Fatalf("a List that gave up: %v; want context.Canceled", r.err)
	}
	dbtest.WaitFor(t, "the query cancelled on the server", within, func() bool { return e.lockWaits(t) == 0 })
}

// lockWaits counts the lock requests on this test's table still waiting.
func (e *pageEnv) lockWaits(t *testing.T) int {
	const q = `
SELECT count(*)
FROM pg_locks
WHERE relation = 'test'::regclass
  AND NOT granted`
	var n int
	if err := e.pool.QueryRow(t.Context(), q).Scan(&n); err != nil {
		return -1
	}
	return n
}

// TestListLeaveShared: of two Lists sharing a running query, the one that
// gives up leaves; the query goes on for the other.
func TestListLeaveShared(t *testing.T) {
	t.Parallel()
	e := mustPageEnv(t)
	first := e.list(t.Context())
	<-e.ran
	ctx, cancel := context.WithCancel(t.Context())
	gone := e.joined(t, ctx, 1)[0]
	stay := e.joined(t, t.Context(), 1)[0]
	e.release <- struct{}{} // the first returns; gone and stay share the running query
	<-e.ran
	cancel()
	if r := <-gone; !errors.Is(r.err, context.Canceled) {
		t.Fatalf("a List that gave up: %v; want context.Canceled", r.err)
	}
	e.release <- struct{}{}
	for _, ch := range []<-chan listResult{first, stay} {
		if r := <-ch; r.err != nil || len(r.rows) != 3 {
			t.Fatalf("a List beside one that left the running query: %v, %v", names(r.rows), r.err)
		}
	}
}

// TestListAbandonedQueued: a query whose Lists all left before it started
// is never run, and nothing is left waiting.
func TestListAbandonedQueued(t *testing.T) {
	t.Parallel()
	e := mustPageEnv(t)
	first := e.list(t.Context())
	<-e.ran
	ctx, cancel := context.WithCancel(t.Context())
	gone := e.joined(t, ctx, 1)[0]
	cancel()
	if r := <-gone; !errors.Is(r.err, context.Canceled) {
		t.Fatalf("a List that gave up: %v; want context.Canceled", r.err)
	}
	e.release <- struct{}{}
	if r := <-first; r.err != nil {
		t.Fatal(r.err)
	}
	dbtest.WaitFor(t, "the page's flight to end", within, func() bool { return e.st.PageFlights() == 0 })
	if got := e.queries(); !slices.Equal(got, []int{1}) {
		t.Errorf("Lists per query %v, want [1]: the abandoned query ran", got)
	}
}

// TestListFlightsAdaptToLatency: with the database 10 ms away each way,
// readers of one page run more than one query for it at once (each takes
// at least the 20 ms round trip, so pages.go allows the most), never more
// than the store's limit, and every read still gets the page.
func TestListFlightsAdaptToLatency(t *testing.T) {
	url := dbtest.NewSchema(t)
	p := dbtest.NewProxy(t, url)
	pool := mustPool(t, p.URL(url), nil)
	st := store.New(pool)
	t.Cleanup(st.Close)
	if _, _, err := st.Migrate(t.Context()); err != nil {
		t.Fatal(err)
	}
	if _, err := st.CreateMany(t.Context(), []string{"a", "b", "c"}); err != nil {
		t.Fatal(err)
	}
	var running, most atomic.Int64
	st.WrapPageRead(func(next store.PageReadFunc) store.PageReadFunc {
		return func(ctx context.Context, after int64, limit int) ([]store.Test, time.Duration, error) {
			n := running.Add(1)
			defer running.Add(-1)
			for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
			}
			return next(ctx, after, limit)
		}
	})
	if err := p.Latency(10*time.Millisecond, 0); err != nil {
		t.Fatal(err)
	}
	const readers = 16
	deadline := time.Now().Add(within)
	var wg sync.WaitGroup
	for range readers {
		wg.Go(func() {
			for most.Load() < 2 && time.Now().Before(deadline) {
				rows, err := st.List(t.Context(), 0, 100)
				if err != nil || !slices.Equal(names(rows), []string{"a", "b", "c"}) {
					t.Errorf("List: %v, %v; want a, b, c", names(rows), err)
					return
				}
			}
		})
	}
	wg.Wait()
	if got := most.Load(); got < 2 || got > int64(st.MaxCreateFlights()) {
		t.Errorf("queries of the page at once: at most %d; want 2 to %d", got, st.MaxCreateFlights())
	}
}
