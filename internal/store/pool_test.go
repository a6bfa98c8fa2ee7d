package store_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/ybrest/testsapi/internal/dbtest"
	"github.com/ybrest/testsapi/internal/store"
)

// openIdle has n connections of pool opened at once and released, so that
// n sit idle.
func openIdle(t *testing.T, pool *pgxpool.Pool, n int) {
	t.Helper()
	var conns []*pgxpool.Conn
	for range n {
		c, err := pool.Acquire(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	for _, c := range conns {
		c.Release()
	}
	if got := pool.Stat().IdleConns(); got != int32(n) {
		t.Fatalf("%d idle connections, want %d", got, n)
	}
}

// TestIdlePingBlackhole: the database host vanishes (a blackhole: no
// reset, no answer) while the pool is idle. The idle check takes every
// connection out of the pool within its period plus the ping's timeout,
// with no request needed, and a ping of the store fails within the acquire
// timeout; with the check off the dead connections stay. Once the network
// is back the pool connects again.
func TestIdlePingBlackhole(t *testing.T) {
	t.Parallel()
	const (
		every   = 300 * time.Millisecond
		acquire = 500 * time.Millisecond
		margin  = time.Second
		idle    = 3
	)
	url := dbtest.NewSchema(t)
	px := dbtest.NewProxy(t, url)
	pool := mustPool(t, px.URL(url), nil, store.IdlePing(every), store.AcquireTimeout(acquire))
	unchecked := mustPool(t, px.URL(url), nil, store.IdlePing(0), store.AcquireTimeout(acquire))
	st := store.New(pool)
	if _, _, err := st.Migrate(t.Context()); err != nil {
		t.Fatal(err)
	}
	openIdle(t, pool, idle)
	openIdle(t, unchecked, idle)

	if err := px.Blackhole(); err != nil {
		t.Fatal(err)
	}
	faultAt := time.Now()
	dbtest.WaitFor(t, "no connection left in the pool", every+acquire+margin, func() bool { return pool.Stat().TotalConns() == 0 })
	gone := time.Since(faultAt)
	if n := unchecked.Stat().IdleConns(); n != idle {
		t.Errorf("without the idle check %d of %d idle connections left the pool, want none: pgxpool itself does not notice", idle-n, idle)
	}
	// No dead connection is left to wait on: a ping must make a new one,
	// which the acquire timeout bounds.
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	began := time.Now()
	err := st.Ping(ctx)
	if took := time.Since(began); !errors.Is(err, store.ErrUnavailable) || took > acquire+margin {
		t.Errorf("Ping with the database gone: %v after %s, want ErrUnavailable within %s", err, took, acquire+margin)
	}
	t.Logf("%d idle connections gone %s after the blackhole began (ping every %s, timeout %s); without the check all %d still in the pool; a store ping then failed in %s",
		idle, gone.Round(time.Millisecond), every, acquire, idle, time.Since(began).Round(time.Millisecond))

	px.Clear()
	dbtest.WaitFor(t, "a ping after the network came back", 5*time.Second, func() bool { return st.Ping(t.Context()) == nil })
}
