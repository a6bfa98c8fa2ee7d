package store

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
