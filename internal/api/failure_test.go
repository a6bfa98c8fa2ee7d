package api_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ybrest/testsapi/internal/api"
	"github.com/ybrest/testsapi/internal/dbtest"
	"github.com/ybrest/testsapi/internal/store"
)

// failingStore injects failures a real database cannot easily produce on
// demand: every method returns err, or panics when err is nil.
type failingStore struct{ err error }

func (f failingStore) fail() error {
	if f.err == nil {
		panic("store exploded")
	}
	return f.err
}
func (f failingStore) Create(context.Context, string) (store.Test, error) {
	return store.Test{}, f.fail()
}
func (f failingStore) CreateMany(context.Context, []string) ([]store.Test, error) {
	return nil, f.fail()
}
func (f failingStore) CreateOnce(context.Context, store.KeyedCreate, func([]store.Test, error) store.Response) (store.Response, error) {
	return store.Response{}, f.fail()
}
func (f failingStore) Get(context.Context, int64) (store.Test, error) { return store.Test{}, f.fail() }
func (f failingStore) List(context.Context, int64, int) ([]store.Test, error) {
	return nil, f.fail()
}
func (f failingStore) Stream(context.Context, int64, int, func(store.Test) error) error {
	return f.fail()
}
func (f failingStore) Ping(context.Context) error { return f.fail() }
func (f failingStore) RenameOnce(context.Context, store.KeyedRename, func(store.Test, error) store.Response) (store.Response, error) {
	return store.Response{}, f.fail()
}
func (f failingStore) Rename(context.Context, int64, string, store.Match) (store.Test, error) {
	return store.Test{}, f.fail()
}
func (f failingStore) Delete(context.Context, int64, store.Match) error { return f.fail() }
func (f failingStore) FindByName(context.Context, string, int64) ([]store.Test, error) {
	return nil, f.fail()
}

// secret stands for driver or SQL text that must never reach a client.
const secret = `ERROR: relation "test" SELECT id, name FROM test (SQLSTATE 42P01) at pgx.go:123`

func TestFailures(t *testing.T) {
	t.Parallel()
	requests := []struct{ method, path, body, accept string }{
		{"POST", "/tests", `{"name": "a"}`, ""},
		{"POST", "/tests", `[{"name": "a"}]`, ""},
		{"GET", "/tests", "", ""},
		{"GET", "/tests", "", "application/x-ndjson"},
		{"GET", "/tests", "", "text/csv"},
		{"GET", "/tests/1", "", ""},
		{"GET", "/readyz", "", ""},
	}
	tests := []struct {
		name   string
		err    error
		status int
	}{
		{"Unavailable", fmt.Errorf("query: %w: %s", store.ErrUnavailable, secret), http.StatusServiceUnavailable},
		{"Timeout", fmt.Errorf("query: %w", context.DeadlineExceeded), http.StatusServiceUnavailable},
		{"Internal", errors.New(secret), http.StatusInternalServerError},
		{"Panic", nil, http.StatusInternalServerError},
	}
	for _, tc := range tests {
		h := api.NewHandler(slog.New(slog.DiscardHandler), failingStore{tc.err}, testLimits)
		for _, rq := range requests {
			t.Run(tc.name+rq.method+rq.path+rq.accept+rq.body, func(t *testing.T) {
				res := do(t, h, rq.method, rq.path, rq.body, "Accept", rq.accept)
				want := tc.status
				if rq.path == "/readyz" && tc.err != nil {
					want = http.StatusServiceUnavailable // any failed ping means "not ready"
				}
				problemOf(t, res, want)
				if want == http.StatusServiceUnavailable && res.header.Get("Retry-After") == "" {
					t.Fatal("503 without Retry-After")
				}
				for _, leak := range []string{"SQLSTATE", "SELECT", "pgx", "store exploded", "goroutine"} {
					if strings.Contains(string(res.body), leak) {
						t.Fatalf("response leaks %q: %s", leak, res.body)
					}
				}
			})
		}
	}
}

// midStreamStore fails after some rows have been sent.
type midStreamStore struct{ failingStore }

func (midStreamStore) Stream(_ context.Context, _ int64, _ int, fn func(store.Test) error) error {
	for i := range 5000 {
		if err := fn(store.Test{ID: int32(i + 1), Name: "row"}); err != nil {
			return err
		}
	}
	return fmt.Errorf("%w: connection reset", store.ErrUnavailable)
}

