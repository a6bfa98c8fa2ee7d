package store_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/ybrest/testsapi/internal/dbtest"
	"github.com/ybrest/testsapi/internal/store"
)

// The group-commit tests make batches they can predict: a lock held in
// another transaction keeps the running batch(es) waiting at the server,
// the creates under test queue meanwhile, and once the lock goes they are
// sent together as the next batch.
//
// Those tests do not run in parallel: their statements wait on locks, and
// TestRetryDeadlock, which does, counts every waiting lock on the server.

// within bounds every wait of these tests; it is generous because the
// machine is shared, and no test relies on it except to fail, not hang.
const within = 30 * time.Second

// batchEnv is a migrated store on a fresh schema that records the size of
// every batch it sends.
type batchEnv struct {
	st   *store.Store
	pool *pgxpool.Pool
	url  string

	mu         sync.Mutex
	sizes      []int
	maxFlights int // the most batches in flight at once so far
	blockers   int // blocker names used so far
}

func mustBatchEnv(t *testing.T, url string, opts ...store.Option) *batchEnv {
	t.Helper()
	return mustBatchEnvPool(t, url, nil, opts...)
}

// mustBatchEnvPool is mustBatchEnv with poolOpts for the pool.
func mustBatchEnvPool(t *testing.T, url string, poolOpts []store.PoolOption, opts ...store.Option) *batchEnv {
	t.Helper()
	// Room for the lock holders, the flights and the test's own queries.
	pool := mustPool(t, url, func(cfg *pgxpool.Config) { cfg.MaxConns = 8 }, poolOpts...)
	e := &batchEnv{pool: pool, url: url}
	e.st = store.New(pool, append(opts, store.OnBatch(func(size, flights int) {
		e.mu.Lock()
		defer e.mu.Unlock()
		e.sizes = append(e.sizes, size)
		e.maxFlights = max(e.maxFlights, flights)
	}))...)
	t.Cleanup(e.st.Close) // before pool.Close: cleanups run last-in first-out
	if _, _, err := e.st.Migrate(t.Context()); err != nil {
		t.Fatal(err)
	}
	// The tests count batches and flights behind held locks: a batch that
	// waited for a lock would otherwise let more flights run. The test of
	// the flight control lets it go again.
	e.st.AllowFlights(store.StartFlights)
	return e
}

// batches returns the sizes of the batches sent so far, in order.
func (e *batchEnv) batches() []int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.sizes)
}

type result struct {
	t   store.Test
	err error
}

// create runs Create in a goroutine; its result arrives on the channel.
func (e *batchEnv) create(ctx context.Context, name string) <-chan result {
	ch := make(chan result, 1)
	go func() {
		t, err := e.st.Create(ctx, name)
		ch <- result{t, err}
	}()
	return ch
}

// recv waits for a create's result.
func recv(t *testing.T, ch <-chan result) result {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(within):
		t.Fatalf("no answer from Create within %s", within)
		return result{}
	}
}

