package store

import (
	"context"
	"errors"
	"math/rand/v2"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// Retry policy for transient failures: capped exponential backoff with full
// jitter, so replicas retrying at once do not collide again in lockstep.
const (
	retryAttempts = 5
	retryBase     = 10 * time.Millisecond
	retryCap      = 500 * time.Millisecond
)

// retry runs op until it succeeds, fails for good, or the attempts run out.
// It retries only what is safe to run twice: a serialization failure or a
// deadlock (the server rolled the transaction back) and a failure where
// nothing reached the server. A connection lost after a statement was sent
// is not retried: the write may have committed.
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

func retryable(err error) bool {
	if errors.As(err, new(final)) {
		return false
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		// 23505 can only be a primary-key collision here (name conflicts
		// are ON CONFLICT DO NOTHING): a row inserted with an explicit id
		// ahead of the sequence. The failed insert consumed that sequence
		// value, so running it again takes the next one.
		return pgErr.Code == "40001" || pgErr.Code == "40P01" || pgErr.Code == "23505"
	}
	return pgconn.SafeToRetry(err)
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
