package store

import (
	"context"
	"net"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.opentelemetry.io/otel/trace"
)

// Defaults of NewPool, the service's own (cmd/server's DB_TCP_KEEPALIVE,
// DB_TCP_USER_TIMEOUT and DB_IDLE_PING default to the same).
const (
	// DefaultTCPKeepAlive is the idle time before the first TCP keepalive
	// probe on a database connection, and the time between probes.
	DefaultTCPKeepAlive = 5 * time.Second
	// DefaultTCPUserTimeout is how long data sent on a database connection
	// may go unacknowledged before the kernel drops the connection (Linux).
	DefaultTCPUserTimeout = 10 * time.Second
	// DefaultIdlePing is how often idle pooled connections are pinged.
	DefaultIdlePing = 5 * time.Second
)

// keepAliveProbes is how many unanswered keepalive probes drop a
// connection (where TCP_USER_TIMEOUT does not decide first).
const keepAliveProbes = 3

// Pool is a pgx pool whose connections are set up the way the service runs
// them (NewPool). Use Pool.Pool for the Store; Close stops the idle check
// and closes the pool.
type Pool struct {
	*pgxpool.Pool
	stop context.CancelFunc
	done chan struct{} // closed when the idle check has stopped
}

// PoolOption tunes NewPool.
type PoolOption func(*poolOptions)

type poolOptions struct {
	acquireTimeout time.Duration
	keepAlive      time.Duration
	userTimeout    time.Duration
	idlePing       time.Duration
	tracer         trace.TracerProvider // see TraceStatements; nil means no statement spans
}

// AcquireTimeout bounds every wait for a connection (LimitAcquire); it
// also bounds the idle check's ping. Zero, the default, means no bound.
func AcquireTimeout(d time.Duration) PoolOption {
	return func(o *poolOptions) { o.acquireTimeout = d }
}

// TCPKeepAlive sets the idle time before the first TCP keepalive probe and
// the interval between probes (3 probes) on database connections; zero
// turns keepalive off. Default DefaultTCPKeepAlive.
func TCPKeepAlive(d time.Duration) PoolOption {
	return func(o *poolOptions) { o.keepAlive = d }
}

// TCPUserTimeout sets TCP_USER_TIMEOUT on database connections (Linux; no
// effect elsewhere): data unacknowledged for d drops the connection, and
// so does a keepalive that has gone unanswered for d. Zero leaves the
// system's default. Default DefaultTCPUserTimeout.
func TCPUserTimeout(d time.Duration) PoolOption {
	return func(o *poolOptions) { o.userTimeout = d }
}

// IdlePing sets how often every idle connection of the pool is pinged; one
// that does not answer within the acquire timeout (or d, without one) is
// closed and leaves the pool at once. Zero turns the check off. Default
// DefaultIdlePing.
func IdlePing(d time.Duration) PoolOption {
	return func(o *poolOptions) { o.idlePing = d }
}

// TraceStatements makes a span of tp for every statement, connection
// acquisition and connect the pool runs under a sampled span of the
// caller's (otelpgx). Without it (the default) the pool has no tracer and
// tracing costs nothing. See traceStatements for what the spans record.
func TraceStatements(tp trace.TracerProvider) PoolOption {
	return func(o *poolOptions) { o.tracer = tp }
}

// NewPool returns a pool built from cfg, with every connection set up as
// the service runs it, so that tests run the same connections:
//
//   - ConfigurePool's per-connection settings;
//   - dialled with TCP keepalive and, on Linux, TCP_USER_TIMEOUT, so that
//     the kernel drops a connection to a host that vanished instead of
//     leaving a statement, or an export, waiting on it for ever;
//   - LimitAcquire, with AcquireTimeout;
//   - statement spans, with TraceStatements;
//   - an idle check (IdlePing): pgxpool pings a connection only when one is
//     acquired, and its own health check (every HealthCheckPeriod, a
//     minute) looks only at age and idle time. Without the check, idle
//     connections to a host that vanished stay in the pool until requests
//     meet them, each one then costing a request its acquire timeout, and
//     new connections (to the next host of a failover list) wait for them.
//
// The pool stays the caller's to close (Close), after the Store's Close.
func NewPool(ctx context.Context, cfg *pgxpool.Config, opts ...PoolOption) (*Pool, error) {
	o := poolOptions{keepAlive: DefaultTCPKeepAlive, userTimeout: DefaultTCPUserTimeout, idlePing: DefaultIdlePing}
	for _, opt := range opts {
		opt(&o)
	}
	cfg = cfg.Copy()
	ConfigurePool(cfg)
	if o.tracer != nil {
		traceStatements(cfg, o.tracer)
	}
	if o.acquireTimeout > 0 {
		LimitAcquire(cfg, o.acquireTimeout)
	}
	d := &net.Dialer{KeepAlive: -1} // off unless configured below
	if o.keepAlive > 0 {
		d.KeepAliveConfig = net.KeepAliveConfig{Enable: true, Idle: o.keepAlive, Interval: o.keepAlive, Count: keepAliveProbes}
	}
	if o.userTimeout > 0 {
		d.Control = func(network, _ string, c syscall.RawConn) error {
			if !strings.HasPrefix(network, "tcp") {
				return nil // a Unix socket: no TCP options
			}
			return setUserTimeout(c, o.userTimeout)
		}
	}
	cfg.ConnConfig.DialFunc = d.DialContext

	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, err
	}
	checkCtx, stop := context.WithCancel(context.Background())
	p := &Pool{Pool: pool, stop: stop, done: make(chan struct{})}
	if o.idlePing <= 0 {
		close(p.done)
		return p, nil
	}
	timeout := o.idlePing
	if o.acquireTimeout > 0 {
		timeout = o.acquireTimeout
	}
	go p.checkIdle(checkCtx, o.idlePing, timeout)
	return p, nil
}

// ConnConfig returns a copy of the settings the pool's connections are
// made with, its dialer (TCPKeepAlive, TCPUserTimeout) included, for a
// connection outside the pool: the change feed's replication connection,
// which the kernel must drop as it drops the pool's when the database's
// host vanishes. The config NewPool was given has no such dialer.
func (p *Pool) ConnConfig() *pgconn.Config {
	return p.Config().ConnConfig.Config.Copy()
}

// Close stops the idle check and closes the pool.
func (p *Pool) Close() {
	p.stop()
	<-p.done
	p.Pool.Close()
}

// checkIdle pings every idle connection each period until ctx ends. A
// connection that does not answer within timeout is taken out of the pool
// at once (Hijack): left to Release, pgx would keep counting it for up to
// 15 s while it tries to close it cleanly, and the pool would open no
// other connection in its place meanwhile.
func (p *Pool) checkIdle(ctx context.Context, every, timeout time.Duration) {
	defer close(p.done)
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		var wg sync.WaitGroup
		for _, c := range p.AcquireAllIdle(ctx) {
			wg.Go(func() {
				pingCtx, cancel := context.WithTimeout(ctx, timeout)
				err := c.Ping(pingCtx)
				cancel()
				if err == nil {
					c.Release()
					return
				}
				conn := c.Hijack()
				closeCtx, cancel := context.WithTimeout(context.Background(), timeout)
				defer cancel()
				_ = conn.Close(closeCtx) // already closed when the ping was cut
			})
		}
		wg.Wait()
	}
}