// begin starts a transaction on a connection of its own, rolled back at
// the latest in the test's cleanup.
func (e *batchEnv) begin(t *testing.T, sql string) func() {
	t.Helper()
	tx, err := e.pool.Begin(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(t.Context(), sql); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	rollback := func() { once.Do(func() { _ = tx.Rollback(context.Background()) }) }
	t.Cleanup(rollback) // runs before the store and the pool close
	return rollback
}

// occupyFlights sends store.StartFlights creates named prefix-0, prefix-1,
// ... one at a time, so that each is a batch of its own and runs on a
// flight of its own; the caller has made sure they wait at the server.
// Creates started afterwards queue until a flight is free again.
func (e *batchEnv) occupyFlights(t *testing.T, ctx context.Context, prefix string) []<-chan result {
	t.Helper()
	var chs []<-chan result
	for i := range store.StartFlights {
		sent := len(e.batches())
		chs = append(chs, e.create(ctx, fmt.Sprintf("%s-%d", prefix, i)))
		dbtest.WaitFor(t, "batch sent", within, func() bool { return len(e.batches()) == sent+1 })
	}
	return chs
}

// queue starts a create for each name and waits until all of them are queued.
func (e *batchEnv) queue(t *testing.T, ctx context.Context, names ...string) []<-chan result {
	t.Helper()
	before := e.st.Queued()
	chs := make([]<-chan result, len(names))
	for i, n := range names {
		chs[i] = e.create(ctx, n)
	}
	dbtest.WaitFor(t, fmt.Sprintf("%d creates queued", len(names)), within, func() bool { return e.st.Queued() == before+len(names) })
	return chs
}

// behindLock locks table test, occupies the flights with creates that wait
// on the lock, queues names, and releases the lock: the queued creates then
// go as one batch. It returns their results in the order of names.
func (e *batchEnv) behindLock(t *testing.T, names ...string) []result {
	t.Helper()
	release := e.begin(t, `LOCK TABLE test IN ACCESS EXCLUSIVE MODE`)
	e.mu.Lock()
	e.blockers++
	prefix := fmt.Sprintf("blocker%d", e.blockers)
	e.mu.Unlock()
	blockers := e.occupyFlights(t, t.Context(), prefix)
	chs := e.queue(t, t.Context(), names...)
	release()
	for _, ch := range blockers {
		if r := recv(t, ch); r.err != nil {
			t.Fatalf("blocker: %v", r.err)
		}
	}
	out := make([]result, len(names))
	for i, ch := range chs {
		out[i] = recv(t, ch)
	}
	return out
}

// waitBatchAtServer waits until the queue is empty, the batch after the
// blockers' has been sent, and a statement waits at the server for a row
// lock of another transaction.
func (e *batchEnv) waitBatchAtServer(t *testing.T, what string) {
	t.Helper()
	dbtest.WaitFor(t, what, within, func() bool {
		var n int
		err := e.pool.QueryRow(t.Context(), `
SELECT count(*)
FROM pg_locks
WHERE locktype = 'transactionid' AND NOT granted
  AND pid IN (SELECT pid FROM pg_locks WHERE relation = 'test'::regclass)`).Scan(&n)
		return err == nil && n > 0 && e.st.Queued() == 0 && len(e.batches()) == store.StartFlights+1
	})
}

// waitingForTable returns how many statements wait for a lock on this
// schema's table test, -1 if it cannot tell.
func (e *batchEnv) waitingForTable(t *testing.T) int {
	n, err := dbtest.LockWaits(t.Context(), e.pool, "test")
	if err != nil {
		return -1
	}
	return n
}

// stored returns the names in table test with their ids.
func (e *batchEnv) stored(t *testing.T) map[string]int32 {
	t.Helper()
	return storedRows(t, e.pool)
}

// wantBatches checks the batch sizes after the blockers' batches.
func (e *batchEnv) wantBatches(t *testing.T, want ...int) {
	t.Helper()
	got := e.batches()
	if len(got) < store.StartFlights || !slices.Equal(got[store.StartFlights:], want) {
		t.Errorf("batch sizes %v, want %d blockers of 1 then %v", got, store.StartFlights, want)
	}
}

// TestBatchCoalesces: creates that arrive while a batch runs go together in
// the next one, and each gets its own row.
func TestBatchCoalesces(t *testing.T) {
	e := mustBatchEnv(t, dbtest.NewSchema(t))
	var names []string
	for i := range 20 {
		names = append(names, fmt.Sprintf("n%02d", i))
	}
	res := e.behindLock(t, names...)
	e.wantBatches(t, len(names))
	rows := e.stored(t)
	ids := map[int32]bool{}
	for i, r := range res {
		if r.err != nil || r.t.Name != names[i] || rows[names[i]] != r.t.ID || ids[r.t.ID] {
			t.Errorf("Create(%q) = %+v, %v; the table has id %d", names[i], r.t, r.err, rows[names[i]])
		}
		ids[r.t.ID] = true
	}
}

// TestBatchBounded: more creates than a batch may hold go in several.
func TestBatchBounded(t *testing.T) {
	e := mustBatchEnv(t, dbtest.NewSchema(t))
	var names []string
	for i := range store.MaxBatchSize + 10 {
		names = append(names, fmt.Sprintf("n%04d", i))
	}
	for i, r := range e.behindLock(t, names...) {
		if r.err != nil || r.t.Name != names[i] {
			t.Fatalf("Create(%q) = %+v, %v", names[i], r.t, r.err)
		}
	}
	e.wantBatches(t, store.MaxBatchSize, 10)
}

// TestBatchDuplicateNames: two creates of one name in one batch give one
// row and one ErrConflict; their batch-mates are not affected.
func TestBatchDuplicateNames(t *testing.T) {
	e := mustBatchEnv(t, dbtest.NewSchema(t))
	res := e.behindLock(t, "dup", "other", "dup")
	e.wantBatches(t, 3)
	var won []store.Test
	for _, r := range []result{res[0], res[2]} {
		switch {
		case r.err == nil:
			won = append(won, r.t)
		case !errors.Is(r.err, store.ErrConflict):
			t.Errorf("Create(dup): %v, want success or ErrConflict", r.err)
		}
	}
	rows := e.stored(t)
	if len(won) != 1 || won[0].Name != "dup" || rows["dup"] != won[0].ID {
		t.Errorf("two creates of dup: winners %+v, table id %d; want exactly one, with the stored id", won, rows["dup"])
	}
	if r := res[1]; r.err != nil || r.t.Name != "other" || rows["other"] != r.t.ID {
		t.Errorf("Create(other) beside the duplicates: %+v, %v", r.t, r.err)
	}
}

// TestBatchNameTaken: a name already stored is ErrConflict for its own
// create only.
func TestBatchNameTaken(t *testing.T) {
	e := mustBatchEnv(t, dbtest.NewSchema(t))
	var taken store.Test
	if err := e.pool.QueryRow(t.Context(), `INSERT INTO test (name) VALUES ('taken') RETURNING id`).Scan(&taken.ID); err != nil {
		t.Fatal(err)
	}
	res := e.behindLock(t, "a", "taken", "b")
	e.wantBatches(t, 3)
	if !errors.Is(res[1].err, store.ErrConflict) {
		t.Errorf("Create(taken) in a batch: %+v, %v; want ErrConflict", res[1].t, res[1].err)
	}
	rows := e.stored(t)
	for _, r := range []result{res[0], res[2]} {
		if r.err != nil || rows[r.t.Name] != r.t.ID {
			t.Errorf("batch-mate of a taken name: %+v, %v", r.t, r.err)
		}
	}
	if rows["taken"] != taken.ID || len(rows) != 3+store.StartFlights {
		t.Errorf("table %v", rows)
	}
}

// TestBatchCancelledWhileQueued: a create cancelled before its batch is
// sent returns at once, is left out of the batch, and the others succeed.
func TestBatchCancelledWhileQueued(t *testing.T) {
	e := mustBatchEnv(t, dbtest.NewSchema(t))
	release := e.begin(t, `LOCK TABLE test IN ACCESS EXCLUSIVE MODE`)
	blockers := e.occupyFlights(t, t.Context(), "blocker")
	ctx, cancel := context.WithCancel(t.Context())
	gone := e.queue(t, ctx, "gone")[0]
	stay := e.queue(t, t.Context(), "a", "b")
	cancel()
	// It returns while the lock is still held: it waits for nothing.
	if r := recv(t, gone); !errors.Is(r.err, context.Canceled) {
		t.Fatalf("cancelled queued create: %+v, %v; want context.Canceled", r.t, r.err)
	}
	release()
	for _, ch := range append(blockers, stay...) {
		if r := recv(t, ch); r.err != nil {
			t.Errorf("batch-mate of a cancelled create: %v", r.err)
		}
	}
	e.wantBatches(t, 2)
	if rows := e.stored(t); len(rows) != 2+store.StartFlights {
		t.Errorf("table %v, want the blockers, a and b (the cancelled create was never sent)", rows)
	}
}

// TestBatchQueueTimeout: behind a locked table, a create that waits in the
// queue longer than the queue timeout answers ErrUnavailable while the lock
// is still held, and is never sent; the batch already at the server is not
// affected by the timeout.
func TestBatchQueueTimeout(t *testing.T) {
	e := mustBatchEnv(t, dbtest.NewSchema(t), store.QueueTimeout(200*time.Millisecond))
	release := e.begin(t, `LOCK TABLE test IN ACCESS EXCLUSIVE MODE`)
	blockers := e.occupyFlights(t, t.Context(), "blocker")
	late := e.queue(t, t.Context(), "late")[0]
	if r := recv(t, late); !errors.Is(r.err, store.ErrUnavailable) {
		t.Fatalf("create queued behind a locked table: %+v, %v; want ErrUnavailable after the queue timeout", r.t, r.err)
	}
	release()
	for _, ch := range blockers {
		if r := recv(t, ch); r.err != nil {
			t.Errorf("create sent before the queue timeout: %v", r.err)
		}
	}
	if rows := e.stored(t); len(rows) != store.StartFlights {
		t.Errorf("table %v, want only the blockers (the timed-out create was never sent)", rows)
	}
	e.wantBatches(t) // the blockers' only
}

// TestBatchQueueWait: OnQueueWait reports, for each create, how long it
// waited in the queue: next to nothing for a create that found a flight
// free, at least the time the flights were held for creates that queued
// behind them.
func TestBatchQueueWait(t *testing.T) {
	var mu sync.Mutex
	var waits []time.Duration
	e := mustBatchEnv(t, dbtest.NewSchema(t), store.OnQueueWait(func(d time.Duration) {
		mu.Lock()
		defer mu.Unlock()
		waits = append(waits, d)
	}))
	const hold = time.Second
	release := e.begin(t, `LOCK TABLE test IN ACCESS EXCLUSIVE MODE`)
	blockers := e.occupyFlights(t, t.Context(), "blocker")
	queued := e.queue(t, t.Context(), "a", "b", "c")
	time.Sleep(hold)
	release()
	for _, ch := range append(blockers, queued...) {
		if r := recv(t, ch); r.err != nil {
			t.Fatal(r.err)
		}
	}
	e.wantBatches(t, 3)
	mu.Lock()
	defer mu.Unlock()
	// Reported as each batch is sent: the blockers' first, one each.
	if len(waits) != store.StartFlights+3 {
		t.Fatalf("%d waits reported %v, want one for each of %d blockers and 3 queued creates", len(waits), waits, store.StartFlights)
	}
	for i, d := range waits {
		if blocker := i < store.StartFlights; blocker && d >= hold/2 {
			t.Errorf("create %d found a flight free but waited %s", i, d)
		} else if !blocker && d < hold {
			t.Errorf("create %d queued behind the held flights for at least %s but waited %s", i, hold, d)
		}
	}
}

// TestBatchCancelledAfterSend: a create cancelled once its batch is at the
// server gets its context error at once; the statement goes on for its
// batch-mates (so the cancelled row lands, never acknowledged).
func TestBatchCancelledAfterSend(t *testing.T) {
	e := mustBatchEnv(t, dbtest.NewSchema(t))
	// Uncommitted rows in other transactions: an insert of the same name
	// waits at the server until they end.
	releaseBlock := e.begin(t, fmt.Sprintf(`
INSERT INTO test (name)
SELECT 'blocker-' || i
FROM generate_series(0, %d) AS i`, store.StartFlights-1))
	releaseHeld := e.begin(t, `INSERT INTO test (name) VALUES ('held')`)
	blockers := e.occupyFlights(t, t.Context(), "blocker")
	ctx, cancel := context.WithCancel(t.Context())
	held := e.queue(t, t.Context(), "held")[0]
	gone := e.queue(t, ctx, "gone")[0]
	releaseBlock() // the blockers go through; the flight sends [held, gone]
	e.waitBatchAtServer(t, "the batch [held, gone] waiting at the server")
	cancel()
	if r := recv(t, gone); !errors.Is(r.err, context.Canceled) {
		t.Fatalf("create cancelled after send: %+v, %v; want context.Canceled", r.t, r.err)
	}
	releaseHeld()
	if r := recv(t, held); r.err != nil || r.t.Name != "held" {
		t.Fatalf("batch-mate of a create cancelled after send: %+v, %v; want its row", r.t, r.err)
	}
	for _, ch := range blockers {
		recv(t, ch) // the blockers after the first were ErrConflict: not what this test is about
	}
	e.wantBatches(t, 2)
	if _, ok := e.stored(t)["gone"]; !ok {
		t.Errorf("the statement of a batch was cancelled for one create that gave up")
	}
}

// TestBatchAbandoned: once every create of a sent batch has given up, the
// statement is cancelled on the server, as a lone create's would be.
func TestBatchAbandoned(t *testing.T) {
	e := mustBatchEnv(t, dbtest.NewSchema(t))
	release := e.begin(t, `LOCK TABLE test IN ACCESS EXCLUSIVE MODE`)
	ctx, cancel := context.WithCancel(t.Context())
	blockers := e.occupyFlights(t, ctx, "abandoned")
	// Cancel only once each statement waits at the server: a cancel
	// request that reaches PostgreSQL before it has read the statement is
	// ignored, and the statement would then wait for the lock after all
	// (a flake on a busy machine, not the behaviour under test).
	dbtest.WaitFor(t, "the blockers waiting for the lock", within, func() bool {
		return e.waitingForTable(t) == len(blockers)
	})
	cancel()
	for _, ch := range blockers {
		if r := recv(t, ch); !errors.Is(r.err, context.Canceled) {
			t.Fatalf("cancelled create: %+v, %v; want context.Canceled", r.t, r.err)
		}
	}
	dbtest.WaitFor(t, "no statement waiting for the lock", within, func() bool {
		return e.waitingForTable(t) == 0
	})
	release()
	mustCreate(t, e.st, "after")
	if rows := e.stored(t); len(rows) != 1 {
		t.Errorf("table %v, want only after: the abandoned statements must not have run", rows)
	}
}

// TestBatchTimedOutAfterSend: when every create of a sent batch has timed
// out, the batch cancels its statement; each create then answers its own
// deadline (ErrUnavailable, a 503), never the batch's cancel, which the
// API would take for a client that left (499). The creates' context
// (lateDone) makes the losing order certain: on a busy machine a create's
// own wakeup at its deadline can come after its batch's answer.
func TestBatchTimedOutAfterSend(t *testing.T) {
	e := mustBatchEnv(t, dbtest.NewSchema(t))
	const n = 32
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("timed-out-%d", i)
	}
	// Uncommitted rows of other transactions: inserts of the same names
	// wait at the server until they end.
	releaseBlock := e.begin(t, `INSERT INTO test (name) VALUES ('blocker-0')`)
	e.begin(t, `INSERT INTO test (name) SELECT 'timed-out-' || i FROM generate_series(0, 31) AS i`)
	blockers := e.occupyFlights(t, t.Context(), "blocker")
	ctx := newLateDone()
	chs := e.queue(t, ctx, names...)
	releaseBlock() // the blocker goes through; the flight sends the n creates, which wait at the server
	for _, ch := range blockers {
		recv(t, ch)
	}
	e.waitBatchAtServer(t, "the batch waiting at the server")
	ctx.expire(500 * time.Millisecond)
	for i, ch := range chs {
		r := recv(t, ch)
		if errors.Is(r.err, context.Canceled) || !errors.Is(r.err, store.ErrUnavailable) || !errors.Is(r.err, context.DeadlineExceeded) {
			t.Errorf("create %s whose batch timed out at the server: %+v, %v; want ErrUnavailable for its deadline", names[i], r.t, r.err)
		}
	}
	e.wantBatches(t, n)
}

