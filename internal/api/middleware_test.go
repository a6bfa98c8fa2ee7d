package api_test

import (
	"bytes"
	"context"
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
		waiting, err := dbtest.LockWaits(t.Context(), e.pool, "test")
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
