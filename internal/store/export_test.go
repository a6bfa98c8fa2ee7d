package store

import (
	"context"
	"errors"
	"time"
)

// Group-commit internals for the tests in package store_test.
const (
	MaxBatchSize = maxBatchSize
	StartFlights = startFlights
)

// AllowFlights lets n flights run from now on, whatever the batches'
// times, for tests of several flights at once.
func (s *Store) AllowFlights(n int) {
	s.creates.mu.Lock()
	defer s.creates.mu.Unlock()
	s.creates.ctl.allowed = n
	s.creates.ctl.fixed = true
}

// AdaptFlights hands the number of flights back to the flight control.
func (s *Store) AdaptFlights() {
	s.creates.mu.Lock()
	defer s.creates.mu.Unlock()
	s.creates.ctl.fixed = false
}

// KeptFlights is the number of flights the flight control allows now.
func (s *Store) KeptFlights() int {
	s.creates.mu.Lock()
	defer s.creates.mu.Unlock()
	return s.creates.ctl.allowed
}

// MaxCreateFlights is the most flights the store may run.
func (s *Store) MaxCreateFlights() int { return s.creates.maxFlights }

// Queued returns how many creates wait in the queue, not yet taken into a batch.
func (s *Store) Queued() int {
	s.creates.mu.Lock()
	defer s.creates.mu.Unlock()
	return len(s.creates.queue)
}

// PageReadFunc is the query List's coalescing runs: a page, and how long
// its statement took.
type PageReadFunc = func(ctx context.Context, after int64, limit int) ([]Test, time.Duration, error)

// WrapPageRead wraps that query, for tests that hold or watch it.
func (s *Store) WrapPageRead(wrap func(next PageReadFunc) PageReadFunc) {
	s.pages.read = wrap(s.pages.read)
}

// PageWaiting returns how many Lists of the page wait for its next query.
func (s *Store) PageWaiting(after int64, limit int) int {
	s.pages.mu.Lock()
	defer s.pages.mu.Unlock()
	if f := s.pages.flights[pageKey{after, limit}]; f != nil && f.next != nil {
		return int(f.next.waiting.Load())
	}
	return 0
}

// CollectCreated is collectCreated, for a test of rows out of input order.
var CollectCreated = collectCreated

// PageFlights returns how many pages have a query running.
func (s *Store) PageFlights() int {
	s.pages.mu.Lock()
	defer s.pages.mu.Unlock()
	return len(s.pages.flights)
}

// PageKeyFlights returns how many queries of one page may run at once now,
// from the page reader's floor.
func (s *Store) PageKeyFlights() int {
	s.pages.mu.Lock()
	defer s.pages.mu.Unlock()
	return max(1, s.pages.allowed)
}

// PagesQueued returns how many page queries wait for a grouped statement.
func (s *Store) PagesQueued() int {
	s.groups.mu.Lock()
	defer s.groups.mu.Unlock()
	return len(s.groups.queue)
}

// ForceDialect makes the store take dialect d's path whatever server it
// talks to, for tests on PostgreSQL of what it does on YugabyteDB.
func (s *Store) ForceDialect(d Dialect) {
	s.dialect = d
	if d != PostgreSQL {
		s.groups.on.Store(false) // as Migrate leaves it on YugabyteDB
	}
}

// MaxGroupPages is the most pages one page statement holds.
const MaxGroupPages = maxGroupPages

// Transient reports whether the store answers err with ErrUnavailable.
func Transient(err error) bool { return errors.Is((&Store{}).classify(err), ErrUnavailable) }

// Retryable is retryable; RetryableCommit is retryable for an error of a
// statement that commits.
func Retryable(err error) bool       { return retryable(err) }
func RetryableCommit(err error) bool { return retryable(commitErr{err}) }

// FailoverMessages are the XX000 substrings sqlstate.go knows.
func FailoverMessages() []string {
	var out []string
	for _, m := range failoverMessages {
		out = append(out, m.substring)
	}
	return out
}

// Step is a schema step, for tests that build their own list.
type Step = step

// Migrations returns the schema's steps, oldest first.
func Migrations() []Step { return migrations }

// NewStep returns a step that runs sqls in order, in one transaction.
func NewStep(version int, name string, sqls ...string) Step {
	return step{version: version, name: name, run: statements(sqls...)}
}

// MigrateWith is Migrate with steps instead of the package's list.
func (s *Store) MigrateWith(ctx context.Context, steps []Step) (Dialect, string, error) {
	return s.migrateTo(ctx, steps)
}

// ApplySteps applies steps under the schema lock as Migrate does, without
// Migrate's checks of the tables, so a test can leave a database at an
// earlier step.
func (s *Store) ApplySteps(ctx context.Context, steps []Step) error {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return err
	}
	defer conn.Release()
	unlock, err := s.lockSchema(ctx, conn)
	if err != nil {
		return err
	}
	defer unlock()
	return s.applyWithRetry(ctx, conn, DetectDialect(conn.Conn().PgConn().ParameterStatus("server_version")), steps)
}

// RunRangeIndexStep runs the hash-sharding step as it runs on dialect d.
func (s *Store) RunRangeIndexStep(ctx context.Context, d Dialect) error {
	return rangeIndexOnHashKey(ctx, s.pool, d)
}

// EnsureRangeIndex creates the hash-sharding step's index, or builds an
// invalid one again.
func (s *Store) EnsureRangeIndex(ctx context.Context) error {
	return ensureRangeIndex(ctx, s.pool)
}

// PurgeBatch is how many keys PurgeKeys deletes per statement.
const PurgeBatch = purgeBatch

// Version returns the step's version.
func (s step) Version() int { return s.version }

// SchemaLock is the advisory lock key Migrate takes.
const SchemaLock = schemaLock

// PurgeChangesBatch is how many changes PurgeChanges deletes per statement.
const PurgeChangesBatch = purgeChangesBatch

// ParseSnapshot makes the Snapshot FeedSnapshot would from
// pg_current_snapshot's text and a WAL position.
func ParseSnapshot(snap, lsn string) (Snapshot, error) {
	sn := Snapshot{exact: true}
	err := sn.parse(snap, lsn)
	return sn, err
}

// RecordingIdleTimeout is recordingIdleTimeout, for the fault tests' bounds.
func RecordingIdleTimeout(consumeTimeout time.Duration) time.Duration {
	return recordingIdleTimeout(consumeTimeout)
}

// StreamEnded is what the consumer makes of the end of slot's stream: err
// as ErrSlotLost if YugabyteDB said the slot expired, which also marks the
// slot for the next ConsumeChanges to drop and make again.
func (s *Store) StreamEnded(slot string, err error) error { return s.streamEnded(slot, err) }
