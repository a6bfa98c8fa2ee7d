package store

import "github.com/jackc/pgx/v5"

// One definition of a row of table test: the columns every query selects
// and the scan that reads them into a Test, in one order. A column added to
// the table (a migration step) is added here and to Test, and every read
// and create returns it.

// testColumns is the select (and RETURNING) list of a Test, in the order
// Test.fields gives its fields.
const testColumns = `id, name`

// nameField is the index of Name in fields, for the one scan that reads
// the name without a string of its own (collectCreated).
const nameField = 1

// fields returns the scan destinations of t's columns, in testColumns'
// order.
func (t *Test) fields() []any { return []any{&t.ID, &t.Name} }

// deliver scans rows into Tests and hands each to fn, in order, and closes
// rows. It returns fn's first error as fnErr (and stops there), or the
// error reading the rows: final once a row was delivered, since running
// the query again would hand fn the same rows twice.
func deliver(rows pgx.Rows, fn func(Test) error) (fnErr, err error) {
	defer rows.Close()
	var t Test
	dest := t.fields() // once, not a slice per row
	delivered := false
	for rows.Next() {
		if err := rows.Scan(dest...); err != nil {
			return nil, err
		}
		delivered = true
		if fnErr := fn(t); fnErr != nil {
			return fnErr, nil
		}
	}
	if err := rows.Err(); err != nil && delivered {
		return nil, final{err}
	} else if err != nil {
		return nil, err
	}
	return nil, nil
}
