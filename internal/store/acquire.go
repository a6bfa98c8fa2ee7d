package store

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/multitracer"
	"github.com/jackc/pgx/v5/pgxpool"
)

// LimitAcquire makes every use of a pool built from cfg wait at most d for a
// connection; then the call fails, and the Store reports ErrUnavailable
// (503), instead of queueing until the request's own deadline. With more
// requests than connections and a slow database, requests then give up at d
// rather than piling up for the whole request timeout.
//
// pgxpool has no such option. Its acquire tracer is the one hook that runs
// around every acquisition, whichever method (Query, Begin, Ping...) makes
// it, and the context TraceAcquireStart returns is the one the acquisition
// waits on, while the statement that follows still runs on the caller's
// context. So the deadline bounds the wait for a connection and nothing else.
func LimitAcquire(cfg *pgxpool.Config, d time.Duration) {
	limit := acquireLimit{timeout: d}
	if cfg.ConnConfig.Tracer == nil {
		cfg.ConnConfig.Tracer = limit
		return
	}
	cfg.ConnConfig.Tracer = multitracer.New(cfg.ConnConfig.Tracer, limit)
}

type acquireLimit struct{ timeout time.Duration }

type acquireCancelKey struct{}

func (l acquireLimit) TraceAcquireStart(ctx context.Context, _ *pgxpool.Pool, _ pgxpool.TraceAcquireStartData) context.Context {
	// The acquisition then fails with context.DeadlineExceeded, which
	// classify, like any failure to reach the server, reports as
	// ErrUnavailable.
	ctx, cancel := context.WithTimeout(ctx, l.timeout)
	return context.WithValue(ctx, acquireCancelKey{}, cancel)
}

func (acquireLimit) TraceAcquireEnd(ctx context.Context, _ *pgxpool.Pool, _ pgxpool.TraceAcquireEndData) {
	if cancel, ok := ctx.Value(acquireCancelKey{}).(context.CancelFunc); ok {
		cancel()
	}
}

// The acquire tracer must be a pgx.QueryTracer to be set as one; it traces
// no query.
func (acquireLimit) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	return ctx
}

func (acquireLimit) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}
