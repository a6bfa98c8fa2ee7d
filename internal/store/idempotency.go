package store

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Errors of CreateOnce, besides those of CreateMany.
var (
	// ErrKeyInFlight means the first request with this idempotency key is
	// still running.
	ErrKeyInFlight = errors.New("idempotency key in flight")
	// ErrKeyReused means the idempotency key was first used with a
	// different request.
	ErrKeyReused = errors.New("idempotency key used with another request")
)

// KeyedCreate is a create sent with an idempotency key.
type KeyedCreate struct {
	Key         string   // the client's key
	Fingerprint []byte   // identifies the request; a retry must bring the same
	Names       []string // the rows to create, as for CreateMany
	// TTL is how long the key is kept: after it the key is free again.
	TTL time.Duration
	// StaleAfter is how long the first request may run; a key still in
	// flight after it belongs to a request that crashed or lost its
	// database, and the next request with the key takes it over.
	StaleAfter time.Duration
}

// Response is the answer kept for a key and given again to every retry.
// The store does not look inside it.
type Response struct {
	Status      int
	ContentType string
	Location    string
	Body        []byte
}

// releaseTimeout bounds freeing a key after a failure, which runs even when
// the request's own context is done.
const releaseTimeout = 2 * time.Second

// CreateOnce creates k.Names at most once per key, all or nothing like
// CreateMany, and returns the answer to give the client.
//
// The first request with a key claims it (a row marked in flight, committed
// at once so that other replicas see it), then, in one transaction, inserts
// the rows and keeps the Response that answer makes of the outcome: the
// rows, or ErrConflict, both final. A later request with the key and the
// same fingerprint gets the kept Response and creates nothing; with another
// fingerprint ErrKeyReused; while the first is in flight ErrKeyInFlight.
// Any other failure keeps nothing and frees the key, so a retry runs afresh.
func (s *Store) CreateOnce(ctx context.Context, k KeyedCreate, answer func([]Test, error) Response) (Response, error) {
	return s.once(ctx, keyed{k.Key, k.Fingerprint, k.TTL, k.StaleAfter}, func(tx pgx.Tx) (Response, error) {
		// A savepoint: a taken name undoes the rows, and the
		// transaction goes on to keep the 409.
		var created []Test
		err := pgx.BeginFunc(ctx, tx, func(sp pgx.Tx) (err error) {
			created, err = insertAll(ctx, sp, k.Names)
			return err
		})
		if err != nil && !errors.Is(err, ErrConflict) {
			return Response{}, err
		}
		return answer(created, err), nil
	})
}

// KeyedRename is a rename sent with an idempotency key.
type KeyedRename struct {
	Key         string // the client's key
	Fingerprint []byte // identifies the request; a retry must bring the same
	ID          int64
	Name        string
	Match       Match // as for Rename
	TTL         time.Duration
	StaleAfter  time.Duration // as for KeyedCreate
}

// RenameOnce renames at most once per key, as CreateOnce creates: the
// renamed row, ErrConflict, ErrNotFound and ErrPreconditionFailed are final
// answers, kept for every retry; any other failure frees the key.
func (s *Store) RenameOnce(ctx context.Context, k KeyedRename, answer func(Test, error) Response) (Response, error) {
	return s.once(ctx, keyed{k.Key, k.Fingerprint, k.TTL, k.StaleAfter}, func(tx pgx.Tx) (Response, error) {
		var t Test
		err := pgx.BeginFunc(ctx, tx, func(sp pgx.Tx) (err error) {
			t, err = renameIn(ctx, sp, k.ID, k.Name, k.Match)
			return err
		})
		if err != nil && !errors.Is(err, ErrConflict) && !errors.Is(err, ErrNotFound) && !errors.Is(err, ErrPreconditionFailed) {
			return Response{}, err
		}
		return answer(t, err), nil
	})
}

// keyed is what claiming a key needs of any keyed request.
type keyed struct {
	key         string
	fingerprint []byte
	ttl         time.Duration
	staleAfter  time.Duration
}

// once runs a keyed request at most once per key: it claims the key, then
// runs run in a transaction that also keeps the Response run returns. run
// must leave tx usable when it returns a Response (a failure that is a
// final answer goes in a savepoint), and return an error only for failures
// that keep nothing.
func (s *Store) once(ctx context.Context, k keyed, run func(tx pgx.Tx) (Response, error)) (Response, error) {
	if !s.ready.Load() {
		return Response{}, errNotMigrated
	}
	claim, kept, err := s.claimKey(ctx, k)
	if err != nil || claim == nil {
		return kept, err
	}
	resp, err := s.runClaimed(ctx, k, claim, run)
	if err != nil {
		if ctx.Err() != nil {
			// The request's time is up: answer now, and free the key
			// just after, rather than keep the client past its deadline
			// for a database that may not answer the delete either. A
			// retry meanwhile finds the key in flight (409, Retry-After).
			go s.releaseKey(ctx, k.key, claim)
		} else {
			s.releaseKey(ctx, k.key, claim)
		}
		return Response{}, err
	}
	return resp, nil
}

// releaseKey frees a key claimed by a request that failed, so that a retry
// runs afresh. If the transaction did commit after all (its COMMIT was
// sent when the connection broke), the row has its answer and the status
// condition makes this a no-op. If the delete cannot run, the key is taken
// over once it is stale.
func (s *Store) releaseKey(ctx context.Context, key string, claim []byte) {
	const q = `
DELETE FROM idempotency_keys
WHERE key = $1
  AND claim = $2
  AND status IS NULL`
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), releaseTimeout)
	defer cancel()
	_, _ = s.pool.Exec(rctx, q, key, claim)
}

