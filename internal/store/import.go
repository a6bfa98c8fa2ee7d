package store

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// ImportSource yields the rows of an import one at a time, as it reads
// them, so that an import of any size is held one row at a time. Next
// advances (false at the end or on an error); Row is the current row's
// line in the file and its name; Err is what stopped Next early, or what
// the whole file turned out to have wrong once it was read: an import
// that ends with an error stores nothing.
type ImportSource interface {
	Next() bool
	Row() (line int64, name string)
	Err() error
}

// LineConflictError is the ErrConflict of an import: the first line whose
// name is already stored, or repeats the name of an earlier line
// (FirstLine, 0 when the name was taken before the import).
type LineConflictError struct {
	Line      int64
	FirstLine int64
}

func (e *LineConflictError) Error() string {
	if e.FirstLine > 0 {
		return "line " + strconv.FormatInt(e.Line, 10) + " repeats the name of line " + strconv.FormatInt(e.FirstLine, 10)
	}
	return "the name of line " + strconv.FormatInt(e.Line, 10) + " is already taken"
}

func (e *LineConflictError) Unwrap() error { return ErrConflict }

// Import inserts every row of src in one transaction, all or nothing, and
// returns how many it created. With created non-nil it then calls created
// with each new row, in the order of the lines (ids ascending), after the
// commit: what it is told is stored. An error from created stops it; the
// rows stay stored.
//
// The rows are copied (COPY, the fastest way in) into a temporary table
// with their line numbers, and moved into test by one INSERT ... SELECT in
// line order: a taken or repeated name then fails that statement, and the
// staging table still holds the lines to say which one. Nothing is kept in
// memory but the row at hand. On YugabyteDB, COPY would commit every
// 20,000 rows unless yb_default_copy_from_rows_per_transaction is 0; the
// staging table is temporary (not in DocDB) and the rows reach test only
// through the INSERT, but the setting is cleared for the transaction all
// the same, so that no COPY of this import ever commits on its own.
//
// Unlike the other writes, an import is not retried: its body has been
// read. A serialization failure is ErrUnavailable (503) like any transient
// error, and the client sends the file again.
func (s *Store) Import(ctx context.Context, src ImportSource, created func(Test) error) (int64, error) {
	if !s.ready.Load() {
		return 0, errNotMigrated
	}
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return 0, fmt.Errorf("import: %w", s.classify(err))
	}
	// A connection whose session may still hold the import's temporary
	// table of created rows (their stream failed) is closed, not returned
	// to the pool. Any other failure rolled the transaction back, and the
	// tables with it (the pool closes a connection left in a transaction).
	clean := true
	defer func() {
		if clean {
			conn.Release()
			return
		}
		closeCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		defer cancel()
		_ = conn.Hijack().Close(closeCtx)
	}()

	n, err := s.importRows(ctx, conn, src, created != nil)
	if err != nil {
		switch {
		case errors.As(err, new(*LineConflictError)):
		case src.Err() != nil:
			// The file's own error (malformed, invalid, too large), which
			// aborted the COPY: the caller's to report.
			return 0, src.Err()
		default:
			err = s.classify(err)
		}
		return 0, fmt.Errorf("import: %w", err)
	}
	if created != nil {
		if err := streamCreated(ctx, conn, created); err != nil {
			clean = false
			return n, fmt.Errorf("import: read the created rows: %w", s.classify(err))
		}
	}
	return n, nil
}

