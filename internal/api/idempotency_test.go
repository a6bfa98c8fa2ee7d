package api_test

import (
	"bytes"
	"context"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/ybrest/testsapi/internal/api"
	"github.com/ybrest/testsapi/internal/dbtest"
)

// keyed sends POST /tests with an Idempotency-Key.
func keyed(t *testing.T, h http.Handler, key, body string) response {
	t.Helper()
	return do(t, h, "POST", "/tests", body, "Idempotency-Key", key)
}

// sameAnswer fails unless b is a + replay: same status, body and Location.
func sameAnswer(t *testing.T, a, b response) {
	t.Helper()
	if a.status != b.status || !bytes.Equal(a.body, b.body) || a.header.Get("Location") != b.header.Get("Location") ||
		a.header.Get("Content-Type") != b.header.Get("Content-Type") {
		t.Fatalf("retry answered %d %q %s, first answer %d %q %s", b.status, b.header.Get("Location"), b.body,
			a.status, a.header.Get("Location"), a.body)
	}
}

// mustCreated fails unless res is a 201.
func mustCreated(t *testing.T, what string, res response) response {
	t.Helper()
	if res.status != http.StatusCreated {
		t.Fatalf("%s: %d %s, want 201", what, res.status, res.body)
	}
	return res
}

// wantNames fails unless table test holds exactly names, in id order.
func wantNames(t *testing.T, pool *pgxpool.Pool, names ...string) {
	t.Helper()
	if diff := cmp.Diff(names, tableNames(t, pool)); diff != "" {
		t.Fatalf("table (-want +got):\n%s", diff)
	}
}

// lockTable takes an ACCESS EXCLUSIVE lock on table test, held until the
// returned transaction ends (at the latest when the test does), so that
// requests needing the table wait.
func lockTable(t *testing.T, pool *pgxpool.Pool) pgx.Tx {
	t.Helper()
	tx, err := pool.Begin(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tx.Rollback(context.Background()) })
	if _, err := tx.Exec(t.Context(), "LOCK TABLE test IN ACCESS EXCLUSIVE MODE"); err != nil {
		t.Fatal(err)
	}
	return tx
}