// lateDone is a context that expires in two steps: Err reports the
// deadline and the AfterFunc callbacks run at once, but Done closes only a
// while later.
type lateDone struct {
	context.Context // values only; never done by itself

	mu   sync.Mutex
	err  error
	fns  map[*func()]struct{}
	done chan struct{}
}

func newLateDone() *lateDone {
	return &lateDone{Context: context.Background(), fns: map[*func()]struct{}{}, done: make(chan struct{})}
}

func (c *lateDone) Done() <-chan struct{} { return c.done }

func (c *lateDone) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// AfterFunc is what context.AfterFunc calls for a context that has it.
func (c *lateDone) AfterFunc(f func()) (stop func() bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		go f()
		return func() bool { return false }
	}
	c.fns[&f] = struct{}{}
	return func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		_, waiting := c.fns[&f]
		delete(c.fns, &f)
		return waiting
	}
}

// expire sets the deadline error, runs the callbacks, and closes Done after delay.
func (c *lateDone) expire(delay time.Duration) {
	c.mu.Lock()
	c.err = context.DeadlineExceeded
	fns := c.fns
	c.fns = map[*func()]struct{}{}
	c.mu.Unlock()
	for f := range fns {
		go (*f)()
	}
	time.Sleep(delay)
	close(c.done)
}

