package store_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/ybrest/testsapi/internal/dbtest"
	"github.com/ybrest/testsapi/internal/store"
)

// Bounds of the consumer's fault tests.
const (
	faultConsumeTimeout = time.Second // the consumer's ConsumeTimeout
	// faultReplicationSilent is how long the consumer's replication
	// connection may be silent: half of ConsumeTimeout, then
	// ConsumeTimeout for the reply, and no more, since its session's
	// wal_sender_timeout is 0. With one, the server would end the
	// connection itself (toxiproxy passes the close on, even through a
	// blackhole), and the test would not show the consumer's own bound.
	faultReplicationSilent = faultConsumeTimeout/2 + faultConsumeTimeout
	faultConsumeMargin     = 2 * time.Second // scheduling on a busy machine, not another timeout
)

// faultConsumer is a consumer of e's slot with ConsumeTimeout whose pool
// (rec) or replication connection (repl) goes through px; e's own pool,
// which the test writes and reads with, goes straight to the database.
// Each time ConsumeChanges returns an error, it is sent on stopped.
type faultConsumer struct {
	*feedEnv
	px      *dbtest.Proxy
	rec     *store.Store
	repl    *pgconn.Config
	stopped chan error
}

// mustFaultConsumer starts the consumer, its pool through the proxy when
// pool is true, else its replication connection, and waits until it
// streams.
func mustFaultConsumer(t *testing.T, pool bool) *faultConsumer {
	t.Helper()
	f := newFaultConsumer(t, mustFeedEnv(t))
	url := f.pool.Config().ConnString()
	recURL, replURL := url, url
	if pool {
		recURL = f.px.URL(url)
	} else {
		replURL = f.px.URL(url)
	}
	f.rec, _ = mustStore(t, recURL, store.ConsumeTimeout(faultConsumeTimeout))
	if _, _, err := f.rec.Migrate(t.Context()); err != nil {
		t.Fatal(err)
	}
	var err error
	if f.repl, err = pgconn.ParseConfig(replURL); err != nil {
		t.Fatal(err)
	}
	f.repl.ConnectTimeout = faultConsumeTimeout // as cmd/server's DB_CONNECT_TIMEOUT bounds it
	waitStreaming(t, f.run(t), f.slot)
	return f
}

// newFaultConsumer returns e with a proxy to its database, cleared before
// it closes (cleanups run last first: the connections cut while
// blackholed then close at once).
func newFaultConsumer(t *testing.T, e *feedEnv) *faultConsumer {
	f := &faultConsumer{feedEnv: e, px: dbtest.NewProxy(t, e.pool.Config().ConnString()), stopped: make(chan error, 100)}
	t.Cleanup(f.px.Clear)
	return f
}

// run starts the consumer of f.rec and f.repl, its session's
// wal_sender_timeout 0 (see faultReplicationSilent), sending each error
// it stops with on stopped; started gets a value each time it streams.
func (f *faultConsumer) run(t *testing.T) (started <-chan struct{}) {
	f.repl.RuntimeParams["wal_sender_timeout"] = "0"
	started, _ = runConsumer(t, f.rec, f.repl, f.slot, func(err error) {
		select {
		case f.stopped <- err:
		default:
		}
	})
	return started
}

// insert commits a row of each name, straight to the database.
func (f *faultConsumer) insert(t *testing.T, names ...string) {
	t.Helper()
	for _, name := range names {
		if _, err := f.pool.Exec(t.Context(), `INSERT INTO test (name) VALUES ($1)`, name); err != nil {
			t.Fatal(err)
		}
	}
}

