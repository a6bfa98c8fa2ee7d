package store_test

import (
	"context"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/ybrest/testsapi/internal/dbtest"
	"github.com/ybrest/testsapi/internal/store"
	"golang.org/x/sys/unix"
)

type socketOptions struct {
	keepAlive             bool
	idle, interval, count int // seconds, seconds, probes
	userTimeoutMs         int
}

// socketOptionsOf reads the keepalive and user-timeout options of a TCP
// connection from the kernel.
func socketOptionsOf(t *testing.T, c net.Conn) socketOptions {
	t.Helper()
	tcp, ok := c.(*net.TCPConn)
	if !ok {
		t.Fatalf("connection is a %T, not TCP", c)
	}
	raw, err := tcp.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var o socketOptions
	var errs []error
	get := func(fd int, level, opt int) int {
		v, err := unix.GetsockoptInt(fd, level, opt)
		errs = append(errs, err)
		return v
	}
	err = raw.Control(func(fd uintptr) {
		o.keepAlive = get(int(fd), syscall.SOL_SOCKET, syscall.SO_KEEPALIVE) == 1
		o.idle = get(int(fd), syscall.IPPROTO_TCP, unix.TCP_KEEPIDLE)
		o.interval = get(int(fd), syscall.IPPROTO_TCP, unix.TCP_KEEPINTVL)
		o.count = get(int(fd), syscall.IPPROTO_TCP, unix.TCP_KEEPCNT)
		o.userTimeoutMs = get(int(fd), syscall.IPPROTO_TCP, unix.TCP_USER_TIMEOUT)
	})
	for _, e := range append(errs, err) {
		if e != nil {
			t.Fatalf("getsockopt: %v", e)
		}
	}
	return o
}

// TestPoolSocketOptions: the pool's connections carry the TCP keepalive
// and TCP_USER_TIMEOUT settings, or none when they are turned off.
func TestPoolSocketOptions(t *testing.T) {
	t.Parallel()
	url := dbtest.NewSchema(t)
	on := mustPool(t, url, nil, store.TCPKeepAlive(2*time.Second), store.TCPUserTimeout(3*time.Second))
	off := mustPool(t, url, nil, store.TCPKeepAlive(0), store.TCPUserTimeout(0))
	want := map[*pgxpool.Pool]socketOptions{
		on:  {keepAlive: true, idle: 2, interval: 2, count: 3, userTimeoutMs: 3000},
		off: {},
	}
	for pool, w := range want {
		c, err := pool.Acquire(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		got := socketOptionsOf(t, c.Conn().PgConn().Conn())
		c.Release()
		if !w.keepAlive {
			got.idle, got.interval, got.count = 0, 0, 0 // the system's, unused
		}
		if got != w {
			t.Errorf("socket options %+v, want %+v", got, w)
		}
	}
}

// TestConnConfigSocketOptions: a connection made outside the pool from
// Pool.ConnConfig (the change feed's replication connection) carries the
// pool's TCP keepalive and TCP_USER_TIMEOUT, where one made from the
// config NewPool was given carries neither.
func TestConnConfigSocketOptions(t *testing.T) {
	t.Parallel()
	url := dbtest.NewSchema(t)
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	pool, err := store.NewPool(t.Context(), cfg, store.TCPKeepAlive(2*time.Second), store.TCPUserTimeout(3*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	repl := pool.ConnConfig()
	repl.RuntimeParams["replication"] = "database" // as ConsumeChanges connects
	conn, err := pgconn.ConnectConfig(t.Context(), repl)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	want := socketOptions{keepAlive: true, idle: 2, interval: 2, count: 3, userTimeoutMs: 3000}
	if got := socketOptionsOf(t, conn.Conn()); got != want {
		t.Errorf("socket options %+v, want %+v", got, want)
	}
}