// TestBatchDatabaseError: an error of the statement, or of its commit,
// reaches every create of the batch, and nothing of it is stored. The
// commit case shows that no create is answered before its commit: the
// rows come back from the statement, and only the commit fails.
func TestBatchDatabaseError(t *testing.T) {
	e := mustBatchEnv(t, dbtest.NewSchema(t))
	const ddl = `
CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.name = TG_ARGV[0] THEN
        RAISE EXCEPTION 'refused %', NEW.name;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER refuse BEFORE INSERT ON test
    FOR EACH ROW EXECUTE FUNCTION refuse('boom');
CREATE CONSTRAINT TRIGGER refuse_at_commit AFTER INSERT ON test
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION refuse('boom-at-commit')`
	if _, err := e.pool.Exec(t.Context(), ddl); err != nil {
		t.Fatal(err)
	}
	for i, bad := range []string{"boom", "boom-at-commit"} {
		a, b := fmt.Sprintf("a%d", i), fmt.Sprintf("b%d", i)
		for j, r := range e.behindLock(t, a, bad, b) {
			var pgErr *pgconn.PgError
			if !errors.As(r.err, &pgErr) || pgErr.Code != "P0001" {
				t.Errorf("%s: create %d of [%s %s %s]: %+v, %v; want the trigger's error", bad, j, a, bad, b, r.t, r.err)
			}
		}
	}
	want := []int{3}
	for range store.StartFlights {
		want = append(want, 1) // the second round's blockers
	}
	e.wantBatches(t, append(want, 3)...)
	if rows := e.stored(t); len(rows) != 2*store.StartFlights {
		t.Errorf("table %v, want only the blockers", rows)
	}
}

