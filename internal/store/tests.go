package store

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math"
	"slices"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
)

// Create inserts one row named name and returns it with its generated id.
// A name already stored gives ErrConflict. Concurrent creates share one
// statement and one commit (see batch.go); each is answered only after its
// row has committed, and only a create's own name can make it conflict.
func (s *Store) Create(ctx context.Context, name string) (Test, error) {
	if !s.ready.Load() {
		return Test{}, errNotMigrated
	}
	if !ValidName(name) {
		// The column would reject it (or cut it), and the error would fail
		// every create of its batch.
		return s.createOne(ctx, name)
	}
	return s.creates.do(ctx, name)
}

// createOne inserts one row by itself, with the batch's statement but
// outside any batch, so that its error is its own.
func (s *Store) createOne(ctx context.Context, name string) (Test, error) {
	created, err := s.insertBatch(ctx, []string{name})
	if err != nil {
		return Test{}, fmt.Errorf("create: %w", s.classify(err))
	}
	if len(created) == 0 {
		return Test{}, fmt.Errorf("create %q: %w", name, ErrConflict)
	}
	return created[0], nil
}

// insertNames inserts the names of $1 and returns the rows it created: one
// statement and one parameter whatever the length (no 65,535 parameter
// limit). ORDER BY ord makes the sequence hand out ids in input order. ON
// CONFLICT (name) targets the name's unique key only: a taken name returns
// no row instead of an error, and any other violation (say, of the primary
// key) still surfaces as the error it is.
const insertNames = `
INSERT INTO test (name)
SELECT name
FROM unnest($1::text[]) WITH ORDINALITY AS input(name, ord)
ORDER BY ord
ON CONFLICT (name) DO NOTHING
RETURNING ` + testColumns

// insertNewNames is insertNames for names that must all be new: any taken
// name fails the whole statement with a unique violation. Without ON
// CONFLICT the database does much less per row (no speculative insertion:
// index probe, insert, then confirm): about 10 µs of its CPU per row
// against 16 in the bulk import (go run ./bench -only import -compare,
// both statements round-robin).
const insertNewNames = `
INSERT INTO test (name)
SELECT name
FROM unnest($1::text[]) WITH ORDINALITY AS input(name, ord)
ORDER BY ord
RETURNING ` + testColumns

// CreateMany inserts all names in one transaction, all or nothing, and
// returns the rows in input order with ids ascending in that order. A name
// repeated in names or already stored gives ErrConflict and stores nothing.
func (s *Store) CreateMany(ctx context.Context, names []string) ([]Test, error) {
	if !s.ready.Load() {
		return nil, errNotMigrated
	}
	seen := make(map[string]struct{}, len(names))
	for _, n := range names {
		if _, dup := seen[n]; dup {
			return nil, fmt.Errorf("create %q twice: %w", n, ErrConflict)
		}
		seen[n] = struct{}{}
	}
	var out []Test
	err := retry(ctx, func() (err error) {
		out, err = s.createAll(ctx, names)
		if isUniqueViolation(err) {
			// An error, ErrConflict included, rolls back the rows that
			// did go in.
			err = inTx(ctx, s.pool, func(tx pgx.Tx) (err error) {
				out, err = insertTaken(ctx, tx, names)
				return err
			})
		}
		return err
	})
	if errors.Is(err, ErrConflict) {
		return nil, fmt.Errorf("create %d rows: %w", len(names), ErrConflict)
	}
	if err != nil {
		return nil, fmt.Errorf("create %d rows: %w", len(names), s.classify(err))
	}
	return out, nil
}

