package api_test

import (
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
)

func TestRouting(t *testing.T) {
	t.Parallel()
	e := mustEnv(t)
	problemOf(t, do(t, e.h, "GET", "/nope", ""), http.StatusNotFound)
	problemOf(t, do(t, e.h, "GET", "/tests/1/more", ""), http.StatusNotFound)
	tests := []struct{ method, path, allow string }{
		{"DELETE", "/tests", "GET, HEAD, POST"},
		{"PUT", "/tests", "GET, HEAD, POST"},
		{"POST", "/tests/1", "GET, HEAD, PATCH, DELETE"},
		{"PUT", "/tests/1", "GET, HEAD, PATCH, DELETE"},
		{"PATCH", "/tests", "GET, HEAD, POST"},
		{"POST", "/healthz", "GET, HEAD"},
	}
	for _, tc := range tests {
		t.Run(tc.method+tc.path, func(t *testing.T) {
			res := do(t, e.h, tc.method, tc.path, "")
			problemOf(t, res, http.StatusMethodNotAllowed)
			if a := res.header.Get("Allow"); a != tc.allow {
				t.Fatalf("Allow %q, want %q", a, tc.allow)
			}
		})
	}
}

// TestHead: every GET resource answers HEAD with the GET's status and
// headers (openapi.yaml lists only GET, so this bypasses the spec check).
func TestHead(t *testing.T) {
	t.Parallel()
	e := mustEnv(t)
	bob := mustCreate(t, e.h, "Bob")[0]
	for path, want := range map[string]int{"/tests": 200, "/tests/" + strconv.Itoa(int(bob.ID)): 200,
		"/tests/999999": 404, "/healthz": 200, "/readyz": 200, "/openapi.yaml": 200} {
		rec := httptest.NewRecorder()
		e.h.ServeHTTP(rec, httptest.NewRequest("HEAD", path, nil))
		if rec.Code != want || rec.Header().Get("Content-Type") == "" {
			t.Errorf("HEAD %s: %d %q, want %d", path, rec.Code, rec.Header().Get("Content-Type"), want)
		}
	}
}