// blackholeUntilGivenUp blackholes the proxy and waits for the consumer to
// give up, which it must within bound and a margin for a busy machine, and
// then to give up again once started again; during is committed right
// after the fault begins.
func (f *faultConsumer) blackholeUntilGivenUp(t *testing.T, bound time.Duration, during ...string) {
	t.Helper()
	select {
	case err := <-f.stopped:
		t.Fatalf("the consumer stopped before the fault: %v", err)
	default:
	}
	if err := f.px.Blackhole(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	f.insert(t, during...)
	within := bound + faultConsumeMargin
	select {
	case err := <-f.stopped:
		if !errors.Is(err, store.ErrUnavailable) {
			t.Fatalf("the consumer stopped with %v, want ErrUnavailable", err)
		}
		t.Logf("the consumer gave up %s after the blackhole began (bound %s): %v",
			time.Since(start).Round(time.Millisecond), bound, err)
	case <-time.After(within):
		t.Fatalf("the consumer had not given up %s after its connection hung (bound %s)", within, bound)
	}
	// Started again while the fault lasts, it gives up as soon.
	select {
	case err := <-f.stopped:
		t.Logf("started again, it gave up %s after the blackhole began: %v", time.Since(start).Round(time.Millisecond), err)
	case <-time.After(within):
		t.Fatalf("the consumer started again during the fault had not given up within %s", within)
	}
}

// recordedOnce clears the fault, commits after, and checks that every
// row of table test is recorded, as its create, exactly once and in
// commit order, once the consumer has restarted.
func (f *faultConsumer) recordedOnce(t *testing.T, after string) {
	t.Helper()
	f.px.Clear()
	cleared := time.Now()
	f.insert(t, after)
	rows, err := f.pool.Query(t.Context(), `SELECT id, name FROM test ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	var want []kindRow
	for rows.Next() {
		var r store.Test
		if err := rows.Scan(&r.ID, &r.Name); err != nil {
			t.Fatal(err)
		}
		want = append(want, kindRow{store.KindCreate, r})
	}
	if rows.Err() != nil {
		t.Fatal(rows.Err())
	}
	f.mustChanges(t, 0, len(want))
	t.Logf("all %d changes recorded %s after the fault was cleared", len(want), time.Since(cleared).Round(time.Millisecond))
	time.Sleep(300 * time.Millisecond) // room for a wrong repeat to land
	mustRecorded(t, f.mustChanges(t, 0, len(want)), want)
}

// TestConsumePoolBlackhole: the connections of the consumer's pool go
// silent (a blackhole: data swallowed, connections left open, new ones
// too) while changes are committed. The consumer gives up within
// ConsumeTimeout (and a margin) with ErrUnavailable, rolling back, instead
// of waiting for ever holding the slot; once the network is back, the
// consumer started again records every change, those committed during
// the fault included, exactly once.
func TestConsumePoolBlackhole(t *testing.T) {
	f := mustFaultConsumer(t, true)
	f.insert(t, "before1", "before2")
	f.mustChanges(t, 0, 2)
	f.blackholeUntilGivenUp(t, faultConsumeTimeout, "during1", "during2")
	f.recordedOnce(t, "after")
}

// TestConsumeReplicationBlackhole: the consumer's replication connection
// goes silent while its pool still answers. The consumer asks for a reply
// after half of ConsumeTimeout without a message and gives up when none
// comes within ConsumeTimeout and half of wal_sender_timeout (plus a
// margin), instead of waiting for ever (its status updates vanish without
// an error, and the server's wal_sender_timeout ends only the server's
// side); once the network is back, every change is recorded exactly once.
func TestConsumeReplicationBlackhole(t *testing.T) {
	f := mustFaultConsumer(t, false)
	f.insert(t, "before1", "before2")
	f.mustChanges(t, 0, 2)
	// Idle for longer than the bound: a server with nothing to send still
	// answers the consumer's requests, and is not taken for silent.
	time.Sleep(faultReplicationSilent + faultConsumeTimeout)
	f.blackholeUntilGivenUp(t, faultReplicationSilent, "during1", "during2")
	f.recordedOnce(t, "after")
}

// cutDialer dials through a proxy and can cut the connections it made:
// a cut connection's writes are lost and its Close leaves the socket open
// (until the test ends), as when the network loses a client's last
// packets and its FIN; connections made after the cut go to another
// address. Toxiproxy alone would close the server's side as soon as the
// client closes its own, even through a blackhole, and so would removing
// the blackhole (its toxic closes what passed through it): the server
// would roll back at once.
type cutDialer struct {
	mu     sync.Mutex
	conns  []*cutConn
	direct string // host:port dialed once cut, "" before
}

type cutConn struct {
	net.Conn
	cut atomic.Bool
}

func (c *cutConn) Write(p []byte) (int, error) {
	if c.cut.Load() {
		return len(p), nil
	}
	return c.Conn.Write(p)
}

func (c *cutConn) Close() error {
	if c.cut.Load() {
		return nil
	}
	return c.Conn.Close()
}

func (d *cutDialer) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	d.mu.Lock()
	if d.direct != "" {
		addr = d.direct
	}
	d.mu.Unlock()
	conn, err := (&net.Dialer{}).DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	c := &cutConn{Conn: conn}
	d.mu.Lock()
	d.conns = append(d.conns, c)
	d.mu.Unlock()
	return c, nil
}

// cutAll cuts every connection made so far; later ones go to direct.
func (d *cutDialer) cutAll(t *testing.T, direct string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.direct = direct
	for _, c := range d.conns {
		if c.cut.CompareAndSwap(false, true) {
			t.Cleanup(func() { _ = c.Conn.Close() })
		}
	}
}

// TestConsumeHungLockHolder: the consumer's pool connection hangs in the
// middle of its recording transaction, after the state row's lock is
// taken (a blackhole on its path), and the server's side of it stays
// open (its client's packets and FIN lost: the session lives until the
// server's TCP keepalive, two hours by default, would notice). The
// consumer gives up and starts again on new connections, which reach the
// database, and whose lock of the state row waits behind the hung
// session. The database must end that session by
// itself (idle_in_transaction_session_timeout of the recording
// transaction), so that recording resumes within that bound, a
// ConsumeTimeout for the retry and a margin after the fault began,
// exactly once.
func TestConsumeHungLockHolder(t *testing.T) {
	e := mustFeedEnv(t)
	f := newFaultConsumer(t, e)
	url := e.pool.Config().ConnString()
	cfg, err := pgxpool.ParseConfig(f.px.URL(url))
	if err != nil {
		t.Fatal(err)
	}
	var dialer cutDialer
	cfg.ConnConfig.DialFunc = dialer.dial
	recPool, err := pgxpool.NewWithConfig(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(recPool.Close)
	f.rec = store.New(recPool, store.ConsumeTimeout(faultConsumeTimeout))
	t.Cleanup(f.rec.Close)
	if _, _, err := f.rec.Migrate(t.Context()); err != nil {
		t.Fatal(err)
	}
	// The consumer's insert into test_changes waits on an advisory lock
	// the test holds, so that the fault begins while its transaction holds
	// the state row's lock.
	key := time.Now().UnixNano() & 0x7fffffff
	e.exec(t, fmt.Sprintf(`
CREATE FUNCTION hold_recording() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	PERFORM pg_advisory_xact_lock_shared(%d);
	RETURN NULL;
END $$`, key),
		`CREATE TRIGGER hold_recording BEFORE INSERT ON test_changes FOR EACH STATEMENT EXECUTE FUNCTION hold_recording()`)
	f.repl = e.repl.Copy() // straight to the database: the stream keeps working
	waitStreaming(t, f.run(t), f.slot)
	f.insert(t, "before")
	f.mustChanges(t, 0, 1)

	holder, err := e.pool.Acquire(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Release()
	if _, err := holder.Exec(t.Context(), `SELECT pg_advisory_lock($1)`, key); err != nil {
		t.Fatal(err)
	}
	f.insert(t, "held")
	var hung int
	dbtest.WaitFor(t, "the consumer's insert waiting on the test's lock", 5*time.Second, func() bool {
		err := e.pool.QueryRow(t.Context(), `
SELECT pid FROM pg_locks
WHERE locktype = 'advisory' AND classid = 0 AND objid = $1 AND NOT granted`, key).Scan(&hung)
		return err == nil
	})
	db := e.pool.Config().ConnConfig
	dialer.cutAll(t, net.JoinHostPort(db.Host, strconv.Itoa(int(db.Port))))
	if err := f.px.Blackhole(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := holder.Exec(t.Context(), `SELECT pg_advisory_unlock($1)`, key); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-f.stopped:
		t.Logf("the consumer gave up %s after the fault began: %v", time.Since(start).Round(time.Millisecond), err)
	case <-time.After(faultConsumeTimeout + faultConsumeMargin):
		t.Fatalf("the consumer had not given up %s after its connection hung", faultConsumeTimeout+faultConsumeMargin)
	}
	// The server still has the hung session, in its transaction: the
	// proxy kept its side open.
	var state string
	if err := e.pool.QueryRow(t.Context(), `SELECT state FROM pg_stat_activity WHERE pid = $1`, hung).Scan(&state); err != nil || state != "idle in transaction" {
		t.Fatalf("the hung session %d: state %q (%v), want idle in transaction: the test does not hold the lock", hung, state, err)
	}
	f.insert(t, "after")
	within := store.RecordingIdleTimeout(faultConsumeTimeout) + faultConsumeTimeout + faultConsumeMargin
	blocked := false
	for {
		st, err := e.st.FeedState(t.Context())
		if err == nil && st.LastSeq >= 3 {
			break
		}
		if !blocked {
			// Evidence of the gap: a new session of the consumer waits
			// on the hung one.
			var n int
			_ = e.pool.QueryRow(t.Context(), `SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY (pg_blocking_pids(pid))`, hung).Scan(&n)
			if n > 0 {
				blocked = true
				t.Logf("a new session of the consumer waits on the hung one %s after the fault began", time.Since(start).Round(time.Millisecond))
			}
		}
		if time.Since(start) > within {
			t.Fatalf("recording had not resumed %s after the fault began (the hung session still there: %v)", within, sessionExists(t, e, hung))
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("recording resumed %s after the fault began (bound %s); hung session still there: %v",
		time.Since(start).Round(time.Millisecond), within, sessionExists(t, e, hung))
	f.recordedOnce(t, "last")
}

// sessionExists reports whether the server has a session of process pid.
func sessionExists(t *testing.T, e *feedEnv, pid int) bool {
	var n int
	if err := e.pool.QueryRow(t.Context(), `SELECT count(*) FROM pg_stat_activity WHERE pid = $1`, pid).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n > 0
}

// TestConsumeSlowTransactionKept: the stream brings a transaction's
// changes slowly (the replication connection limited to 40 KB/s), so that
// the recording transaction waits, idle, for longer than its
// idle_in_transaction_session_timeout between its lock of the state row
// and its first write. The consumer keeps it open with a statement every
// recordingKeepAlive: the transaction is recorded on the first attempt,
// not ended by the server and sent again (which would repeat for ever).
func TestConsumeSlowTransactionKept(t *testing.T) {
	f := mustFaultConsumer(t, false)
	f.insert(t, "before")
	f.mustChanges(t, 0, 1)
	// 600 rows of 255 characters: about 180 KB of stream, the first 500
	// (a batch, changeBatch) in about 3.7 s.
	const rows = 600
	if err := f.px.Bandwidth(40); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := f.pool.Exec(t.Context(), `
INSERT INTO test (name)
SELECT lpad(n::text, 255, 'x') FROM generate_series(1, $1) AS n`, rows); err != nil {
		t.Fatal(err)
	}
	idle := store.RecordingIdleTimeout(faultConsumeTimeout)
	dbtest.WaitFor(t, "the slow transaction recorded", 15*time.Second, func() bool {
		st, err := f.st.FeedState(t.Context())
		return err == nil && st.LastSeq >= 1+rows
	})
	took := time.Since(start)
	t.Logf("the slow transaction recorded %s after its commit (idle_in_transaction_session_timeout %s)", took.Round(time.Millisecond), idle)
	if took < idle+faultConsumeTimeout {
		t.Fatalf("recorded within %s: the stream was not slow enough to test the idle bound (%s)", took, idle)
	}
	select {
	case err := <-f.stopped:
		t.Fatalf("the consumer stopped while the slow transaction streamed: %v", err)
	default:
	}
	f.recordedOnce(t, "after")
}

// slotCreator is a consumer of a slot not made yet, its replication
// connection through a proxy, with a transaction (with an id) held open
// so that the creation of the slot waits for it.
type slotCreator struct {
	*faultConsumer
	held    pgx.Tx
	started <-chan struct{}
}

func mustSlotCreator(t *testing.T) *slotCreator {
	t.Helper()
	e := mustFeedEnv(t)
	f := newFaultConsumer(t, e)
	url := e.pool.Config().ConnString()
	f.rec, _ = mustStore(t, url, store.ConsumeTimeout(faultConsumeTimeout))
	if _, _, err := f.rec.Migrate(t.Context()); err != nil {
		t.Fatal(err)
	}
	var err error
	if f.repl, err = pgconn.ParseConfig(f.px.URL(url)); err != nil {
		t.Fatal(err)
	}
	f.repl.ConnectTimeout = faultConsumeTimeout
	held, err := e.pool.Begin(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = held.Rollback(context.Background()) })
	if _, err := held.Exec(t.Context(), `SELECT txid_current()`); err != nil {
		t.Fatal(err)
	}
	c := &slotCreator{faultConsumer: f, held: held, started: f.run(t)}
	dbtest.WaitFor(t, "the slot's creation waiting", 10*time.Second, func() bool {
		var n int
		err := e.pool.QueryRow(t.Context(), `
SELECT count(*) FROM pg_stat_activity
WHERE backend_type = 'walsender' AND state = 'active' AND query LIKE 'CREATE_REPLICATION_SLOT ' || $1 || ' %'`, f.slot).Scan(&n)
		return err == nil && n == 1
	})
	return c
}

// TestConsumeSlotCreationWaits: creating the slot waits for a transaction
// that was running when it began, here for three ConsumeTimeouts; the
// consumer waits with it (its connection is alive and the database still
// at work), without giving up, and streams once the transaction ends.
func TestConsumeSlotCreationWaits(t *testing.T) {
	c := mustSlotCreator(t)
	select {
	case err := <-c.stopped:
		t.Fatalf("the consumer gave up while the slot's creation rightly waited: %v", err)
	case <-c.started:
		t.Fatal("the consumer streamed before the transaction running at the slot's creation ended")
	case <-time.After(3 * faultConsumeTimeout):
	}
	if err := c.held.Commit(t.Context()); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	waitStreaming(t, c.started, c.slot)
	t.Logf("streaming %s after the transaction ended", time.Since(start).Round(time.Millisecond))
	c.insert(t, "after")
	c.mustChanges(t, 0, 1)
}

// TestConsumeSlotCreationHangs: the replication connection goes silent (a
// blackhole) while the slot's creation waits for a transaction; the
// transaction ends, the database makes the slot and its answer is lost.
// The consumer sees its session done with the command and, a
// ConsumeTimeout later still without an answer, gives up (within two
// ConsumeTimeouts and a margin after the database was done), instead of
// waiting for ever; once the network is back it streams the slot made.
func TestConsumeSlotCreationHangs(t *testing.T) {
	c := mustSlotCreator(t)
	if err := c.px.Blackhole(); err != nil {
		t.Fatal(err)
	}
	if err := c.held.Commit(t.Context()); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	within := 2*faultConsumeTimeout + faultConsumeMargin
	select {
	case err := <-c.stopped:
		if !errors.Is(err, store.ErrUnavailable) {
			t.Fatalf("the consumer stopped with %v, want ErrUnavailable", err)
		}
		t.Logf("the consumer gave up %s after the slot was made: %v", time.Since(start).Round(time.Millisecond), err)
	case <-time.After(within):
		t.Fatalf("the consumer had not given up %s after the slot was made with its answer lost", within)
	}
	c.px.Clear()
	waitStreaming(t, c.started, c.slot)
	c.insert(t, "after")
	mustRecorded(t, c.mustChanges(t, 0, 1), []kindRow{{store.KindCreate, store.Test{ID: mustID(t, c.feedEnv, "after"), Name: "after"}}})
}

// mustID returns the id of the row named name.
func mustID(t *testing.T, e *feedEnv, name string) int32 {
	t.Helper()
	var id int32
	if err := e.pool.QueryRow(t.Context(), `SELECT id FROM test WHERE name = $1`, name).Scan(&id); err != nil {
		t.Fatal(err)
	}
	return id
}
