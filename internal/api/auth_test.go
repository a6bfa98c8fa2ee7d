package api_test

import (
	"log/slog"
	"net/http"
	"strings"
	"testing"

	"github.com/ybrest/testsapi/internal/api"
)

// TestAuth: with a token configured, POST /tests needs it as a Bearer
// token (401 with a challenge otherwise, nothing stored) and reads stay
// open.
func TestAuth(t *testing.T) {
	t.Parallel()
	const token = "s3cr3t-T0ken_~+/=="
	e := mustEnv(t)
	h := api.NewHandler(slog.New(slog.DiscardHandler), e.st, testLimits, api.RequireToken(token))
	for name, tc := range map[string]struct {
		auth      []string
		challenge string
	}{
		"Missing":         {nil, `Bearer realm="tests"`},
		"OtherScheme":     {[]string{"Basic " + token}, `Bearer realm="tests"`},
		"SchemeOnly":      {[]string{"Bearer"}, `Bearer realm="tests"`},
		"Wrong":           {[]string{"Bearer nope"}, `Bearer realm="tests", error="invalid_token"`},
		"Prefix":          {[]string{"Bearer " + token[:len(token)-1]}, `Bearer realm="tests", error="invalid_token"`},
		"Longer":          {[]string{"Bearer " + token + "x"}, `Bearer realm="tests", error="invalid_token"`},
		"TrailingGarbage": {[]string{"Bearer " + token + " x"}, `Bearer realm="tests", error="invalid_token"`},
		"Twice":           {[]string{"Bearer " + token, "Bearer " + token}, `Bearer realm="tests"`},
	} {
		t.Run(name, func(t *testing.T) {
			var header []string
			if len(tc.auth) == 1 {
				header = []string{"Authorization", tc.auth[0]}
			}
			req := newRequest("POST", "/tests", `{"name": "Bob"}`, header...)
			if len(tc.auth) > 1 {
				for _, a := range tc.auth {
					req.Header.Add("Authorization", a)
				}
			}
			res := serve(t, h, req)
			p := problemOf(t, res, http.StatusUnauthorized)
			if got := res.header.Get("WWW-Authenticate"); got != tc.challenge {
				t.Fatalf("WWW-Authenticate %q, want %q", got, tc.challenge)
			}
			if strings.Contains(string(res.body), token) {
				t.Fatalf("401 body shows the token: %s (%+v)", res.body, p)
			}
		})
	}
	if names := tableNames(t, e.pool); len(names) != 0 {
		t.Fatalf("unauthenticated requests stored %q", names)
	}

	// Bad input is not looked at before the token is checked.
	problemOf(t, do(t, h, "POST", "/tests", `not json`), http.StatusUnauthorized)

	for _, auth := range []string{"Bearer " + token, "bearer " + token, "BEARER  " + token} {
		res := do(t, h, "POST", "/tests", `[{"name": "`+auth[:6]+`"}]`, "Authorization", auth)
		if res.status != http.StatusCreated {
			t.Fatalf("Authorization %q: %d %s, want 201", auth, res.status, res.body)
		}
	}
	for _, path := range []string{"/tests", "/tests/1", "/healthz", "/readyz", "/openapi.yaml"} {
		if res := do(t, h, "GET", path, ""); res.status != http.StatusOK {
			t.Fatalf("GET %s without a token: %d %s, want 200", path, res.status, res.body)
		}
	}
	// Without the option, writes need no token.
	if res := do(t, e.h, "POST", "/tests", `{"name": "open"}`); res.status != http.StatusCreated {
		t.Fatalf("POST without a token configured: %d %s", res.status, res.body)
	}
}
