package store_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/ybrest/testsapi/internal/dbtest"
	"github.com/ybrest/testsapi/internal/store"
)

// mustMigrated returns a store on a fresh schema, migrated.
func mustMigrated(t *testing.T) (*store.Store, *pgxpool.Pool) {
	t.Helper()
	st, pool := mustStore(t, dbtest.NewSchema(t))
	if _, _, err := st.Migrate(t.Context()); err != nil {
		t.Fatal(err)
	}
	return st, pool
}

// mustStoredA returns a migrated store holding a row "a" made by Create
// and, after it, rows "explicit0", ... written with the explicit ids a's id
// + offsets, ahead of the sequence, as another client might; and the table.
func mustStoredA(t *testing.T, offsets ...int32) (*store.Store, *pgxpool.Pool, map[string]int32) {
	t.Helper()
	st, pool := mustMigrated(t)
	a := mustCreate(t, st, "a")
	for i, off := range offsets {
		const q = `INSERT INTO test (id, name) VALUES ($1, $2)`
		if _, err := pool.Exec(t.Context(), q, a.ID+off, fmt.Sprint("explicit", i)); err != nil {
			t.Fatal(err)
		}
	}
	return st, pool, storedRows(t, pool)
}

// storedRows returns the names in table test with their ids.
func storedRows(t *testing.T, pool *pgxpool.Pool) map[string]int32 {
	t.Helper()
	rows, _ := pool.Query(t.Context(), `SELECT name, id FROM test`)
	out := map[string]int32{}
	var name string
	var id int32
	_, err := pgx.ForEachRow(rows, []any{&name, &id}, func() error {
		out[name] = id
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// bulkNames returns n names, not in sorted order.
func bulkNames(prefix string, n int) []string {
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("%s%04d", prefix, (i*7919)%n)
	}
	return names
}

// checkCreated checks that created holds names in input order with ids
// ascending in that order, and that the table holds exactly those rows
// besides before.
func checkCreated(t *testing.T, pool *pgxpool.Pool, names []string, created []store.Test, before map[string]int32) {
	t.Helper()
	if len(created) != len(names) {
		t.Fatalf("%d rows created, want %d", len(created), len(names))
	}
	want := map[string]int32{}
	for n, id := range before {
		want[n] = id
	}
	for i, c := range created {
		if c.Name != names[i] {
			t.Fatalf("row %d is %q, want %q: not in input order", i, c.Name, names[i])
		}
		if i > 0 && c.ID <= created[i-1].ID {
			t.Fatalf("ids %d then %d: not ascending in input order", created[i-1].ID, c.ID)
		}
		want[c.Name] = c.ID
	}
	if diff := cmp.Diff(want, storedRows(t, pool)); diff != "" {
		t.Fatalf("table (-want +got):\n%s", diff)
	}
}

// TestCreateMany: a large array comes back in input order, ids ascending
// in that order, and the table holds what was answered.
func TestCreateMany(t *testing.T) {
	t.Parallel()
	st, pool := mustMigrated(t)
	names := bulkNames("n", 1000)
	created, err := st.CreateMany(t.Context(), names)
	if err != nil {
		t.Fatal(err)
	}
	checkCreated(t, pool, names, created, nil)
}

// TestCreateManyRowsMissing: rows the server drops without an error (a
// trigger returning NULL) fail the array, and nothing is stored; a name
// the server changes (varchar(255) cuts trailing spaces) too.
func TestCreateManyRowsMissing(t *testing.T) {
	t.Parallel()
	st, pool := mustMigrated(t)
	const trigger = `
CREATE FUNCTION skip_named_skip() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.name = 'skip' THEN RETURN NULL; END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER skip_named_skip BEFORE INSERT ON test FOR EACH ROW EXECUTE FUNCTION skip_named_skip();`
	if _, err := pool.Exec(t.Context(), trigger); err != nil {
		t.Fatal(err)
	}
	for _, names := range [][]string{
		{"a", "skip", "b"},
		{"c", "x" + strings.Repeat(" ", 300)},
	} {
		if created, err := st.CreateMany(t.Context(), names); err == nil {
			t.Errorf("CreateMany(%q) = %v, nil; want an error", names, created)
		}
	}
	var n int
	if err := pool.QueryRow(t.Context(), `SELECT count(*) FROM test`).Scan(&n); err != nil || n != 0 {
		t.Errorf("%d rows stored (%v), want none", n, err)
	}
}

// TestCreateManyConflict: a name already stored, wherever it is in the
// array, or a name twice in it, is ErrConflict and stores nothing; the
// same array without it then goes in whole.
func TestCreateManyConflict(t *testing.T) {
	t.Parallel()
	for _, at := range []int{0, 500, 999} {
		t.Run(fmt.Sprintf("StoredAt%d", at), func(t *testing.T) {
			t.Parallel()
			st, pool, before := mustStoredA(t)
			names := bulkNames("n", 1000)
			names[at] = "a"
			if _, err := st.CreateMany(t.Context(), names); !errors.Is(err, store.ErrConflict) {
				t.Fatalf("CreateMany with a stored name: %v, want ErrConflict", err)
			}
			if diff := cmp.Diff(before, storedRows(t, pool)); diff != "" {
				t.Fatalf("table changed (-want +got):\n%s", diff)
			}
			names[at] = "instead"
			created, err := st.CreateMany(t.Context(), names)
			if err != nil {
				t.Fatal(err)
			}
			checkCreated(t, pool, names, created, before)
		})
	}
	t.Run("Repeated", func(t *testing.T) {
		t.Parallel()
		st, pool := mustMigrated(t)
		names := bulkNames("n", 1000)
		names[999] = names[3]
		if _, err := st.CreateMany(t.Context(), names); !errors.Is(err, store.ErrConflict) {
			t.Fatalf("CreateMany with a name twice: %v, want ErrConflict", err)
		}
		if rows := storedRows(t, pool); len(rows) != 0 {
			t.Fatalf("stored %v", rows)
		}
	})
}

// TestCreateManyAfterExplicitIDs: rows written by another client with
// explicit ids ahead of the sequence make the insert collide on the
// primary key, once or again after the first collision; the array still
// goes in whole, in input order. A taken name among them is still a
// conflict.
func TestCreateManyAfterExplicitIDs(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		offsets []int32 // explicit ids, after the last id taken
		taken   bool    // one of the array's names is stored too
	}{
		{"Once", []int32{5}, false},
		{"Twice", []int32{5, 500}, false},
		{"AndTakenName", []int32{5}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			st, pool, before := mustStoredA(t, tc.offsets...)
			names := bulkNames("n", 1000)
			if tc.taken {
				names[700] = "a"
			}
			created, err := st.CreateMany(t.Context(), names)
			if tc.taken {
				if !errors.Is(err, store.ErrConflict) {
					t.Fatalf("CreateMany with a stored name: %v, want ErrConflict", err)
				}
				if diff := cmp.Diff(before, storedRows(t, pool)); diff != "" {
					t.Fatalf("table changed (-want +got):\n%s", diff)
				}
				return
			}
			if err != nil {
				t.Fatalf("CreateMany after explicit ids: %v", err)
			}
			checkCreated(t, pool, names, created, before)
		})
	}
}

