package api_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"syscall"
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
		// A statement cancelled by the service itself (a shared batch or
		// page query that everyone else left), the client still there.
		{"CancelledByService", fmt.Errorf("query: %w", context.Canceled), http.StatusServiceUnavailable},
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

// TestClientGone: a cancelled request whose client closed its connection
// is logged as 499 (nobody reads the answer); the same error with the
// client still there is a 503 (TestFailures, CancelledByService).
func TestClientGone(t *testing.T) {
	t.Parallel()
	h := api.NewHandler(slog.New(slog.DiscardHandler), failingStore{fmt.Errorf("query: %w", context.Canceled)}, testLimits)
	for _, rq := range []struct{ method, path, body string }{
		{"POST", "/tests", `{"name": "a"}`},
		{"GET", "/tests", ""},
		{"GET", "/tests/1", ""},
	} {
		ctx, cancel := context.WithCancel(t.Context())
		cancel() // as net/http does when the client's connection closes
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, newRequest(rq.method, rq.path, rq.body).WithContext(ctx))
		if rec.Code != 499 {
			t.Errorf("%s %s, client gone: %d, want 499 (for the access log)", rq.method, rq.path, rec.Code)
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

// TestExportStallMidStream: the database goes silent (a blackhole in the
// proxy between the service and PostgreSQL) in the middle of a 200,000-row
// export. The export is cut, visibly (the client's read fails), within
// ExportStallTimeout of the last row; its pool connection and its export
// slot (MaxExports is 1 here) are freed, even while the network stays
// silent, so the next export, once the network is back, runs whole.
func TestExportStallMidStream(t *testing.T) {
	t.Parallel()
	const (
		rows   = 200_000
		stall  = time.Second
		margin = time.Second
	)
	url := dbtest.NewSchema(t)
	px := dbtest.NewProxy(t, url)
	lim := testLimits
	lim.MaxExports = 1
	lim.ExportStallTimeout = stall
	e := mustEnvURL(t, px.URL(url), lim)
	// Long names, so that the export (about 24 MB) is far more than the
	// socket buffers between PostgreSQL and the client can hold.
	if _, err := e.pool.Exec(t.Context(), `INSERT INTO test (name) SELECT repeat('x', 100) || i FROM generate_series(1, $1) AS i`, rows); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(e.h)
	defer srv.Close()
	export := func(ctx context.Context) (*http.Response, error) {
		req, err := http.NewRequestWithContext(ctx, "GET", srv.URL+"/tests", nil)
		if err != nil {
			return nil, err
		}
		req.Header.Set("Accept", "application/x-ndjson")
		return srv.Client().Do(req)
	}

	// Without the stall bound the export would wait for ever: the test's
	// own bound is 20 s.
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	res, err := export(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		t.Fatalf("export: %d", res.StatusCode)
	}
	buf := make([]byte, 32<<10)
	if _, err := io.ReadFull(res.Body, buf[:4096]); err != nil {
		t.Fatalf("first 4 KB of the export: %v", err)
	}
	if err := px.Blackhole(); err != nil {
		t.Fatal(err)
	}
	got, lastRead := 4096, time.Now()
	for {
		n, err := res.Body.Read(buf)
		if n > 0 {
			got, lastRead = got+n, time.Now()
		}
		if err == io.EOF {
			t.Fatalf("the export read as complete (%d bytes) although the database went silent", got)
		}
		if err != nil {
			cutAfter := time.Since(lastRead)
			if cutAfter > stall+margin {
				t.Errorf("export cut %s after its last bytes, want within %s (ExportStallTimeout %s): %v", cutAfter, stall+margin, stall, err)
			}
			t.Logf("export cut %s after its last bytes (%d bytes read): %v", cutAfter.Round(time.Millisecond), got, err)
			break
		}
	}
	// pgx closes a connection cut by a cancel in the background, trying
	// a cancel request and draining it for up to 15 s, and the pool counts
	// it until then: on a network that swallows everything that is the
	// whole 15 s.
	cut := time.Now()
	dbtest.WaitFor(t, "the export's pool connection freed", 20*time.Second, func() bool { return e.pool.Stat().AcquiredConns() == 0 })
	t.Logf("the pool let the export's connection go %s after the cut", time.Since(cut).Round(time.Millisecond))

	px.Clear()
	res2, err := export(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer res2.Body.Close()
	b, err := io.ReadAll(res2.Body)
	if res2.StatusCode != http.StatusOK || err != nil {
		t.Fatalf("export after the stall: %d, %v after %d bytes; want the export slot free and a whole export", res2.StatusCode, err, len(b))
	}
	if n := bytes.Count(b, []byte("\n")); n != rows {
		t.Fatalf("export after the stall: %d rows, want %d", n, rows)
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

// slowListener gives every accepted connection a small send buffer, so that
// a client that stops reading blocks the server's writes at once instead of
// after megabytes of kernel buffers.
type slowListener struct{ net.Listener }

func (l slowListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetWriteBuffer(4096)
	}
	return c, err
}

// TestExportClientStopsReading: a client that keeps its connection but
// stops reading an export gets cut at the write timeout, and the export's
// query ends then, not once it is read to its end: its export slot is free
// at once, even when the rest of the result would take long to arrive (here
// a slow link from the database, 256 KB/s, with several MB still to come).
// What ends the query is net/http: a failed write to the client cancels the
// request's context, which the query runs under.
func TestExportClientStopsReading(t *testing.T) {
	t.Parallel()
	url := dbtest.NewSchema(t)
	px := dbtest.NewProxy(t, url)
	lim := testLimits
	lim.MaxExports = 1
	lim.WriteTimeout = 300 * time.Millisecond
	lim.ExportStallTimeout = time.Minute // not the bound under test
	e := mustEnvURL(t, px.URL(url), lim)
	if _, err := e.pool.Exec(t.Context(), `INSERT INTO test (name) SELECT repeat('x', 100) || i FROM generate_series(1, 50000) AS i`); err != nil {
		t.Fatal(err)
	}
	if err := px.Bandwidth(256); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(e.h)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv.Listener = slowListener{ln}
	srv.Start()
	defer srv.Close()

	// The reader that stops: it sends the request, reads a little, then
	// keeps the connection open without reading.
	d := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		return c.Control(func(fd uintptr) { _ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
	}}
	conn, err := d.DialContext(t.Context(), "tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte("GET /tests HTTP/1.1\r\nHost: x\r\nAccept: application/x-ndjson\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(conn, make([]byte, 1024)); err != nil {
		t.Fatalf("the start of the export: %v", err)
	}
	stopped := time.Now()

	// Another export gets the one slot once the first is cut: at the write
	// timeout plus a little, not once the rest of the result has come
	// over the slow link (20 s and more).
	var status int
	for time.Since(stopped) < 15*time.Second {
		req, _ := http.NewRequestWithContext(t.Context(), "GET", srv.URL+"/tests?limit=1", nil)
		req.Header.Set("Accept", "application/x-ndjson")
		res, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, res.Body)
		res.Body.Close()
		if status = res.StatusCode; status == http.StatusOK {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	took := time.Since(stopped)
	if status != http.StatusOK || took > 5*time.Second {
		t.Fatalf("the next export got %d %s after the first client stopped reading; want 200 within 5 s (write timeout %s)", status, took.Round(time.Millisecond), lim.WriteTimeout)
	}
	t.Logf("the export slot was free %s after the client stopped reading", took.Round(time.Millisecond))
}
