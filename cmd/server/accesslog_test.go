package main_test

import (
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/ybrest/testsapi/internal/dbtest"
)

// TestAccessLog checks the line a request leaves in the log: the client's
// request id, the route pattern rather than the raw path, the status and
// the duration.
func TestAccessLog(t *testing.T) {
	t.Parallel()
	p := startReady(t, dbtest.NewSchema(t))
	row := mustCreate(t, p, "logged")

	r := p.mustDo(t, http.MethodGet, "/tests/"+strconv.Itoa(int(row.ID)), "", "X-Request-Id", "abc123")
	if r.status != http.StatusOK {
		t.Fatalf("GET /tests/%d: %d %s, want 200", row.ID, r.status, r.body)
	}
	if got := r.header.Get("X-Request-Id"); got != "abc123" {
		t.Errorf("response X-Request-Id %q, want abc123", got)
	}

	// The line is written as the handler returns, possibly after the client
	// has its response.
	var line logEntry
	dbtest.WaitFor(t, "access log line for request abc123", 10*time.Second, func() bool {
		for _, e := range p.logEntries() {
			if e["msg"] == "request" && e["request_id"] == "abc123" {
				line = e
				return true
			}
		}
		return false
	})
	for key, want := range map[string]any{
		"method": "GET",
		"route":  "/tests/{id}",
		"status": float64(http.StatusOK),
		"bytes":  float64(len(r.body)),
	} {
		if got := line[key]; got != want {
			t.Errorf("access log %s = %#v, want %#v; line %v", key, got, want, line)
		}
	}
	if d, ok := line["duration_ms"].(float64); !ok || d < 0 {
		t.Errorf("access log duration_ms = %#v, want a non-negative number; line %v", line["duration_ms"], line)
	}
}