// getExport sends GET /tests with accept to srv; the caller reads and
// closes the body.
func getExport(t *testing.T, srv *httptest.Server, accept string) *http.Response {
	t.Helper()
	req, err := http.NewRequest("GET", srv.URL+"/tests", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", accept)
	res, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// TestStreamFailureAborts checks that an export that fails midway does not
// look complete: the status is already 200, so the connection is cut and
// the client's read fails instead of ending cleanly.
func TestStreamFailureAborts(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(api.NewHandler(slog.New(slog.DiscardHandler), midStreamStore{}, testLimits))
	defer srv.Close()
	for _, accept := range []string{"application/x-ndjson", "text/csv"} {
		res := getExport(t, srv, accept)
		body, err := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != http.StatusOK || err == nil {
			t.Fatalf("%s: status %d, read error %v after %d bytes; want 200 and a failed read", accept, res.StatusCode, err, len(body))
		}
	}
}

// panicStore panics after its first row, once an export has begun.
type panicStore struct{ failingStore }

func (panicStore) Stream(_ context.Context, _ int64, _ int, fn func(store.Test) error) error {
	for i := range 5000 { // past the first flush, so the status is sent
		if err := fn(store.Test{ID: int32(i + 1), Name: "row"}); err != nil {
			return err
		}
	}
	panic("a bug after the response began")
}

// TestPanicAfterResponseBegan: a panic once the status is sent cuts the
// connection, and is still logged with its stack; an unmatched path is
// logged with the route "unmatched", as the metrics label it.
func TestPanicAfterResponseBegan(t *testing.T) {
	t.Parallel()
	var logs syncBuffer
	srv := httptest.NewServer(api.NewHandler(slog.New(slog.NewJSONHandler(&logs, nil)), panicStore{}, testLimits))
	defer srv.Close()
	res := getExport(t, srv, "application/x-ndjson")
	_, err := io.ReadAll(res.Body)
	res.Body.Close()
	if err == nil {
		t.Fatal("an export that panicked midway read as complete")
	}
	if res, err := srv.Client().Get(srv.URL + "/no/such/path"); err == nil {
		res.Body.Close()
	}
	srv.Close() // every handler has returned: the log is complete
	out := logs.String()
	for _, want := range []string{`"msg":"panic"`, `"panic":"a bug after the response began"`, `"stack":"goroutine`, `"route":"unmatched"`} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %s:\n%s", want, out)
		}
	}
}

// syncBuffer is a bytes.Buffer safe for the server's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestRequestTimeout holds a lock the insert needs: the request must end
// at the configured timeout with a 503, and its statement must stop on the
// server rather than run on after the client got its answer.
func TestRequestTimeout(t *testing.T) {
	t.Parallel()
	lim := testLimits
	lim.RequestTimeout = 500 * time.Millisecond
	e := mustEnvURL(t, dbtest.NewSchema(t), lim)
	tx := lockTable(t, e.pool)
	start := time.Now()
	for _, rq := range []struct{ method, path, body string }{
		{"POST", "/tests", `{"name": "slow"}`},
		{"GET", "/tests", ""},
		{"GET", "/tests/1", ""},
	} {
		res := do(t, e.h, rq.method, rq.path, rq.body)
		problemOf(t, res, http.StatusServiceUnavailable)
	}
	took := time.Since(start)
	if took > 5*time.Second {
		t.Fatalf("three timed-out requests took %s", took)
	}
	// The cancelled statements are gone from the server: only the lock
	// holder's session remains for this schema's table.
	deadline := time.Now().Add(5 * time.Second)
	for {
		var waiting int
		err := e.pool.QueryRow(t.Context(), `
SELECT count(*)
FROM pg_locks l
JOIN pg_class c ON c.oid = l.relation
WHERE c.relname = 'test' AND c.relnamespace = current_schema()::regnamespace AND NOT l.granted`).Scan(&waiting)
		if err != nil {
			t.Fatal(err)
		}
		if waiting == 0 {
			t.Logf("3 requests answered 503 in %s (timeout %s); no statement waiting on the server %s later",
				took.Round(time.Millisecond), lim.RequestTimeout, time.Since(start.Add(took)).Round(time.Millisecond))
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d statements still waiting on the server after their requests timed out", waiting)
		}
		time.Sleep(50 * time.Millisecond)
	}
	tx.Rollback(context.Background())
	if names := tableNames(t, e.pool); len(names) != 0 {
		t.Fatalf("timed-out create stored %q", names)
	}
}

// blockingStore's Stream sends nothing until its context ends, like a
// database that accepted the query and then stalled.
type blockingStore struct {
	failingStore
	entered chan struct{}
}

