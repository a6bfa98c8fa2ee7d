package store_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/ybrest/testsapi/internal/dbtest"
	"github.com/ybrest/testsapi/internal/store"
)

// groupEnv is a store whose database is behind a proxy, so that page
// statements take long enough for page queries to queue behind them, with
// seedRows rows (ids 1 to seedRows, named "n-<id>") and the number of
// pages of every page statement it sent.
type groupEnv struct {
	st    *store.Store
	proxy *dbtest.Proxy
	mu    sync.Mutex
	sizes []int
}

const seedRows = 3000

func mustGroupEnv(t *testing.T) *groupEnv {
	t.Helper()
	url := dbtest.NewSchema(t)
	e := &groupEnv{proxy: dbtest.NewProxy(t, url)}
	pool := mustPool(t, e.proxy.URL(url), func(cfg *pgxpool.Config) { cfg.MaxConns = 8 })
	e.st = store.New(pool, store.OnPageGroup(func(pages int) {
		e.mu.Lock()
		defer e.mu.Unlock()
		e.sizes = append(e.sizes, pages)
	}))
	t.Cleanup(e.st.Close)
	if _, _, err := e.st.Migrate(t.Context()); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(t.Context(), `INSERT INTO test (name) SELECT 'n-' || g FROM generate_series(1, $1) g`, seedRows); err != nil {
		t.Fatal(err)
	}
	return e
}

// groups returns the page counts of the statements sent so far.
func (e *groupEnv) groups() []int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.sizes)
}

// wantPage is the page List(after, limit) must return from the seed rows.
func wantPage(after int64, limit int) []store.Test {
	var out []store.Test
	for id := max(after, 0) + 1; id <= seedRows && len(out) < limit; id++ {
		out = append(out, store.Test{ID: int32(id), Name: fmt.Sprintf("n-%d", id)})
	}
	return out
}

// TestListGroupsPages: Lists of different pages that start while every
// page flight is busy share statements, and each gets exactly its own page,
// in id order: empty pages, pages past the last row, a negative after,
// limits from 1 to 1,000.
func TestListGroupsPages(t *testing.T) {
	e := mustGroupEnv(t)
	if err := e.proxy.Latency(50*time.Millisecond, 0); err != nil {
		t.Fatal(err)
	}
	type key struct {
		after int64
		limit int
	}
	var keys []key
	for i := range 60 {
		keys = append(keys, key{int64(i*53 - 5), []int{1, 7, 100, 1000}[i%4]})
	}
	keys = append(keys, key{seedRows, 100}, key{seedRows - 1, 100}, key{math.MaxInt32, 10}, key{math.MaxInt32 - 1, 10})
	var wg sync.WaitGroup
	for _, k := range keys {
		wg.Go(func() {
			got, err := e.st.List(t.Context(), k.after, k.limit)
			if err != nil {
				t.Errorf("List(%d, %d): %v", k.after, k.limit, err)
				return
			}
			if want := wantPage(k.after, k.limit); !slices.Equal(got, want) {
				t.Errorf("List(%d, %d) = %d rows %v...; want %d rows %v...", k.after, k.limit, len(got), head(got), len(want), head(want))
			}
		})
	}
	wg.Wait()
	groups := e.groups()
	pages := 0
	for _, n := range groups {
		pages += n
		if n > store.MaxGroupPages {
			t.Errorf("a statement of %d pages; at most %d", n, store.MaxGroupPages)
		}
	}
	if pages != len(keys) {
		t.Errorf("statements carried %d pages; want %d, one per List", pages, len(keys))
	}
	if len(groups) > len(keys)/2 {
		t.Errorf("%d statements for %d pages (%v); want them grouped", len(groups), len(keys), groups)
	}
	t.Logf("%d pages in %d statements: %v", len(keys), len(groups), groups)
}

func head(rows []store.Test) []store.Test { return rows[:min(len(rows), 3)] }

// TestListGroupLeave: a List that gives up while queued for a statement
// answers at once and is left out of it; the others are answered.
func TestListGroupLeave(t *testing.T) {
	e := mustGroupEnv(t)
	if err := e.proxy.Latency(100*time.Millisecond, 0); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	// Take every flight the store starts with (two: the floor is not known
	// yet), then queue.
	for i := range 2 {
		wg.Go(func() {
			if _, err := e.st.List(t.Context(), int64(i*10), 10); err != nil {
				t.Errorf("List: %v", err)
			}
		})
	}
	time.Sleep(20 * time.Millisecond) // both sent: nothing answers for 200 ms
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Millisecond)
	defer cancel()
	for i := range 5 {
		wg.Go(func() {
			start := time.Now()
			_, err := e.st.List(ctx, int64(100+i*10), 10)
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("List with a context that ended while queued: %v; want its deadline", err)
			}
			if d := time.Since(start); d > 150*time.Millisecond {
				t.Errorf("List with a context that ended while queued answered after %v", d)
			}
		})
	}
	wg.Wait()
	// The queued five left before a flight came back: no statement took
	// them.
	if got := e.groups(); !slices.Equal(got, []int{1, 1}) {
		t.Errorf("statements sent: %v; want [1 1], the queued pages left out", got)
	}
	// And the store goes on answering.
	if got, err := e.st.List(t.Context(), 0, 5); err != nil || !slices.Equal(got, wantPage(0, 5)) {
		t.Errorf("List after: %v, %v", got, err)
	}
}