// keyRows counts the rows of idempotency_keys.
func keyRows(t *testing.T, e *env) int {
	t.Helper()
	var n int
	if err := e.pool.QueryRow(t.Context(), `SELECT count(*) FROM idempotency_keys`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestIdempotentReplay: a retry with the same key and the same request,
// however formatted, gets the first answer byte for byte and creates
// nothing.
func TestIdempotentReplay(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, first, retry string
		names              []string
	}{
		{"Single", `{"name": "Bob"}`, `{ "name":"Bob" }`, []string{"Bob"}},
		{"Array", `[{"name": "John"}, {"name": "Ivy"}]`, `[{"name":"John"},{"name":"Ivy"}]`, []string{"John", "Ivy"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := mustEnv(t)
			first := keyed(t, e.h, "key-1", tc.first)
			if first.status != http.StatusCreated {
				t.Fatalf("first: %d %s", first.status, first.body)
			}
			for range 3 {
				sameAnswer(t, first, keyed(t, e.h, "key-1", tc.retry))
			}
			wantNames(t, e.pool, tc.names...)
			if n := keyRows(t, e); n != 1 {
				t.Fatalf("%d rows in idempotency_keys, want 1", n)
			}
			// Another key is another request: the name is taken now.
			problemOf(t, keyed(t, e.h, "key-2", tc.first), http.StatusConflict)
		})
	}
}

// TestIdempotencyKeyReused: the same key with a different request is a 422
// and changes nothing.
func TestIdempotencyKeyReused(t *testing.T) {
	t.Parallel()
	e := mustEnv(t)
	first := mustCreated(t, "first", keyed(t, e.h, "k", `{"name": "Bob"}`))
	for _, body := range []string{`{"name": "Ann"}`, `[{"name": "Bob"}]`, `[{"name": "Bob"}, {"name": "Ann"}]`} {
		p := problemOf(t, keyed(t, e.h, "k", body), http.StatusUnprocessableEntity)
		if !strings.Contains(p.Detail, "Idempotency-Key") {
			t.Fatalf("detail %q does not name the header", p.Detail)
		}
	}
	wantNames(t, e.pool, "Bob")
	sameAnswer(t, first, keyed(t, e.h, "k", `{"name": "Bob"}`))
}

// TestIdempotencyInFlight: while the first request with a key is still
// running, a second one gets a 409 with Retry-After, and once the first is
// done the retry gets its answer.
func TestIdempotencyInFlight(t *testing.T) {
	t.Parallel()
	e := mustEnv(t)
	tx := lockTable(t, e.pool)
	firstDone := make(chan response, 1)
	go func() { firstDone <- keyed(t, e.h, "slow", `{"name": "Bob"}`) }()
	dbtest.WaitFor(t, "the first request's key claimed", 10*time.Second, func() bool { return keyRows(t, e) == 1 })

	p := problemOf(t, keyed(t, e.h, "slow", `{"name": "Bob"}`), http.StatusConflict)
	if !strings.Contains(p.Detail, "Idempotency-Key") {
		t.Fatalf("detail %q", p.Detail)
	}
	// The 409 said to come back: the header must be there.
	if res := keyed(t, e.h, "slow", `{"name": "Bob"}`); res.header.Get("Retry-After") == "" {
		t.Fatalf("409 for a key in flight without Retry-After: %d %s", res.status, res.body)
	}

	if err := tx.Rollback(t.Context()); err != nil {
		t.Fatal(err)
	}
	first := <-firstDone
	if first.status != http.StatusCreated {
		t.Fatalf("first: %d %s", first.status, first.body)
	}
	sameAnswer(t, first, keyed(t, e.h, "slow", `{"name": "Bob"}`))
	wantNames(t, e.pool, "Bob")
}

// TestIdempotencyConcurrent fires the same keyed request many times at
// once: one row is created, and every answer is either that 201 or a 409
// saying the key is in flight.
func TestIdempotencyConcurrent(t *testing.T) {
	t.Parallel()
	e := mustEnv(t)
	const n = 20
	var wg sync.WaitGroup
	results := make([]response, n)
	for i := range n {
		wg.Go(func() { results[i] = keyed(t, e.h, "race", `[{"name": "a"}, {"name": "b"}]`) })
	}
	wg.Wait()
	var created *response
	for i, r := range results {
		switch r.status {
		case http.StatusCreated:
			if created != nil {
				sameAnswer(t, *created, r)
			}
			created = &results[i]
		case http.StatusConflict:
			if r.header.Get("Retry-After") == "" {
				t.Fatalf("409 without Retry-After: %s", r.body)
			}
		default:
			t.Fatalf("answer %d %s, want 201 or 409", r.status, r.body)
		}
	}
	final := keyed(t, e.h, "race", `[{"name": "a"}, {"name": "b"}]`)
	if final.status != http.StatusCreated {
		t.Fatalf("after the race: %d %s", final.status, final.body)
	}
	if created != nil {
		sameAnswer(t, *created, final)
	}
	wantNames(t, e.pool, "a", "b")
}

// TestIdempotencyConflictKept: a 409 for a taken name is a final answer and
// is kept like a 201: the retry gets it again even once the name is free.
func TestIdempotencyConflictKept(t *testing.T) {
	t.Parallel()
	e := mustEnv(t)
	mustCreate(t, e.h, "Bob")
	first := keyed(t, e.h, "k", `[{"name": "Ann"}, {"name": "Bob"}]`)
	problemOf(t, first, http.StatusConflict)
	if _, err := e.pool.Exec(t.Context(), `DELETE FROM test`); err != nil {
		t.Fatal(err)
	}
	sameAnswer(t, first, keyed(t, e.h, "k", `[{"name": "Ann"}, {"name": "Bob"}]`))
	if names := tableNames(t, e.pool); len(names) != 0 {
		t.Fatalf("a replayed 409 stored %q", names)
	}
}

// TestIdempotencyFailureNotKept: a 503 is not an answer to keep: the key is
// freed, and the retry runs the create afresh.
func TestIdempotencyFailureNotKept(t *testing.T) {
	t.Parallel()
	lim := testLimits
	lim.RequestTimeout = 500 * time.Millisecond
	e := mustEnvURL(t, dbtest.NewSchema(t), lim)
	tx := lockTable(t, e.pool)
	problemOf(t, keyed(t, e.h, "k", `{"name": "Bob"}`), http.StatusServiceUnavailable)
	if err := tx.Rollback(t.Context()); err != nil {
		t.Fatal(err)
	}
	// The request timed out, so the key is freed just after its 503.
	dbtest.WaitFor(t, "the key freed after a 503", 5*time.Second, func() bool { return keyRows(t, e) == 0 })
	if res := keyed(t, e.h, "k", `{"name": "Bob"}`); res.status != http.StatusCreated {
		t.Fatalf("retry after a 503: %d %s, want 201", res.status, res.body)
	}
}

// TestIdempotencyExpiry: after IDEMPOTENCY_TTL a key is free again, and
// PurgeKeys deletes it. The key's age is set in the table rather than
// waited for.
func TestIdempotencyExpiry(t *testing.T) {
	t.Parallel()
	const ttl = time.Hour
	url := dbtest.NewSchema(t)
	e := mustEnvURL(t, url, testLimits)
	h := api.NewHandler(slog.New(slog.DiscardHandler), e.st, testLimits, api.IdempotencyTTL(ttl))
	age := func(d time.Duration) {
		t.Helper()
		if _, err := e.pool.Exec(t.Context(), `UPDATE idempotency_keys SET created_at = now() - make_interval(secs => $1)`, d.Seconds()); err != nil {
			t.Fatal(err)
		}
	}
	if res := keyed(t, h, "k", `{"name": "Bob"}`); res.status != http.StatusCreated {
		t.Fatalf("first: %d %s", res.status, res.body)
	}
	age(ttl - time.Minute)
	problemOf(t, keyed(t, h, "k", `{"name": "Ann"}`), http.StatusUnprocessableEntity) // still remembered
	if n, err := e.st.PurgeKeys(t.Context(), ttl); err != nil || n != 0 {
		t.Fatalf("PurgeKeys before expiry: %d, %v; want 0", n, err)
	}

	age(ttl + time.Minute)
	if res := keyed(t, h, "k", `{"name": "Ann"}`); res.status != http.StatusCreated {
		t.Fatalf("expired key with a new body: %d %s, want 201", res.status, res.body)
	}
	wantNames(t, e.pool, "Bob", "Ann")
	age(ttl + time.Minute)
	if n, err := e.st.PurgeKeys(t.Context(), ttl); err != nil || n != 1 {
		t.Fatalf("PurgeKeys after expiry: %d, %v; want 1", n, err)
	}
	if n := keyRows(t, e); n != 0 {
		t.Fatalf("%d keys left after the purge", n)
	}
}

// TestIdempotencyAbandoned: a key left in flight by a request that never
// finished (its replica crashed) blocks retries only until a request could
// have run; then the next request with it takes it over.
func TestIdempotencyAbandoned(t *testing.T) {
	t.Parallel()
	e := mustEnv(t)
	insert := func(age time.Duration) {
		t.Helper()
		_, err := e.pool.Exec(t.Context(), `
INSERT INTO idempotency_keys (key, fingerprint, claim, created_at)
VALUES ('k', 'x', 'crashed', now() - make_interval(secs => $1))
ON CONFLICT (key) DO UPDATE SET created_at = excluded.created_at`, age.Seconds())
		if err != nil {
			t.Fatal(err)
		}
	}
	insert(0)
	problemOf(t, keyed(t, e.h, "k", `{"name": "Bob"}`), http.StatusUnprocessableEntity) // another fingerprint, in flight
	insert(testLimits.RequestTimeout + time.Minute)
	if res := keyed(t, e.h, "k", `{"name": "Bob"}`); res.status != http.StatusCreated {
		t.Fatalf("abandoned key: %d %s, want 201", res.status, res.body)
	}
}

// TestIdempotencyAcrossRestart: keys live in the database, so a new
// process (a new pool, store and handler on the same schema) replays them.
func TestIdempotencyAcrossRestart(t *testing.T) {
	t.Parallel()
	url := dbtest.NewSchema(t)
	before := mustEnvURL(t, url, testLimits)
	first := mustCreated(t, "first", keyed(t, before.h, "k", `{"name": "Bob"}`))
	before.pool.Close()
	after := mustEnvURL(t, url, testLimits)
	sameAnswer(t, first, keyed(t, after.h, "k", `{"name": "Bob"}`))
	wantNames(t, after.pool, "Bob")
}

// TestIdempotencyKeyInvalid: a key that is empty, too long, not printable
// ASCII, or sent twice is a 400, and nothing is stored.
func TestIdempotencyKeyInvalid(t *testing.T) {
	t.Parallel()
	e := mustEnv(t)
	for name, keys := range map[string][]string{
		"Empty":    {""},
		"TooLong":  {strings.Repeat("k", 256)},
		"NonASCII": {"clé"},
		"Control":  {"a\x01b"},
		"DEL":      {"a\x7fb"},
		"Twice":    {"a", "b"},
	} {
		t.Run(name, func(t *testing.T) {
			req := newRequest("POST", "/tests", `{"name": "Bob"}`)
			for _, k := range keys {
				req.Header.Add("Idempotency-Key", k)
			}
			p := problemOf(t, serve(t, e.h, req), http.StatusBadRequest)
			if !strings.Contains(p.Detail, "Idempotency-Key") {
				t.Fatalf("detail %q", p.Detail)
			}
		})
	}
	// The longest key is fine.
	if res := keyed(t, e.h, strings.Repeat("k", 255), `{"name": "Bob"}`); res.status != http.StatusCreated {
		t.Fatalf("255-character key: %d %s", res.status, res.body)
	}
	wantNames(t, e.pool, "Bob")
}