// TestBatchRetry: a serialization failure (40001) fails the whole
// statement, and the batch is run again, as a lone create would be.
func TestBatchRetry(t *testing.T) {
	e := mustBatchEnv(t, dbtest.NewSchema(t))
	const ddl = `
CREATE SEQUENCE tries;
CREATE FUNCTION flaky() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.name = 'flaky' THEN
        IF nextval('tries') = 1 THEN
            RAISE EXCEPTION 'try again' USING ERRCODE = 'serialization_failure';
        END IF;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER flaky BEFORE INSERT ON test FOR EACH ROW EXECUTE FUNCTION flaky()`
	if _, err := e.pool.Exec(t.Context(), ddl); err != nil {
		t.Fatal(err)
	}
	res := e.behindLock(t, "a", "flaky")
	e.wantBatches(t, 2)
	rows := e.stored(t)
	for _, r := range res {
		if r.err != nil || rows[r.t.Name] != r.t.ID {
			t.Errorf("create in a batch that hit 40001 once: %+v, %v; want it retried and stored", r.t, r.err)
		}
	}
	var tries int
	if err := e.pool.QueryRow(t.Context(), `SELECT last_value FROM tries`).Scan(&tries); err != nil || tries != 2 {
		t.Errorf("statement ran %d times (%v), want 2", tries, err)
	}
}