func (b blockingStore) Stream(ctx context.Context, _ int64, _ int, _ func(store.Test) error) error {
	b.entered <- struct{}{}
	<-ctx.Done()
	return ctx.Err()
}

// TestExportStalledDatabase: an export waits for its first row no longer
// than the request timeout, then answers 503 like any other request.
func TestExportStalledDatabase(t *testing.T) {
	t.Parallel()
	lim := testLimits
	lim.RequestTimeout = 300 * time.Millisecond
	h := api.NewHandler(slog.New(slog.DiscardHandler), blockingStore{entered: make(chan struct{}, 10)}, lim)
	start := time.Now()
	res := do(t, h, "GET", "/tests", "", "Accept", "application/x-ndjson")
	problemOf(t, res, http.StatusServiceUnavailable)
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("stalled export answered after %s", d)
	}
}

// lateRowStore's first row comes just as the first-row timeout fires.
type lateRowStore struct{ failingStore }

func (lateRowStore) Stream(ctx context.Context, _ int64, _ int, fn func(store.Test) error) error {
	<-ctx.Done()
	return fn(store.Test{ID: 1, Name: "late"})
}

// TestExportFirstRowAtTimeout: a first row that arrives as the first-row
// timeout fires still gets the 503 problem, not a 200 cut off mid-way.
func TestExportFirstRowAtTimeout(t *testing.T) {
	t.Parallel()
	lim := testLimits
	lim.RequestTimeout = 100 * time.Millisecond
	h := api.NewHandler(slog.New(slog.DiscardHandler), lateRowStore{}, lim)
	problemOf(t, do(t, h, "GET", "/tests", "", "Accept", "text/csv"), http.StatusServiceUnavailable)
}

// TestExportCap: exports beyond MaxExports get a 503 at once instead of
// taking more database connections.
func TestExportCap(t *testing.T) {
	t.Parallel()
	lim := testLimits
	lim.RequestTimeout = 2 * time.Second
	st := blockingStore{entered: make(chan struct{}, 10)}
	h := api.NewHandler(slog.New(slog.DiscardHandler), st, lim)
	done := make(chan int, lim.MaxExports)
	for range lim.MaxExports {
		go func() {
			rec := httptest.NewRecorder()
			req := httptest.NewRequest("GET", "/tests", nil)
			req.Header.Set("Accept", "text/csv")
			h.ServeHTTP(rec, req)
			done <- rec.Code
		}()
	}
	for range lim.MaxExports {
		<-st.entered
	}
	p := problemOf(t, do(t, h, "GET", "/tests", "", "Accept", "text/csv"), http.StatusServiceUnavailable)
	if !strings.Contains(p.Detail, "exports") {
		t.Fatalf("detail %q", p.Detail)
	}
	// JSON pages are not exports and are not capped.
	do(t, h, "GET", "/tests", "") // answered (500 from failingStore), not refused by the cap
	for range lim.MaxExports {
		<-done
	}
}

// slowStore streams rows slowly, like a large table read by a slow client.
type slowStore struct{ failingStore }

func (slowStore) Stream(ctx context.Context, _ int64, _ int, fn func(store.Test) error) error {
	for i := range 30 {
		time.Sleep(50 * time.Millisecond)
		if err := fn(store.Test{ID: int32(i + 1), Name: strings.Repeat("x", 1000)}); err != nil {
			return err
		}
	}
	return ctx.Err()
}

// TestLongExport: an export may run longer than the server's ReadTimeout
// and WriteTimeout (here 500 ms against 1.5 s of streaming); only a
// stalled client ends it.
func TestLongExport(t *testing.T) {
	t.Parallel()
	lim := testLimits
	lim.WriteTimeout = 500 * time.Millisecond
	srv := httptest.NewUnstartedServer(api.NewHandler(slog.New(slog.DiscardHandler), slowStore{}, lim))
	srv.Config.ReadTimeout = 500 * time.Millisecond
	srv.Config.WriteTimeout = 500 * time.Millisecond
	srv.Start()
	defer srv.Close()
	res := getExport(t, srv, "application/x-ndjson")
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil || strings.Count(string(body), "\n") != 30 {
		t.Fatalf("export cut after %d rows: %v", strings.Count(string(body), "\n"), err)
	}
}
func (f failingStore) Import(context.Context, store.ImportSource, func(store.Test) error) (int64, error) {
	return 0, f.fail()
}
func (f failingStore) Count(context.Context) (int64, error) { return 0, f.fail() }
func (f failingStore) EstimateCount(context.Context) (int64, bool, error) {
	return 0, false, f.fail()
}