// TestCreateOnceAllOrNothing: with an idempotency key the rows go in with
// the key's answer, all or none: a stored or repeated name keeps a 409 and
// stores no row; an id collision is retried, once or again.
func TestCreateOnceAllOrNothing(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		edit     func(names []string)
		offsets  []int32 // explicit ids, after the last id taken
		conflict bool
	}{
		{"OK", func([]string) {}, nil, false},
		{"StoredName", func(n []string) { n[500] = "a" }, nil, true},
		{"Repeated", func(n []string) { n[999] = n[0] }, nil, true},
		{"ExplicitID", func([]string) {}, []int32{3}, false},
		{"ExplicitIDTwice", func([]string) {}, []int32{3, 600}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			st, pool, before := mustStoredA(t, tc.offsets...)
			names := bulkNames("n", 1000)
			tc.edit(names)
			var created []store.Test
			var createErr error
			resp, err := st.CreateOnce(t.Context(), store.KeyedCreate{
				Key: "k", Fingerprint: []byte("f"), Names: names, TTL: time.Hour, StaleAfter: time.Minute,
			}, func(c []store.Test, err error) store.Response {
				created, createErr = c, err
				if err != nil {
					return store.Response{Status: 409}
				}
				return store.Response{Status: 201}
			})
			if err != nil {
				t.Fatal(err)
			}
			var kept int32
			if err := pool.QueryRow(t.Context(), `SELECT status FROM idempotency_keys WHERE key = 'k'`).Scan(&kept); err != nil {
				t.Fatal(err)
			}
			if int(kept) != resp.Status {
				t.Fatalf("key kept %d, answered %d", kept, resp.Status)
			}
			if tc.conflict {
				if !errors.Is(createErr, store.ErrConflict) || resp.Status != 409 {
					t.Fatalf("answered %d for %v, want 409 for ErrConflict", resp.Status, createErr)
				}
				if diff := cmp.Diff(before, storedRows(t, pool)); diff != "" {
					t.Fatalf("table changed (-want +got):\n%s", diff)
				}
				return
			}
			if createErr != nil || resp.Status != 201 {
				t.Fatalf("answered %d for %v, want 201", resp.Status, createErr)
			}
			checkCreated(t, pool, names, created, before)
		})
	}
}

