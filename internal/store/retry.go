package store

import (
	"context"
	"errors"
	"math/rand/v2"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Retry policy for transient failures: capped exponential backoff with full
// jitter, so replicas retrying at once do not collide again in lockstep.
const (
	retryAttempts = 5
	retryBase     = 10 * time.Millisecond
	retryCap      = 500 * time.Millisecond
)

// retry runs op until it succeeds, fails for good, or the attempts run out.
// It retries only what is safe to run twice (see retryable).
func retry(ctx context.Context, op func() error) error {
	for attempt := 1; ; attempt++ {
		err := op()
		if err == nil || attempt == retryAttempts || !retryable(err) {
			return err
		}
		if sleep(ctx, backoff(attempt)) != nil {
			return err
		}
	}
}

// final marks an error as not to be retried whatever its cause, for
// example because part of a result was already handed to the caller.
type final struct{ error }

func (f final) Unwrap() error { return f.error }

// commitErr marks an error of a statement that commits a write: COMMIT, or
// a write outside a transaction block, which commits as it ends. Unless
// the error itself says the transaction was rolled back, the write may
// have committed: a timed-out commit RPC on YugabyteDB says nothing about
// the outcome, and YugabyteDB's docs advise against retrying commit and
// auto-commit statements on such errors ("Transaction retries in YSQL").
type commitErr struct{ error }

func (c commitErr) Unwrap() error { return c.error }

// retryable reports whether running the failed op again is safe and may
// succeed: when nothing reached the server, or when the server answered
// a passing failure (sqlstate.go) of a statement whose transaction has not
// committed: a read, a statement inside a transaction before its COMMIT
// (the failure aborts the transaction), or a commit the server says it
// rolled back. A connection lost after a statement was sent is not
// retried: the write may have committed.
func retryable(err error) bool {
	if errors.As(err, new(final)) {
		return false
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		f := faultOf(pgErr)
		if errors.As(err, new(commitErr)) {
			return f.again && f.rolledBack
		}
		return f.again
	}
	return pgconn.SafeToRetry(err)
}

// inTx runs fn in a transaction on pool, like pgx.BeginFunc, but marks an
// error of the COMMIT as a commitErr.
func inTx(ctx context.Context, pool *pgxpool.Pool, fn func(pgx.Tx) error) error {
	tx, err := pool.Begin(ctx)
	if err != nil {
		return err
	}
	if err := fn(tx); err != nil {
		_ = tx.Rollback(ctx)
		return err
	}
	if err := tx.Commit(ctx); err != nil {
		return commitErr{err}
	}
	return nil
}

// backoff returns a random wait in [1ms, min(cap, base*2^(attempt-1))].
func backoff(attempt int) time.Duration {
	d := retryCap
	if attempt < 10 {
		d = min(retryCap, retryBase<<(attempt-1))
	}
	return rand.N(d) + time.Millisecond
}

// sleep waits for d or until ctx is done, whichever comes first.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