// createAll inserts names in a transaction of its own, in two round trips
// where pgx.BeginFunc and insertAll's savepoint take five (BEGIN,
// SAVEPOINT, INSERT, RELEASE, COMMIT): BEGIN and the insert go in one
// pipeline, then COMMIT, or ROLLBACK on any error. Across a network each
// round trip is the database's latency (BENCHMARKS.md, run C: the bulk
// import at 0.55 of COPY at 2 ms each way with five). A unique violation
// comes back as it is, for the caller to find out with insertTaken.
func (s *Store) createAll(ctx context.Context, names []string) ([]Test, error) {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return nil, err
	}
	// A connection whose ROLLBACK did not get through is still in the
	// transaction: pgxpool closes it on Release instead of pooling it.
	defer conn.Release()
	var b pgx.Batch
	b.Queue("BEGIN")
	b.Queue(insertNewNames, names)
	br := conn.SendBatch(ctx, &b)
	_, err = br.Exec()
	var created []Test
	if err == nil {
		rows, _ := br.Query()
		created, err = collectCreated(rows, names)
	}
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	if err == nil && len(created) != len(names) {
		err = errRowsMissing(created, names)
	}
	if err != nil {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), releaseTimeout)
		defer cancel()
		_, _ = conn.Exec(rctx, "ROLLBACK")
		return nil, err
	}
	if _, err := conn.Exec(ctx, "COMMIT"); err != nil {
		return nil, commitErr{err}
	}
	return created, nil
}

// insertAll inserts names in tx and returns the rows in input order. A
// taken or repeated name gives ErrConflict; the caller must then roll back
// the rows that did go in.
func insertAll(ctx context.Context, tx pgx.Tx, names []string) ([]Test, error) {
	// In a savepoint, so that tx survives a unique violation.
	var created []Test
	err := pgx.BeginFunc(ctx, tx, func(sp pgx.Tx) (err error) {
		rows, _ := sp.Query(ctx, insertNewNames, names)
		created, err = collectCreated(rows, names)
		return err
	})
	if isUniqueViolation(err) {
		return insertTaken(ctx, tx, names)
	}
	if err != nil {
		return nil, err
	}
	if len(created) != len(names) {
		return nil, errRowsMissing(created, names)
	}
	return created, nil
}

// insertTaken inserts names in tx after insertNewNames failed with a
// unique violation: a taken name, or an id from the sequence that a row
// inserted with an explicit id already has. The error's constraint name
// would tell, but YugabyteDB does not always send it (yugabyte-db#9294,
// #13501); insertNames does: a taken name returns fewer rows
// (ErrConflict: the caller rolls back), a taken id fails again (and retry
// runs the transaction again) or, the sequence having moved on, succeeds.
// Conflicts are rare, so this costs little.
func insertTaken(ctx context.Context, tx pgx.Tx, names []string) ([]Test, error) {
	rows, _ := tx.Query(ctx, insertNames, names)
	created, err := collectCreated(rows, names)
	if err == nil && len(created) < len(names) {
		return nil, ErrConflict
	}
	if err != nil {
		return nil, err
	}
	if len(created) != len(names) {
		return nil, errRowsMissing(created, names)
	}
	return created, nil
}

// errRowsMissing is the error for an insert that returned fewer rows than
// names and no conflict: something on the server, such as a trigger,
// dropped rows. Never answer for rows that are not there.
func errRowsMissing(created []Test, names []string) error {
	return fmt.Errorf("inserted %d rows of %d", len(created), len(names))
}

// collectCreated reads the rows (id, name) that an insert of names
// returned and, when there is one for each name, puts them in the order of
// names (RETURNING promises no order). PostgreSQL returns them in the
// order it inserted them, which ORDER BY ord makes the input order: then a
// row's name is compared with the input's where the driver holds it, and
// the input's string is used, which saves a string per row (and 19% of the
// server's CPU for a 1,000-row array: BenchmarkCreateMany). Rows in any
// other order are matched by name.
func collectCreated(rows pgx.Rows, names []string) ([]Test, error) {
	created := make([]Test, 0, len(names))
	var (
		t       Test
		name    pgtype.DriverBytes // valid until the next row
		inOrder = true
	)
	// The row's own scan, but for the name, which is read where the
	// driver holds it.
	dest := t.fields()
	dest[nameField] = &name
	_, err := pgx.ForEachRow(rows, dest, func() error {
		i := len(created)
		inOrder = inOrder && i < len(names) && string(name) == names[i]
		if inOrder {
			t.Name = names[i]
		} else {
			t.Name = string(name)
		}
		created = append(created, t)
		return nil
	})
	if err != nil {
		return nil, err
	}
	if inOrder || len(created) != len(names) {
		return created, nil
	}
	byName := make(map[string]Test, len(created))
	for _, t := range created {
		byName[t.Name] = t
	}
	for i, n := range names {
		t, ok := byName[n]
		if !ok {
			// The server stored another name than the one sent (say, a
			// varchar cutting trailing spaces): never answer with a row
			// that is not what was asked for.
			return nil, fmt.Errorf("no row returned for the name %q", n)
		}
		created[i] = t
	}
	return created, nil
}

