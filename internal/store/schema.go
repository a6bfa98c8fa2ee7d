package store

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Dialect is the kind of server on the other end of the pool.
type Dialect string

// Dialects the store knows; they differ in how the table is sharded.
const (
	PostgreSQL  Dialect = "postgresql"
	YugabyteDB  Dialect = "yugabytedb"
	schemaLock  int64   = 0x7465737473 // "tests": the advisory lock key that serializes start-up DDL
	ddlAttempts         = 10
)

// DetectDialect tells YugabyteDB from PostgreSQL by the server_version the
// server reports at connect time (e.g. "15.12-YB-2025.2.8.0-b0"), without a query.
func DetectDialect(serverVersion string) Dialect {
	if strings.Contains(serverVersion, "-YB-") {
		return YugabyteDB
	}
	return PostgreSQL
}

// Migrate brings the schema to the latest step of migrations and checks
// that tables test and idempotency_keys have the columns and keys the store
// uses (test may have been made by SQLAlchemy, with a SERIAL id). Several
// instances may call it at once: the steps run under an advisory lock where
// the server has one and are retried on the errors concurrent DDL gives. It
// returns the server's dialect and version.
func (s *Store) Migrate(ctx context.Context) (Dialect, string, error) {
	return s.migrateTo(ctx, migrations)
}

// migrateTo is Migrate with the list of steps as a parameter, for tests
// that stop at an earlier step or add a failing one.
func (s *Store) migrateTo(ctx context.Context, steps []step) (Dialect, string, error) {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return "", "", s.classify(err)
	}
	// A no-op once lockSchema has taken the connection out of the pool.
	defer conn.Release()
	version := conn.Conn().PgConn().ParameterStatus("server_version")
	d := DetectDialect(version)

	unlock, err := s.lockSchema(ctx, conn)
	if err != nil {
		return d, version, err
	}
	err = s.applyWithRetry(ctx, conn, d, steps)
	unlock()
	if err != nil {
		return d, version, err
	}
	// Fail at start-up, not on the first request, if a table named test
	// exists without the columns or the unique key the store relies on.
	// The statement plans an insert that inserts nothing: it fails if a
	// column is missing or no unique key on name backs ON CONFLICT (name).
	const check = `
INSERT INTO test (name)
SELECT 'x'
WHERE false
ON CONFLICT (name) DO NOTHING
RETURNING ` + testColumns
	if _, err := conn.Exec(ctx, check); err != nil {
		return d, version, fmt.Errorf("table test is not usable: %w", s.classify(err))
	}
	const checkKeys = `
INSERT INTO idempotency_keys (key, fingerprint, claim, status, content_type, location, body, created_at)
SELECT 'x', '', '', 0, '', '', '', now()
WHERE false
ON CONFLICT (key) DO NOTHING`
	if _, err := conn.Exec(ctx, checkKeys); err != nil {
		return d, version, fmt.Errorf("table idempotency_keys is not usable: %w", s.classify(err))
	}
	// Grouped page queries pay on PostgreSQL only (see pagegroup.go).
	s.groups.on.Store(d == PostgreSQL && (s.dialect == "" || s.dialect == PostgreSQL))
	s.ready.Store(true)
	return d, version, nil
}