// TestBatchBadNameAlone: a name the column rejects is inserted by itself,
// so its error does not fail a batch.
func TestBatchBadNameAlone(t *testing.T) {
	e := mustBatchEnv(t, dbtest.NewSchema(t))
	long := strings.Repeat("é", 256)
	release := e.begin(t, `LOCK TABLE test IN ACCESS EXCLUSIVE MODE`)
	blockers := e.occupyFlights(t, t.Context(), "blocker")
	bad := e.create(t.Context(), long)
	good := e.queue(t, t.Context(), "a", "b") // would time out here if long were queued too
	release()
	if r := recv(t, bad); r.err == nil || errors.Is(r.err, store.ErrConflict) || errors.Is(r.err, store.ErrUnavailable) {
		t.Errorf("Create(256 characters): %+v, %v; want the column's error", r.t, r.err)
	}
	for _, ch := range append(blockers, good...) {
		if r := recv(t, ch); r.err != nil {
			t.Errorf("create beside a too long name: %v", r.err)
		}
	}
	e.wantBatches(t, 2)
}

// TestBatchDatabaseDown: when the database goes away under a running
// batch and a queued one, every create of both gets ErrUnavailable; the
// running one is not retried (it may have committed). The store serves
// again once the database is back.
func TestBatchDatabaseDown(t *testing.T) {
	t.Parallel()
	srv := dbtest.NewServer(t)
	e := mustBatchEnv(t, srv.URL())
	e.begin(t, `LOCK TABLE test IN ACCESS EXCLUSIVE MODE`)
	chs := e.occupyFlights(t, t.Context(), "sent")
	chs = append(chs, e.queue(t, t.Context(), "a", "b", "c")...)
	srv.Stop(t)
	for _, ch := range chs {
		if r := recv(t, ch); !errors.Is(r.err, store.ErrUnavailable) {
			t.Errorf("create with the database down: %+v, %v; want ErrUnavailable", r.t, r.err)
		}
	}
	srv.Start(t)
	dbtest.WaitFor(t, "a create after the restart", within, func() bool {
		_, err := e.st.Create(t.Context(), "after")
		return err == nil
	})
	if rows := e.stored(t); len(rows) != 1 {
		t.Errorf("table %v, want only after", rows)
	}
}

