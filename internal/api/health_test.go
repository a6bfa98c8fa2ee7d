package api_test

import (
	"bytes"
	"net/http"
	"testing"
)

func TestHealthAndSpec(t *testing.T) {
	t.Parallel()
	e := mustEnv(t)
	for _, path := range []string{"/healthz", "/readyz"} {
		res := do(t, e.h, "GET", path, "")
		if res.status != http.StatusOK || string(bytes.TrimSpace(res.body)) != `{"status":"ok"}` {
			t.Fatalf("%s: %d %s", path, res.status, res.body)
		}
	}
	res := do(t, e.h, "GET", "/openapi.yaml", "")
	if res.status != http.StatusOK || !bytes.HasPrefix(res.body, []byte("openapi: 3.0.3")) {
		t.Fatalf("/openapi.yaml: %d %.40q", res.status, res.body)
	}
	for _, h := range []string{"X-Content-Type-Options", "X-Request-Id"} {
		if res.header.Get(h) == "" {
			t.Errorf("no %s header", h)
		}
	}
	if s := res.header.Get("Server"); s != "" {
		t.Errorf("Server header %q gives the version away", s)
	}
	res = do(t, e.h, "GET", "/healthz", "", "X-Request-Id", "abc-123")
	if id := res.header.Get("X-Request-Id"); id != "abc-123" {
		t.Fatalf("X-Request-Id %q, want the client's abc-123", id)
	}
}