// Get returns the row with the given id, or ErrNotFound.
func (s *Store) Get(ctx context.Context, id int64) (Test, error) {
	if !s.ready.Load() {
		return Test{}, errNotMigrated
	}
	if id < 1 || id > math.MaxInt32 {
		// id is an integer column: no row can have this id.
		return Test{}, fmt.Errorf("get %d: %w", id, ErrNotFound)
	}
	const q = `
SELECT ` + testColumns + `
FROM test
WHERE id = $1`
	var t Test
	err := retry(ctx, func() error {
		return s.pool.QueryRow(ctx, q, int32(id)).Scan(t.fields()...)
	})
	if errors.Is(err, pgx.ErrNoRows) {
		return Test{}, fmt.Errorf("get %d: %w", id, ErrNotFound)
	}
	if err != nil {
		return Test{}, fmt.Errorf("get %d: %w", id, s.classify(err))
	}
	return t, nil
}

// List returns up to limit rows with id greater than after, in id order.
// It collects the rows: callers bound limit. Concurrent Lists of the same
// page share one query that started after each of them was called (see
// pages.go), so the rows are shared too: callers must not modify them.
func (s *Store) List(ctx context.Context, after int64, limit int) ([]Test, error) {
	return s.pages.do(ctx, pageKey{after, limit})
}