// TestCloseDrains: Close returns only once every queued create has its
// answer, and later creates are refused with ErrUnavailable.
func TestCloseDrains(t *testing.T) {
	e := mustBatchEnv(t, dbtest.NewSchema(t))
	release := e.begin(t, `LOCK TABLE test IN ACCESS EXCLUSIVE MODE`)
	chs := e.occupyFlights(t, t.Context(), "blocker")
	chs = append(chs, e.queue(t, t.Context(), "a", "b")...)
	closed := make(chan struct{})
	go func() {
		e.st.Close()
		close(closed)
	}()
	// A probe whose context is already done returns at once either way:
	// ErrUnavailable once Close has begun, context.Canceled before (and
	// then it is dropped from the queue).
	probe, cancel := context.WithCancel(t.Context())
	cancel()
	dbtest.WaitFor(t, "Close refusing new creates", within, func() bool {
		_, err := e.st.Create(probe, "late")
		return errors.Is(err, store.ErrUnavailable)
	})
	// The lock still holds every create back: Close must still be waiting.
	select {
	case <-closed:
		t.Fatal("Close returned while creates it had accepted were unanswered")
	default:
	}
	release()
	select {
	case <-closed:
	case <-time.After(within):
		t.Fatal("Close did not return")
	}
	for _, ch := range chs {
		if r := recv(t, ch); r.err != nil {
			t.Errorf("create queued before Close: %v", r.err)
		}
	}
	if rows := e.stored(t); len(rows) != 2+store.StartFlights {
		t.Errorf("table %v", rows)
	}
}

// flightsSeen returns the most batches that were in flight at once.
func (e *batchEnv) flightsSeen() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.maxFlights
}