// lockSchema takes the advisory lock that serializes the steps between
// instances and returns the function that frees it. YugabyteDB before
// 2025.1 has no advisory locks (0A000): then nothing is locked and
// applyWithRetry's retries on concurrent-DDL errors do the serializing.
//
// If the lock call fails otherwise, the connection is closed, not returned
// to the pool: on YugabyteDB a pg_advisory_lock that answered an error can
// still have been granted (yugabyte-db#26105), and a pooled connection
// holding it would block every later start-up until it is closed.
func (s *Store) lockSchema(ctx context.Context, conn *pgxpool.Conn) (unlock func(), err error) {
	_, err = conn.Exec(ctx, `SELECT pg_advisory_lock($1)`, schemaLock)
	if err == nil {
		return func() {
			// A fresh context: the unlock must run even if ctx is done,
			// or the lock stays held on this pooled connection.
			_, _ = conn.Exec(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock($1)`, schemaLock)
		}, nil
	}
	if sqlstate(err) == pgerrcode.FeatureNotSupported {
		return func() {}, nil
	}
	c := conn.Hijack()
	_ = c.Close(context.WithoutCancel(ctx))
	return nil, fmt.Errorf("lock for schema: %w", s.classify(err))
}

// applyWithRetry applies the steps not yet recorded, starting over from the
// recorded version after an error concurrent DDL gives (another instance
// applying the same step without the lock, or YugabyteDB's catalog version
// mismatches), so a step another instance has meanwhile recorded is skipped.
func (s *Store) applyWithRetry(ctx context.Context, conn *pgxpool.Conn, d Dialect, steps []step) error {
	for attempt := 1; ; attempt++ {
		err := apply(ctx, conn.Conn(), d, steps)
		if err == nil {
			return nil
		}
		if !concurrentDDL(err) || attempt == ddlAttempts {
			return s.classify(err)
		}
		if err := sleep(ctx, backoff(attempt)); err != nil {
			return s.classify(err)
		}
	}
}

// apply creates the table of applied steps if it is missing and applies,
// in order, each step above the highest version it records.
//
// Each step runs in one transaction with the insert that records it
// (unless it must run outside one: then the insert follows it). On
// PostgreSQL DDL is transactional: a step that fails leaves neither its
// changes nor its version behind. On YugabyteDB 2025.2 DDL in a transaction
// block is transactional only with the early-access yb-tserver flag
// ysql_yb_ddl_transaction_block_enabled (off by default; on by default from
// the 2.29 preview series): without it each DDL statement commits on its
// own (DDL atomicity rolls back a failed statement, but not the statements
// before it). So every step must be safe to run again (IF NOT EXISTS and
// the like): a failure after part of a step then costs nothing, since the
// version is not recorded and the next start-up runs the step again.
func apply(ctx context.Context, conn *pgx.Conn, d Dialect, steps []step) error {
	const create = `
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (version)
)`
	if _, err := conn.Exec(ctx, create); err != nil {
		return fmt.Errorf("create schema_migrations: %w", err)
	}
	var applied int
	if err := conn.QueryRow(ctx, `SELECT coalesce(max(version), 0) FROM schema_migrations`).Scan(&applied); err != nil {
		return fmt.Errorf("read schema_migrations: %w", err)
	}
	// The insert fails (23505) if another instance recorded the step
	// first; applyWithRetry then starts over above that step.
	const record = `
INSERT INTO schema_migrations (version)
VALUES ($1)`
	for _, st := range steps {
		if st.version <= applied {
			continue
		}
		var err error
		if st.outsideTx {
			if err = st.run(ctx, conn, d); err == nil {
				_, err = conn.Exec(ctx, record, st.version)
			}
		} else {
			err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
				if err := st.run(ctx, tx, d); err != nil {
					return err
				}
				_, err := tx.Exec(ctx, record, st.version)
				return err
			})
		}
		if err != nil {
			return fmt.Errorf("schema step %d (%s): %w", st.version, st.name, err)
		}
	}
	return nil
}

// concurrentDDL reports the errors two sessions creating the same table at
// once can get: on PostgreSQL a unique violation in pg_type (or in
// schema_migrations) or a duplicate table, on YugabyteDB also serialization
// failures and catalog version mismatches (reported as 40001 or XX000).
func concurrentDDL(err error) bool {
	switch sqlstate(err) {
	case pgerrcode.UniqueViolation,
		pgerrcode.DuplicateTable,
		pgerrcode.DuplicateObject,
		pgerrcode.SerializationFailure,
		pgerrcode.DeadlockDetected,
		pgerrcode.InternalError:
		return true
	}
	return false
}