// TestCollectCreated: the rows an insert returns come back in input order
// whatever order the database sends them in; when some are missing (a
// taken name), fewer come back.
func TestCollectCreated(t *testing.T) {
	t.Parallel()
	_, pool := mustMigrated(t)
	names := []string{"a", "b", "c"}
	want := []store.Test{{ID: 1, Name: "a"}, {ID: 2, Name: "b"}, {ID: 3, Name: "c"}}
	tests := []struct {
		name string
		sent []store.Test // the rows, in the order the database sends them
		want []store.Test
	}{
		{"InOrder", want, want},
		{"Reversed", []store.Test{want[2], want[1], want[0]}, want},
		{"LastTwoSwapped", []store.Test{want[0], want[2], want[1]}, want},
		{"Fewer", []store.Test{want[0], want[2]}, []store.Test{want[0], want[2]}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var ids []int32
			var sent []string
			for _, r := range tc.sent {
				ids, sent = append(ids, r.ID), append(sent, r.Name)
			}
			const q = `SELECT id, name FROM unnest($1::int[], $2::text[]) WITH ORDINALITY AS r(id, name, ord) ORDER BY ord`
			rows, _ := pool.Query(t.Context(), q, ids, sent)
			got, err := store.CollectCreated(rows, names)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("rows (-want +got):\n%s", diff)
			}
		})
	}
}