// TestListNoGroupsOnYugabyteDB: on YugabyteDB every page is a statement of
// its own (see pagegroup.go), however many queue.
func TestListNoGroupsOnYugabyteDB(t *testing.T) {
	e := mustGroupEnv(t)
	e.st.ForceDialect(store.YugabyteDB)
	if err := e.proxy.Latency(20*time.Millisecond, 0); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := range 30 {
		wg.Go(func() {
			if got, err := e.st.List(t.Context(), int64(i*7), 10); err != nil || !slices.Equal(got, wantPage(int64(i*7), 10)) {
				t.Errorf("List(%d, 10) = %v, %v", i*7, head(got), err)
			}
		})
	}
	wg.Wait()
	if got := e.groups(); len(got) != 0 {
		t.Errorf("page statements grouped on YugabyteDB: %v", got)
	}
}

// TestListGroupQueueTimeout: behind a locked table, page queries queued
// for a statement answer ErrUnavailable after the queue timeout (the
// server's DB_ACQUIRE_TIMEOUT), as a query waiting for a pool connection
// would, while the lock is still held, and are never sent.
func TestListGroupQueueTimeout(t *testing.T) {
	url := dbtest.NewSchema(t)
	var mu sync.Mutex
	var sizes []int
	st := store.New(mustPool(t, url, func(cfg *pgxpool.Config) { cfg.MaxConns = 8 }),
		store.QueueTimeout(200*time.Millisecond),
		store.OnPageGroup(func(pages int) {
			mu.Lock()
			defer mu.Unlock()
			sizes = append(sizes, pages)
		}))
	t.Cleanup(st.Close)
	if _, _, err := st.Migrate(t.Context()); err != nil {
		t.Fatal(err)
	}
	_, release := lockTable(t, url)
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	// The two flights the store starts with wait on the lock.
	var wg sync.WaitGroup
	for i := range 2 {
		wg.Go(func() { _, _ = st.List(ctx, int64(i*10), 10) })
	}
	time.Sleep(50 * time.Millisecond)
	for i := range 5 {
		wg.Go(func() {
			start := time.Now()
			_, err := st.List(ctx, int64(100+i*10), 10)
			if !errors.Is(err, store.ErrUnavailable) {
				t.Errorf("List queued behind a locked table: %v; want ErrUnavailable", err)
			}
			if d := time.Since(start); d > time.Second {
				t.Errorf("List queued behind a locked table answered after %v; want the 200 ms queue timeout", d)
			}
		})
	}
	time.Sleep(time.Second)
	mu.Lock()
	sent := slices.Clone(sizes)
	mu.Unlock()
	if !slices.Equal(sent, []int{1, 1}) {
		t.Errorf("statements sent: %v; want [1 1], the queued pages never sent", sent)
	}
	release()
	wg.Wait()
}

// TestListGroupWaitNotFloor: a page query's wait in the queue for a grouped
// statement is load, not round trip, and does not count in the floor that
// sets how many queries of one page may run at once. Behind statements
// held by a locked table, a page queues for a second; its own statement
// then takes a millisecond or so, and the floor stays at that: one query
// per page at a time, as on any database next door.
func TestListGroupWaitNotFloor(t *testing.T) {
	url := dbtest.NewSchema(t)
	st := store.New(mustPool(t, url, func(cfg *pgxpool.Config) { cfg.MaxConns = 8 }))
	t.Cleanup(st.Close)
	if _, _, err := st.Migrate(t.Context()); err != nil {
		t.Fatal(err)
	}
	lock, release := lockTable(t, url)
	ctx, cancel := context.WithTimeout(t.Context(), within)
	defer cancel()
	var wg sync.WaitGroup
	list := func(after int64) {
		wg.Go(func() {
			if _, err := st.List(ctx, after, 10); err != nil {
				t.Errorf("List(%d): %v", after, err)
			}
		})
	}
	// The two flights the store starts with wait on the lock; the third
	// page waits in the queue.
	list(0)
	list(10)
	dbtest.WaitFor(t, "two page statements waiting on the lock", within, func() bool {
		n, err := dbtest.LockWaits(t.Context(), lock, "test")
		return err == nil && n == 2 && st.PageFlights() == 2
	})
	list(20)
	dbtest.WaitFor(t, "a page query queued", within, func() bool { return st.PagesQueued() == 1 })
	const hold = time.Second
	time.Sleep(hold)
	release()
	wg.Wait()
	// Every statement of this store so far: two held for a second, one
	// quick. The floor is the quick one, unless the queued page's wait
	// counted: then it is about a second, and that is many flights.
	if n := st.PageKeyFlights(); n != 1 {
		t.Errorf("queries of one page allowed at once after a page queued for %s: %d, want 1", hold, n)
	}
}

// lockTable locks table test of url's schema in a transaction of its own,
// and returns the pool it runs on and the release of the lock (also done
// at cleanup).
func lockTable(t *testing.T, url string) (*pgxpool.Pool, func()) {
	t.Helper()
	pool := mustPool(t, url, nil)
	tx, err := pool.Begin(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	release := func() { _ = tx.Rollback(context.WithoutCancel(t.Context())) }
	t.Cleanup(release)
	if _, err := tx.Exec(t.Context(), `LOCK TABLE test IN ACCESS EXCLUSIVE MODE`); err != nil {
		t.Fatal(err)
	}
	return pool, release
}
