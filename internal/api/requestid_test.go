package api_test

import (
	"log/slog"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"

	"github.com/ybrest/testsapi/internal/api"
)

// TestRequestID: a client's X-Request-Id is echoed only when it is a short
// token of safe characters; anything else is replaced by a generated id,
// so a client cannot put megabytes or control characters into every log
// line and response of its request.
func TestRequestID(t *testing.T) {
	t.Parallel()
	h := api.NewHandler(slog.New(slog.DiscardHandler), failingStore{}, testLimits)
	safe := regexp.MustCompile(`^[A-Za-z0-9._:-]{1,64}$`)
	tests := []struct {
		name string
		ids  []string
		echo bool
	}{
		{"UUID", []string{"3f2c9a1e-5b7d-4c8e-9f10-2a3b4c5d6e7f"}, true},
		{"Longest", []string{strings.Repeat("a", 64)}, true},
		{"TraceParent", []string{"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}, true},
		{"Absent", nil, false},
		{"TooLong", []string{strings.Repeat("a", 65)}, false},
		{"Huge", []string{strings.Repeat("a", 100000)}, false},
		{"Space", []string{"a b"}, false},
		{"Markup", []string{"<script>alert(1)</script>"}, false},
		{"Quote", []string{`a"b`}, false},
		{"NonASCII", []string{"é"}, false},
		{"Control", []string{"a\x1bb"}, false},
		{"Twice", []string{"one", "two"}, false},
	}
	seen := map[string]bool{}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req := httptest.NewRequest("GET", "/healthz", nil)
			for _, id := range tc.ids {
				req.Header.Add("X-Request-Id", id)
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			got := rec.Header().Get("X-Request-Id")
			if tc.echo {
				if got != tc.ids[0] {
					t.Fatalf("X-Request-Id %q, want the client's %q", got, tc.ids[0])
				}
				return
			}
			if !safe.MatchString(got) || (len(tc.ids) > 0 && got == tc.ids[0]) {
				t.Fatalf("X-Request-Id %q: want a generated safe id", got)
			}
			if strings.Contains(got, "/") || seen[got] {
				t.Fatalf("generated id %q repeats or carries a host name", got)
			}
			seen[got] = true
		})
	}
}