// claimKey claims k.Key and returns the claim, a fresh random value that
// the final update must still find; or, when the key is taken, no claim
// and the kept Response (or the reason there is none).
func (s *Store) claimKey(ctx context.Context, k keyed) ([]byte, Response, error) {
	claim := []byte(rand.Text())
	// A key that is expired, or in flight for longer than a request can
	// run, is taken over; any other existing key leaves the row as it is
	// and returns nothing.
	const q = `
INSERT INTO idempotency_keys AS k (key, fingerprint, claim)
VALUES ($1, $2, $3)
ON CONFLICT (key) DO UPDATE
SET fingerprint  = excluded.fingerprint,
    claim        = excluded.claim,
    created_at   = now(),
    status       = NULL,
    content_type = NULL,
    location     = NULL,
    body         = NULL
WHERE k.created_at < now() - make_interval(secs => $4)
   OR (k.status IS NULL AND k.created_at < now() - make_interval(secs => $5))
RETURNING claim`
	const kept = `
SELECT fingerprint,
       status,
       coalesce(content_type, ''),
       coalesce(location, ''),
       body
FROM idempotency_keys
WHERE key = $1`
	// The row can vanish between the two statements (released after a
	// failure, or purged): then claim again.
	for range 3 {
		err := retry(ctx, func() error {
			err := s.pool.QueryRow(ctx, q, k.key, k.fingerprint, claim, k.ttl.Seconds(), k.staleAfter.Seconds()).Scan(&claim)
			if err != nil && !errors.Is(err, pgx.ErrNoRows) {
				// A write outside a transaction block: it commits as it
				// ends, so a failure may hide a claim that did commit.
				return commitErr{err}
			}
			return err
		})
		if err == nil {
			return claim, Response{}, nil
		}
		if !errors.Is(err, pgx.ErrNoRows) {
			return nil, Response{}, fmt.Errorf("claim idempotency key: %w", s.classify(err))
		}
		var (
			fingerprint []byte
			status      *int32
			r           Response
		)
		err = retry(ctx, func() error {
			return s.pool.QueryRow(ctx, kept, k.key).Scan(&fingerprint, &status, &r.ContentType, &r.Location, &r.Body)
		})
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			continue
		case err != nil:
			return nil, Response{}, fmt.Errorf("read idempotency key: %w", s.classify(err))
		case !bytes.Equal(fingerprint, k.fingerprint):
			return nil, Response{}, ErrKeyReused
		case status == nil:
			return nil, Response{}, ErrKeyInFlight
		}
		r.Status = int(*status)
		return nil, r, nil
	}
	return nil, Response{}, fmt.Errorf("%w: idempotency key claimed and released repeatedly", ErrUnavailable)
}

// errClaimLost means a later request took the key over as stale while this
// one was still running: this one must not commit.
var errClaimLost = fmt.Errorf("%w: idempotency key taken over by a later request", ErrUnavailable)

// runClaimed runs a claimed request and keeps its answer in one transaction.
func (s *Store) runClaimed(ctx context.Context, k keyed, claim []byte, run func(tx pgx.Tx) (Response, error)) (Response, error) {
	const keep = `
UPDATE idempotency_keys
SET status       = $3,
    content_type = $4,
    location     = $5,
    body         = $6
WHERE key = $1
  AND claim = $2`
	var resp Response
	err := retry(ctx, func() error {
		return inTx(ctx, s.pool, func(tx pgx.Tx) (err error) {
			resp, err = run(tx)
			if err != nil {
				return err
			}
			tag, err := tx.Exec(ctx, keep, k.key, claim, resp.Status, resp.ContentType, resp.Location, resp.Body)
			if err != nil {
				return err
			}
			if tag.RowsAffected() == 0 {
				return errClaimLost
			}
			return nil
		})
	})
	if errors.Is(err, errClaimLost) {
		return Response{}, err
	}
	if err != nil {
		return Response{}, fmt.Errorf("request with idempotency key: %w", s.classify(err))
	}
	return resp, nil
}

// purgeBatch is how many keys PurgeKeys deletes per statement.
const purgeBatch = 1000

// PurgeKeys deletes the idempotency keys older than ttl, which CreateOnce
// already treats as absent, and returns how many it deleted.
//
// It deletes them purgeBatch at a time, oldest first, each batch its own
// statement and so its own transaction: on YugabyteDB one DELETE of every
// expired key would be a single distributed transaction over the whole
// table, holding its locks (and memory) for as long as it runs. A key taken
// over meanwhile (created_at set anew) no longer matches the outer
// condition, which the server checks again on the row it deletes.
func (s *Store) PurgeKeys(ctx context.Context, ttl time.Duration) (int64, error) {
	if !s.ready.Load() {
		return 0, errNotMigrated
	}
	const q = `
DELETE FROM idempotency_keys
WHERE created_at < now() - make_interval(secs => $1)
  AND key IN (
    SELECT key
    FROM idempotency_keys
    WHERE created_at < now() - make_interval(secs => $1)
    ORDER BY created_at
    LIMIT $2)`
	var deleted int64
	for {
		tag, err := s.pool.Exec(ctx, q, ttl.Seconds(), purgeBatch)
		if err != nil {
			return deleted, fmt.Errorf("purge idempotency keys: %w", s.classify(err))
		}
		deleted += tag.RowsAffected()
		if tag.RowsAffected() < purgeBatch {
			return deleted, nil
		}
	}
}