// Statements of an import, in the order it runs them.
const (
	// copyAtomic stops YugabyteDB's COPY from committing every 20,000
	// rows (its default); only sent to YugabyteDB, which has it.
	copyAtomic = `SET LOCAL yb_default_copy_from_rows_per_transaction = 0`

	createStaging = `
CREATE TEMPORARY TABLE import_rows (
    line bigint NOT NULL,
    name text   NOT NULL
) ON COMMIT DROP`

	// createCreated keeps the ids of the new rows past the commit, so
	// that they are answered only once they are stored.
	createCreated = `
CREATE TEMPORARY TABLE import_created (
    id   integer NOT NULL,
    name text    NOT NULL
)`

	// moveRows inserts the staged rows in line order, so that the
	// sequence hands out ids ascending with the lines.
	moveRows = `
INSERT INTO test (name)
SELECT name
FROM import_rows
ORDER BY line`

	// moveRowsKeep is moveRows keeping the new rows in import_created.
	moveRowsKeep = `
WITH created AS (
    INSERT INTO test (name)
    SELECT name
    FROM import_rows
    ORDER BY line
    RETURNING ` + testColumns + `
)
INSERT INTO import_created (` + testColumns + `)
SELECT ` + testColumns + `
FROM created`

	// firstConflict finds, after moveRows failed on a unique violation,
	// the first line whose name is stored or repeats an earlier line's:
	// the line, and the first line of its name (itself when the name was
	// taken before).
	firstConflict = `
SELECT line,
       first_line
FROM (
    SELECT line,
           name,
           min(line) OVER (PARTITION BY name) AS first_line
    FROM import_rows
) staged
WHERE line > first_line
   OR EXISTS (SELECT 1 FROM test WHERE test.name = staged.name)
ORDER BY line
LIMIT 1`

	listCreated = `
SELECT ` + testColumns + `
FROM import_created
ORDER BY id`

	dropCreated = `DROP TABLE import_created`
)

// importRows runs the import's transaction on conn.
func (s *Store) importRows(ctx context.Context, conn *pgxpool.Conn, src ImportSource, keep bool) (int64, error) {
	var n int64
	err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		if DetectDialect(conn.Conn().PgConn().ParameterStatus("server_version")) == YugabyteDB {
			if _, err := tx.Exec(ctx, copyAtomic); err != nil {
				return err
			}
		}
		if _, err := tx.Exec(ctx, createStaging); err != nil {
			return err
		}
		copied, err := tx.CopyFrom(ctx, pgx.Identifier{"import_rows"}, []string{"line", "name"}, &copySource{src: src, vals: make([]any, 2)})
		if err != nil {
			return err
		}
		if err := src.Err(); err != nil {
			return err
		}
		move := moveRows
		if keep {
			if _, err := tx.Exec(ctx, createCreated); err != nil {
				return err
			}
			move = moveRowsKeep
		}
		// In a savepoint, so that the staged rows survive a unique
		// violation to say which line caused it.
		var inserted int64
		err = pgx.BeginFunc(ctx, tx, func(sp pgx.Tx) error {
			tag, err := sp.Exec(ctx, move)
			inserted = tag.RowsAffected()
			return err
		})
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "23505" {
			return conflictLine(ctx, tx, err)
		}
		if err != nil {
			return err
		}
		if inserted != copied {
			// Never answer for rows that are not there (a trigger, say,
			// dropped some).
			return fmt.Errorf("inserted %d rows of %d", inserted, copied)
		}
		n = inserted
		return nil
	})
	return n, err
}

// conflictLine turns the unique violation err of moveRows into the line
// at fault. With no line at fault the violation was of the primary key:
// an id from the sequence that a row inserted with an explicit id already
// had. The sequence has moved on, so sending the file again succeeds: a
// 503, not a 409.
func conflictLine(ctx context.Context, tx pgx.Tx, err error) error {
	var c LineConflictError
	qerr := tx.QueryRow(ctx, firstConflict).Scan(&c.Line, &c.FirstLine)
	if errors.Is(qerr, pgx.ErrNoRows) {
		return fmt.Errorf("%w: id collision: %w", ErrUnavailable, err)
	}
	if qerr != nil {
		return qerr
	}
	if c.FirstLine == c.Line {
		c.FirstLine = 0
	}
	return &c
}

// streamCreated calls created with each row import_created kept, then
// drops the table.
func streamCreated(ctx context.Context, conn *pgxpool.Conn, created func(Test) error) error {
	rows, _ := conn.Query(ctx, listCreated)
	var t Test
	if _, err := pgx.ForEachRow(rows, t.fields(), func() error { return created(t) }); err != nil {
		return err
	}
	_, err := conn.Exec(ctx, dropCreated)
	return err
}

// copySource is an ImportSource as pgx's CopyFromSource. pgx encodes the
// values of a row before it asks for the next, so one slice serves them all.
type copySource struct {
	src  ImportSource
	vals []any
}

func (c *copySource) Next() bool { return c.src.Next() }

func (c *copySource) Values() ([]any, error) {
	line, name := c.src.Row()
	c.vals[0], c.vals[1] = line, name
	return c.vals, nil
}

func (c *copySource) Err() error { return c.src.Err() }
