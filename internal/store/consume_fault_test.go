package store_test

import (
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
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
	e := mustFeedEnv(t)
	url := e.pool.Config().ConnString()
	f := &faultConsumer{feedEnv: e, px: dbtest.NewProxy(t, url), stopped: make(chan error, 100)}
	// Before the proxy closes (cleanups run last first): the connections
	// cut while blackholed then close at once.
	t.Cleanup(f.px.Clear)
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
	f.repl.RuntimeParams["wal_sender_timeout"] = "0"
	started, _ := runConsumer(t, f.rec, f.repl, f.slot, func(err error) {
		select {
		case f.stopped <- err:
		default:
		}
	})
	waitStreaming(t, started, f.slot)
	return f
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
