package store

import (
	"context"
	"errors"
	"fmt"
	"math"

	"github.com/jackc/pgx/v5"
)

// ErrPreconditionFailed means the row is not the one the caller's condition
// asked for (it changed since the caller read it); nothing was changed.
var ErrPreconditionFailed = errors.New("precondition failed")

// Match is a condition on the current row of a Rename or Delete, checked
// while the row is locked, so no other change can come between the check
// and the change. Nil means no condition.
type Match func(current Test) bool

// Rename sets the name of row id and returns the row as it is then. A name
// another row has gives ErrConflict, no row id ErrNotFound, a row that
// match refuses ErrPreconditionFailed; none of them changes anything.
func (s *Store) Rename(ctx context.Context, id int64, name string, match Match) (Test, error) {
	if !s.ready.Load() {
		return Test{}, errNotMigrated
	}
	var t Test
	err := retry(ctx, func() (err error) {
		if match == nil {
			// One statement: one round trip, and atomic by itself.
			t, err = renameIn(ctx, s.pool, id, name, nil)
			return autocommitErr(err)
		}
		return inTx(ctx, s.pool, func(tx pgx.Tx) (err error) {
			t, err = renameIn(ctx, tx, id, name, match)
			return err
		})
	})
	if err != nil {
		return Test{}, fmt.Errorf("rename %d: %w", id, s.classifyChange(err))
	}
	return t, nil
}

// renameIn renames row id on q. With match it first locks the row (SELECT
// FOR UPDATE) and checks it, so q must then be a transaction: the lock
// holds until it ends, and a concurrent rename or delete of the row waits
// for it and then sees the new row.
func renameIn(ctx context.Context, q querier, id int64, name string, match Match) (Test, error) {
	if id < 1 || id > math.MaxInt32 {
		return Test{}, ErrNotFound
	}
	if err := lockAndCheck(ctx, q, id, match); err != nil {
		return Test{}, err
	}
	const update = `
UPDATE test
SET name = $2
WHERE id = $1
RETURNING ` + testColumns
	var t Test
	err := q.QueryRow(ctx, update, int32(id), name).Scan(t.fields()...)
	if errors.Is(err, pgx.ErrNoRows) {
		return Test{}, ErrNotFound
	}
	if isUniqueViolation(err) {
		// The only unique key an update of name can break is name's.
		return Test{}, ErrConflict
	}
	return t, err
}

// Delete deletes row id. No row id gives ErrNotFound, a row that match
// refuses ErrPreconditionFailed. Its name is free again at once.
func (s *Store) Delete(ctx context.Context, id int64, match Match) error {
	if !s.ready.Load() {
		return errNotMigrated
	}
	err := retry(ctx, func() error {
		if match == nil {
			return autocommitErr(deleteIn(ctx, s.pool, id, nil))
		}
		return inTx(ctx, s.pool, func(tx pgx.Tx) error {
			return deleteIn(ctx, tx, id, match)
		})
	})
	if err != nil {
		return fmt.Errorf("delete %d: %w", id, s.classifyChange(err))
	}
	return nil
}

// deleteIn deletes row id on q, as renameIn renames it.
func deleteIn(ctx context.Context, q querier, id int64, match Match) error {
	if id < 1 || id > math.MaxInt32 {
		return ErrNotFound
	}
	if err := lockAndCheck(ctx, q, id, match); err != nil {
		return err
	}
	const del = `
DELETE FROM test
WHERE id = $1`
	tag, err := q.Exec(ctx, del, int32(id))
	if err != nil {
		return err
	}
	if tag.RowsAffected() == 0 {
		return ErrNotFound
	}
	return nil
}

// lockAndCheck locks row id for the rest of q's transaction and checks it
// against match; without match it does nothing.
func lockAndCheck(ctx context.Context, q querier, id int64, match Match) error {
	if match == nil {
		return nil
	}
	const lock = `
SELECT ` + testColumns + `
FROM test
WHERE id = $1
FOR UPDATE`
	var cur Test
	err := q.QueryRow(ctx, lock, int32(id)).Scan(cur.fields()...)
	if errors.Is(err, pgx.ErrNoRows) {
		return ErrNotFound
	}
	if err != nil {
		return err
	}
	if !match(cur) {
		return ErrPreconditionFailed
	}
	return nil
}

// classifyChange is classify for Rename and Delete, whose own outcomes
// (ErrConflict, ErrNotFound, ErrPreconditionFailed) are answers, not
// database errors.
func (s *Store) classifyChange(err error) error {
	if errors.Is(err, ErrConflict) || errors.Is(err, ErrNotFound) || errors.Is(err, ErrPreconditionFailed) {
		return err
	}
	return s.classify(err)
}

// autocommitErr marks a database error of a change run as a statement of
// its own as a commitErr: it commits as it ends, so its failure may hide a
// change that did commit (a delete run again would then answer 404). The
// store's own answers pass as they are.
func autocommitErr(err error) error {
	if err == nil || errors.Is(err, ErrConflict) || errors.Is(err, ErrNotFound) || errors.Is(err, ErrPreconditionFailed) {
		return err
	}
	return commitErr{err}
}