// TestExportTransaction shows which transaction Stream (the export) runs
// in, by the BEGIN statements the store's connections send: on the
// YugabyteDB path "begin isolation level serializable read only
// deferrable", on the PostgreSQL path none (one statement on its own). On
// PostgreSQL it also shows the server took the transaction as such: a
// SERIALIZABLE READ ONLY DEFERRABLE transaction waits for a safe snapshot
// (wait event SafeSnapshot, which only such a transaction waits on) while a
// SERIALIZABLE read-write transaction is open, and the PostgreSQL path
// exports beside that writer without waiting. What YugabyteDB does with
// the transaction (no read restarts) is known from its docs only.
func TestExportTransaction(t *testing.T) {
	t.Parallel()
	url := dbtest.NewSchema(t) + "&application_name=" + t.Name()
	pg, pgBegins := mustTracedStore(t, url, store.PostgreSQL)
	yb, ybBegins := mustTracedStore(t, url, store.YugabyteDB)
	_, pool := mustStore(t, url)
	if _, err := pg.CreateMany(t.Context(), []string{"a", "b", "c"}); err != nil {
		t.Fatal(err)
	}
	pgBegins.take()
	conn, err := pool.Acquire(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	onPostgreSQL := store.DetectDialect(conn.Conn().PgConn().ParameterStatus("server_version")) == store.PostgreSQL
	conn.Release()

	var writer pgx.Tx
	if onPostgreSQL {
		writer, err = pool.BeginTx(t.Context(), pgx.TxOptions{IsoLevel: pgx.Serializable})
		if err != nil {
			t.Fatal(err)
		}
		defer writer.Rollback(t.Context())
		if _, err := writer.Exec(t.Context(), `SELECT count(*) FROM test`); err != nil { // takes its snapshot
			t.Fatal(err)
		}
	}

	export := func(st *store.Store) <-chan error {
		done := make(chan error, 1)
		go func() {
			var names []string
			err := st.Stream(t.Context(), 0, 0, func(r store.Test) error {
				names = append(names, r.Name)
				return nil
			})
			if err == nil && strings.Join(names, ",") != "a,b,c" {
				err = fmt.Errorf("exported %q", names)
			}
			done <- err
		}()
		return done
	}
	start := time.Now()
	select {
	case err := <-export(pg):
		if err != nil {
			t.Fatalf("PostgreSQL path: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the export on the PostgreSQL path waited for the serializable writer")
	}
	t.Logf("PostgreSQL path: exported in %s (beside an open serializable writer: %v)", time.Since(start).Round(time.Millisecond), onPostgreSQL)
	if got := pgBegins.take(); len(got) != 0 {
		t.Fatalf("PostgreSQL path began %q, want one statement on its own", got)
	}

	start = time.Now()
	done := export(yb)
	if onPostgreSQL {
		const waiting = `
SELECT count(*)
FROM pg_stat_activity
WHERE application_name = $1
  AND wait_event = 'SafeSnapshot'`
		dbtest.WaitFor(t, "export waiting for a safe snapshot", 10*time.Second, func() bool {
			var n int
			if err := pool.QueryRow(t.Context(), waiting, t.Name()).Scan(&n); err != nil {
				t.Fatal(err)
			}
			return n == 1
		})
		select {
		case err := <-done:
			t.Fatalf("the export on the YugabyteDB path did not wait for the serializable writer (%v)", err)
		default:
		}
		if err := writer.Commit(t.Context()); err != nil {
			t.Fatal(err)
		}
		t.Logf("YugabyteDB path: waited for a safe snapshot (%s until the writer committed)", time.Since(start).Round(time.Millisecond))
	}
	if err := <-done; err != nil {
		t.Fatalf("YugabyteDB path: %v", err)
	}
	if got, want := ybBegins.take(), []string{"begin isolation level serializable read only deferrable"}; !slices.Equal(got, want) {
		t.Fatalf("YugabyteDB path began %q, want %q", got, want)
	}
}

// mustTracedStore returns a migrated store on url that takes dialect d's
// path, and the log of the BEGIN statements its connections send.
func mustTracedStore(t *testing.T, url string, d store.Dialect) (*store.Store, *beginLog) {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	log := &beginLog{}
	cfg.ConnConfig.Tracer = log
	pool, err := pgxpool.NewWithConfig(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	st := store.New(pool)
	st.ForceDialect(d)
	if _, _, err := st.Migrate(t.Context()); err != nil {
		t.Fatal(err)
	}
	return st, log
}

// beginLog is a pgx.QueryTracer that records the BEGIN statements sent.
type beginLog struct {
	mu     sync.Mutex
	begins []string
}

func (l *beginLog) TraceQueryStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	if strings.HasPrefix(strings.ToLower(strings.TrimSpace(d.SQL)), "begin") {
		l.mu.Lock()
		l.begins = append(l.begins, d.SQL)
		l.mu.Unlock()
	}
	return ctx
}

func (*beginLog) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

// take returns the statements recorded since the last take.
func (l *beginLog) take() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	got := l.begins
	l.begins = nil
	return got
}

// TestCreateAfterExplicitID: a row written by another client with an
// explicit id ahead of the sequence makes one insert collide on the
// primary key; the store retries with the next id instead of failing.
func TestCreateAfterExplicitID(t *testing.T) {
	t.Parallel()
	// One connection, so that b's id is the one after a's on YugabyteDB
	// too, where each connection caches sequence values of its own.
	st, pool := mustStore(t, dbtest.NewSchema(t)+"&pool_max_conns=1")
	if _, _, err := st.Migrate(t.Context()); err != nil {
		t.Fatal(err)
	}
	a := mustCreate(t, st, "a")
	if _, err := pool.Exec(t.Context(), `INSERT INTO test (id, name) VALUES ($1, 'explicit')`, a.ID+1); err != nil {
		t.Fatal(err)
	}
	b, err := st.Create(t.Context(), "b")
	if err != nil || b.ID != a.ID+2 {
		t.Fatalf("Create after an explicit id: %+v %v, want id %d", b, err, a.ID+2)
	}
	if _, err := st.Create(t.Context(), "explicit"); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("taken name: %v, want ErrConflict", err)
	}
}
