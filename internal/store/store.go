// Package store keeps the rows of table test in a PostgreSQL-compatible
// database (YugabyteDB YSQL in production, PostgreSQL in development).
// It owns the row type, the SQL, the schema and the errors callers see.
package store

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Test is one row of table test (see row.go for its columns and scan).
// The API writes its JSON by hand (internal/api/jsonrow.go); the json tags
// are only the oracle that writer's tests compare it with.
type Test struct {
	ID   int32  `json:"id"`
	Name string `json:"name"`
}

// Errors returned by Store methods, wrapped with %w; callers test them with errors.Is.
var (
	// ErrConflict means a name is already taken (stored, or repeated in one batch).
	ErrConflict = errors.New("name already taken")
	// ErrNotFound means no row has the requested id.
	ErrNotFound = errors.New("not found")
	// ErrUnavailable means the database could not be reached or asked us to
	// come back later; the request may succeed if retried.
	ErrUnavailable = errors.New("database unavailable")
)

// Store reads and writes table test through a connection pool. It answers
// ErrUnavailable until Migrate has succeeded, so a service that starts
// before its database serves 503s, not errors about a missing table.
type Store struct {
	pool           *pgxpool.Pool
	ready          atomic.Bool
	creates        batcher               // group commit for Create
	pages          pageReader            // coalesced reads for List
	groups         pageGroup             // grouped page queries (pages' read)
	onError        func(sqlstate string) // see ObserveErrors; nil means nobody listens
	onChanges      func()                // see OnChanges; nil means nobody listens
	consumeTimeout time.Duration         // see ConsumeTimeout; 0 means no bound
	expiredSlots   sync.Map              // slot names YugabyteDB said expired (see streamEnded), until made again
	dialect        Dialect               // forces dialectOf's answer; "" (always, outside tests) reads it from the connection
}

// New returns a Store using pool. The pool stays the caller's to close,
// after Close.
func New(pool *pgxpool.Pool, opts ...Option) *Store {
	s := &Store{pool: pool}
	s.creates.insert = s.insertBatch
	s.creates.classify = s.classify
	s.creates.maxFlights = maxCreateFlights(pool)
	s.creates.ctl = newFlightControl(time.Now())
	s.groups.one = s.list
	s.groups.many = s.listMany
	s.groups.maxFlights = maxCreateFlights(pool)
	s.pages.read = s.groups.read
	s.pages.maxFlights = maxCreateFlights(pool)
	s.pages.classify = s.classify
	for _, o := range opts {
		o(s)
	}
	return s
}

// ObserveErrors has the store call fn with the SQLSTATE of every database
// error it returns ("" for errors with none: the server was unreachable or
// too slow), so that metrics can count them without the store knowing about
// metrics. A client that went away is not a database error and is not
// reported. fn must be safe for concurrent use.
func ObserveErrors(fn func(sqlstate string)) Option {
	return func(s *Store) { s.onError = fn }
}

// errNotMigrated is returned before Migrate has succeeded.
var errNotMigrated = fmt.Errorf("%w: schema not ready yet", ErrUnavailable)

// Ping checks that the schema is in place and a connection answers.
func (s *Store) Ping(ctx context.Context) error {
	if !s.ready.Load() {
		return errNotMigrated
	}
	return s.classify(s.pool.Ping(ctx))
}

// classify maps driver and server errors to the package's sentinels, keeping
// the original error in the chain for logs, and reports every database
// error's SQLSTATE to ObserveErrors. Which server errors are transient is
// decided in sqlstate.go.
func (s *Store) classify(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, context.Canceled) {
		// The client went away; nothing to report to anyone.
		return err
	}
	var pgErr *pgconn.PgError
	isPg := errors.As(err, &pgErr)
	if s.onError != nil {
		s.onError(sqlstate(err))
	}
	if isPg {
		if faultOf(pgErr).transient {
			return fmt.Errorf("%w: %w", ErrUnavailable, err)
		}
		return err
	}
	// Anything that is not an answer from the server (refused or reset
	// connections, timeouts, a pool that could not connect) means the
	// database is out of reach right now, not that the request was wrong.
	return fmt.Errorf("%w: %w", ErrUnavailable, err)
}