// TestBatchFlightsDuplicateName: two batches in flight at once with the
// same name give it to exactly one create, whichever way the transaction
// that held it back ends.
func TestBatchFlightsDuplicateName(t *testing.T) {
	e := mustBatchEnv(t, dbtest.NewSchema(t))
	e.st.AllowFlights(2)
	for _, end := range []string{"ROLLBACK", "COMMIT"} {
		t.Run(end, func(t *testing.T) {
			name := "dup-" + strings.ToLower(end)
			// An uncommitted row of the name: both batches wait on it.
			tx, err := e.pool.Begin(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			defer tx.Rollback(context.Background())
			var held int32
			if err := tx.QueryRow(t.Context(), `INSERT INTO test (name) VALUES ($1) RETURNING id`, name).Scan(&held); err != nil {
				t.Fatal(err)
			}
			sent := len(e.batches())
			var chs []<-chan result
			for range 2 {
				chs = append(chs, e.create(t.Context(), name))
				n := len(chs)
				dbtest.WaitFor(t, "batch sent", within, func() bool { return len(e.batches()) == sent+n })
			}
			if got := e.flightsSeen(); got != 2 {
				t.Fatalf("batches in flight at once: %d, want 2", got)
			}
			if _, err := tx.Exec(t.Context(), end); err != nil {
				t.Fatal(err)
			}
			var won []store.Test
			for _, ch := range chs {
				switch r := recv(t, ch); {
				case r.err == nil:
					won = append(won, r.t)
				case !errors.Is(r.err, store.ErrConflict):
					t.Errorf("Create(%s): %v, want success or ErrConflict", name, r.err)
				}
			}
			id := e.stored(t)[name]
			switch {
			case end == "COMMIT" && (len(won) != 0 || id != held):
				t.Errorf("name taken by a committed transaction: winners %+v, table id %d (the transaction's %d); want none", won, id, held)
			case end == "ROLLBACK" && (len(won) != 1 || won[0].ID != id):
				t.Errorf("name freed by a rollback: winners %+v, table id %d; want exactly one, with the stored id", won, id)
			}
		})
	}
}

// TestBatchFlightsNoDeadlock: many creates of the same few names, from many
// goroutines, on four flights at once: each name goes to exactly one
// create, every other is ErrConflict, and no statement deadlocked (each
// batch takes its names' locks in one order).
func TestBatchFlightsNoDeadlock(t *testing.T) {
	var c codes
	e := mustBatchEnv(t, dbtest.NewSchema(t), store.ObserveErrors(c.observe))
	e.st.AllowFlights(4)
	const rounds, names, writers = 20, 8, 16
	for round := range rounds {
		var (
			mu  sync.Mutex
			won = map[string][]int32{}
			wg  sync.WaitGroup
		)
		for w := range writers {
			wg.Go(func() {
				// Every writer creates every name of the round, each in
				// its own order.
				for _, k := range rand.Perm(names) {
					name := fmt.Sprintf("r%d-%d", round, k)
					got, err := e.st.Create(t.Context(), name)
					switch {
					case err == nil:
						mu.Lock()
						won[name] = append(won[name], got.ID)
						mu.Unlock()
					case !errors.Is(err, store.ErrConflict):
						t.Errorf("writer %d: Create(%s): %v, want success or ErrConflict", w, name, err)
					}
				}
			})
		}
		wg.Wait()
		rows := e.stored(t)
		for k := range names {
			name := fmt.Sprintf("r%d-%d", round, k)
			if ids := won[name]; len(ids) != 1 || ids[0] != rows[name] {
				t.Errorf("%s: created as %v, table id %d; want exactly one create, with the stored id", name, ids, rows[name])
			}
		}
	}
	if got := c.list(); len(got) > 0 {
		t.Errorf("database errors %v, want none (a deadlock is 40P01)", got)
	}
	if got := e.flightsSeen(); got < 2 {
		t.Errorf("batches in flight at once: at most %d; the test did not run flights side by side", got)
	}
}

// TestBatchFlightsAdaptToLatency: with the database 10 ms away each way,
// the store runs more than one batch at a time (each batch takes at least
// the 20 ms round trip, so flights.go allows the most), never more than its
// limit, and every create still gets its own stored row.
func TestBatchFlightsAdaptToLatency(t *testing.T) {
	url := dbtest.NewSchema(t)
	p := dbtest.NewProxy(t, url)
	e := mustBatchEnv(t, p.URL(url))
	if err := p.Latency(10*time.Millisecond, 0); err != nil { // after the migration, which takes many round trips
		t.Fatal(err)
	}
	e.st.AdaptFlights()
	const writers = 16
	deadline := time.Now().Add(within)
	var (
		mu      sync.Mutex
		created = map[string]int32{}
		wg      sync.WaitGroup
	)
	for w := range writers {
		wg.Go(func() {
			for i := 0; e.flightsSeen() < 2 && time.Now().Before(deadline); i++ {
				name := fmt.Sprintf("w%d-%d", w, i)
				got, err := e.st.Create(t.Context(), name)
				if err != nil || got.Name != name {
					t.Errorf("Create(%s) = %+v, %v", name, got, err)
					return
				}
				mu.Lock()
				created[name] = got.ID
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if kept := e.st.KeptFlights(); kept < 2 {
		t.Errorf("flights allowed: %d after %d creates; want 2 or more", kept, len(created))
	}
	if seen := e.flightsSeen(); seen < 2 {
		t.Errorf("batches in flight at once: at most %d; want 2 or more", seen)
	}
	if seen := e.flightsSeen(); seen > e.st.MaxCreateFlights() {
		t.Errorf("batches in flight at once: %d, more than the store's limit %d", seen, e.st.MaxCreateFlights())
	}
	rows := e.stored(t)
	for name, id := range created {
		if rows[name] != id {
			t.Errorf("Create(%s) answered id %d, the table has %d", name, id, rows[name])
		}
	}
	t.Logf("%d creates in %d batches before two ran at once", len(created), len(e.batches()))
}
