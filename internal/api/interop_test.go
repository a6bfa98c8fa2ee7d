package api_test

import (
	"context"
	"net/http"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/ybrest/testsapi/internal/dbtest"
)

// The statements SQLAlchemy runs for the guide's program
// (YugabyteDB's "Using SQLAlchemy with YugabyteDB" guide, which README.md
// names): Base.metadata.create_all emits
// sqlalchemyDDL (after checking the table is missing), and
// session.add_all + commit runs one INSERT ... RETURNING per object in a
// transaction.
const (
	sqlalchemyDDL = `
CREATE TABLE test (
	id SERIAL NOT NULL,
	name VARCHAR(255) NOT NULL,
	PRIMARY KEY (id),
	UNIQUE (name)
)`
	sqlalchemyInsert = `INSERT INTO test (name) VALUES ($1) RETURNING test.id`
)

// sqlalchemyMain does what the guide's main.py does: create the table if
// missing, then add Bob, John and Ivy in one transaction.
func sqlalchemyMain(t *testing.T, pool *pgxpool.Pool) {
	t.Helper()
	ctx := context.Background()
	var exists bool
	if err := pool.QueryRow(ctx, `SELECT to_regclass('test') IS NOT NULL`).Scan(&exists); err != nil {
		t.Fatal(err)
	}
	if !exists {
		if _, err := pool.Exec(ctx, sqlalchemyDDL); err != nil {
			t.Fatalf("create_all: %v", err)
		}
	}
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		for _, n := range []string{"Bob", "John", "Ivy"} {
			var id int32
			if err := tx.QueryRow(ctx, sqlalchemyInsert, n).Scan(&id); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("add_all + commit: %v", err)
	}
}

// selectStar is the guide's check, SELECT * FROM test, in id order.
func selectStar(t *testing.T, pool *pgxpool.Pool) []test {
	t.Helper()
	rows, _ := pool.Query(context.Background(), `SELECT * FROM test ORDER BY id`)
	got, err := pgx.CollectRows(rows, pgx.RowToStructByPos[test])
	if err != nil {
		t.Fatal(err)
	}
	return got
}

// TestSQLAlchemyAfterService: the service created the table; the guide's
// program then runs on it, and its rows show up in the API.
func TestSQLAlchemyAfterService(t *testing.T) {
	t.Parallel()
	e := mustEnv(t)
	mine := mustCreate(t, e.h, "Ann")
	sqlalchemyMain(t, e.pool)

	var got []test
	do(t, e.h, "GET", "/tests", "").json(t, &got)
	if diff := cmp.Diff([]string{"Ann", "Bob", "John", "Ivy"}, names(got)); diff != "" {
		t.Fatalf("GET /tests (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(got, selectStar(t, e.pool)); diff != "" {
		t.Fatalf("SELECT * FROM test differs from GET /tests (-api +sql):\n%s", diff)
	}
	if got[0] != mine[0] {
		t.Fatalf("the service's row changed: %+v, want %+v", got[0], mine[0])
	}
	problemOf(t, do(t, e.h, "POST", "/tests", `{"name": "Ivy"}`), http.StatusConflict)
}

// TestServiceAfterSQLAlchemy: the guide's program created the table first
// (SERIAL id); the service starts on it as it is and works.
func TestServiceAfterSQLAlchemy(t *testing.T) {
	t.Parallel()
	url := dbtest.NewSchema(t)
	pool := mustPool(t, url, nil)
	sqlalchemyMain(t, pool)

	e := mustEnvURL(t, url, testLimits) // the service's start-up, Migrate included
	res := do(t, e.h, "POST", "/tests", `{"name": "Ann"}`)
	if res.status != http.StatusCreated {
		t.Fatalf("POST on SQLAlchemy's table: %d %s", res.status, res.body)
	}
	var ann test
	res.json(t, &ann)
	if ann.ID <= 3 {
		t.Fatalf("id %d, want more than 3: the SERIAL sequence continues", ann.ID)
	}
	problemOf(t, do(t, e.h, "POST", "/tests", `{"name": "Bob"}`), http.StatusConflict)
	ej := mustCreate(t, e.h, "Eve", "Joe")

	var got []test
	do(t, e.h, "GET", "/tests", "").json(t, &got)
	// Ids have gaps (the 409 used a sequence value), and only one request's
	// ids are in order: on YugabyteDB each connection caches 100 sequence
	// values, so Ann's id may be above Eve's. Compare names, in id order:
	// SQLAlchemy's three, then the service's three in some order.
	gotNames := names(got)
	if len(gotNames) == 6 {
		slices.Sort(gotNames[3:])
	}
	if diff := cmp.Diff([]string{"Bob", "John", "Ivy", "Ann", "Eve", "Joe"}, gotNames); diff != "" {
		t.Fatalf("GET /tests (-want +got):\n%s", diff)
	}
	if got[0] != (test{1, "Bob"}) || !slices.Contains(got, ann) || !slices.Contains(got, ej[0]) || !slices.Contains(got, ej[1]) {
		t.Fatalf("rows changed ids: %+v", got)
	}
	if diff := cmp.Diff(got, selectStar(t, pool)); diff != "" {
		t.Fatalf("SELECT * FROM test differs from GET /tests (-api +sql):\n%s", diff)
	}
	// The service left SQLAlchemy's table as it was: still a serial column.
	var def string
	if err := pool.QueryRow(t.Context(), `SELECT pg_get_expr(adbin, adrelid) FROM pg_attrdef WHERE adrelid = 'test'::regclass`).Scan(&def); err != nil {
		t.Fatal(err)
	}
	if def != "nextval('test_id_seq'::regclass)" {
		t.Fatalf("id default %q: the service altered SQLAlchemy's table", def)
	}
	// And the guide's program can still run on it after the service.
	if _, err := pool.Exec(t.Context(), sqlalchemyInsert, "Zed"); err != nil {
		t.Fatal(err)
	}
}

func names(ts []test) []string {
	out := make([]string, len(ts))
	for i, t := range ts {
		out[i] = t.Name
	}
	return out
}