// list runs the query for one List: one statement on its own, whose
// snapshot is consistent by itself. On YugabyteDB the server retries a
// read restart of such a statement for us as long as its output still
// fits ysql_output_buffer_size (256 KiB), which a page of at most 1,000
// rows nearly always does; a page does not wait out the clock skew the
// way an export's transaction does (see Stream).
func (s *Store) list(ctx context.Context, after int64, limit int) ([]Test, error) {
	out := make([]Test, 0, min(limit, 1000))
	err := s.stream(ctx, after, limit, false, func(t Test) error {
		out = append(out, t)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// listMany runs the queries of several Lists as one statement, one LATERAL
// index range scan per page (see pagegroup.go, which sends it only to
// PostgreSQL), and returns each page's rows in keys' order. The rows of all
// pages are read before any is returned, so a failed read can run again.
func (s *Store) listMany(ctx context.Context, keys []pageKey) ([][]Test, error) {
	if !s.ready.Load() {
		return nil, errNotMigrated
	}
	const q = `
SELECT p.ord, t.*
FROM unnest($1::integer[], $2::integer[]) WITH ORDINALITY AS p(after, lim, ord)
CROSS JOIN LATERAL (
	SELECT ` + testColumns + `
	FROM test
	WHERE id > p.after
	ORDER BY id
	LIMIT p.lim
) AS t`
	afters := make([]int32, len(keys))
	limits := make([]int32, len(keys))
	for i, k := range keys {
		// No integer id is greater than MaxInt32: that page is empty.
		afters[i] = int32(min(max(k.after, 0), math.MaxInt32))
		limits[i] = int32(min(k.limit, math.MaxInt32))
	}
	pages := make([][]Test, len(keys))
	err := retry(ctx, func() error {
		for i, k := range keys {
			pages[i] = make([]Test, 0, min(k.limit, 1000))
		}
		rows, _ := s.pool.Query(ctx, q, afters, limits)
		defer rows.Close()
		var ord int64
		var t Test
		dest := append([]any{&ord}, t.fields()...)
		for rows.Next() {
			if err := rows.Scan(dest...); err != nil {
				return err
			}
			if ord < 1 || ord > int64(len(pages)) {
				return fmt.Errorf("page %d of %d in a grouped read", ord, len(pages))
			}
			pages[ord-1] = append(pages[ord-1], t)
		}
		return rows.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("list %d pages: %w", len(keys), s.classify(err))
	}
	// The plan reads each page in id order and the pages in turn, but
	// without an ORDER BY over the whole (a sort of every row) SQL does
	// not promise it: a page out of order is put back in order.
	for _, p := range pages {
		if !slices.IsSortedFunc(p, byID) {
			slices.SortFunc(p, byID)
		}
	}
	return pages, nil
}

func byID(a, b Test) int { return cmp.Compare(a.ID, b.ID) }

// Stream calls fn for each row with id greater than after, in id order, as
// the rows arrive from the server, never holding more than one; limit 0
// means no limit. It stops at fn's first error and returns it. It is the
// export: on YugabyteDB it reads in a SERIALIZABLE READ ONLY DEFERRABLE
// transaction, which YugabyteDB never cancels for a read restart or a
// serialization failure. Without it a long read can fail with a read
// restart (40001) once more than ysql_output_buffer_size has gone to the
// client, when neither the server nor the store can run it again for the
// caller (docs: architecture/transactions/read-restart-error). The price
// is a wait of max_clock_skew_usec (500 ms by default) before the first
// row. On PostgreSQL the export is one statement on its own, which reads
// one snapshot and is never cancelled for serialization; a deferrable
// transaction there could wait for a safe snapshot behind any running
// SERIALIZABLE writer.
func (s *Store) Stream(ctx context.Context, after int64, limit int, fn func(Test) error) error {
	return s.stream(ctx, after, limit, true, fn)
}

// exportTx is the transaction an export runs in on YugabyteDB.
var exportTx = pgx.TxOptions{IsoLevel: pgx.Serializable, AccessMode: pgx.ReadOnly, DeferrableMode: pgx.Deferrable}

// stream runs the keyset query for Stream (export true) and list.
func (s *Store) stream(ctx context.Context, after int64, limit int, export bool, fn func(Test) error) error {
	if !s.ready.Load() {
		return errNotMigrated
	}
	if after >= math.MaxInt32 {
		return nil // no integer id is greater
	}
	// Keyset pagination: WHERE id > $1 ORDER BY id is an index range scan,
	// whatever the depth (OFFSET would read and skip every earlier row).
	// LIMIT NULL is no limit.
	const q = `
SELECT ` + testColumns + `
FROM test
WHERE id > $1
ORDER BY id
LIMIT $2`
	var lim *int64
	if limit > 0 {
		l := int64(limit)
		lim = &l
	}
	var fnErr error
	err := retry(ctx, func() error {
		conn, err := s.pool.Acquire(ctx)
		if err != nil {
			return err
		}
		defer conn.Release()
		var db interface {
			Query(context.Context, string, ...any) (pgx.Rows, error)
		} = conn
		if export && s.dialectOf(conn.Conn()) == YugabyteDB {
			tx, err := conn.BeginTx(ctx, exportTx)
			if err != nil {
				return err
			}
			// Read only: ending it commits nothing, and every row was
			// read before it ends.
			defer tx.Rollback(context.WithoutCancel(ctx))
			db = tx
		}
		rows, err := db.Query(ctx, q, max(after, 0), lim)
		if err != nil {
			return err
		}
		fnErr, err = deliver(rows, fn)
		return err
	})
	if fnErr != nil {
		return fnErr
	}
	if err != nil {
		return fmt.Errorf("stream after %d: %w", after, s.classify(err))
	}
	return nil
}

// dialectOf tells the server conn talks to by the server_version it
// reported at connect time, as Migrate does; tests can force it.
func (s *Store) dialectOf(conn *pgx.Conn) Dialect {
	if s.dialect != "" {
		return s.dialect
	}
	return DetectDialect(conn.PgConn().ParameterStatus("server_version"))
}

func scanTest(row pgx.CollectableRow) (Test, error) {
	var t Test
	err := row.Scan(t.fields()...)
	return t, err
}

// FindByName returns the row named name if its id is greater than after:
// zero rows or one, found by the unique index on name.
func (s *Store) FindByName(ctx context.Context, name string, after int64) ([]Test, error) {
	if !s.ready.Load() {
		return nil, errNotMigrated
	}
	if after >= math.MaxInt32 {
		// No integer id is greater, and the driver could not send after
		// as the integer the query compares id with.
		return []Test{}, nil
	}
	const q = `
SELECT ` + testColumns + `
FROM test
WHERE name = $1
  AND id > $2`
	var out []Test
	err := retry(ctx, func() error {
		rows, _ := s.pool.Query(ctx, q, name, max(after, 0))
		var err error
		out, err = pgx.CollectRows(rows, scanTest)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("find name: %w", s.classify(err))
	}
	if out == nil {
		out = []Test{}
	}
	return out, nil
}
