package main_test

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ybrest/testsapi/internal/dbtest"
)

// TestAPIToken runs the server with a token, from API_TOKEN or from the
// file API_TOKEN_FILE names (trailing newline trimmed): POST needs it, GET
// does not, and neither the token nor a wrong one a client sends ever
// reaches the output, even at debug level.
func TestAPIToken(t *testing.T) {
	t.Parallel()
	const (
		token = "env-t0ken-s3cret"
		wrong = "wr0ng-guess-s3cret"
	)
	file := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(file, []byte("file-t0ken-s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct{ env, token string }{
		"Env":  {"API_TOKEN=" + token, token},
		"File": {"API_TOKEN_FILE=" + file, "file-t0ken-s3cret"},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			dbURL := dbtest.NewSchema(t)
			p := startReady(t, dbURL, tc.env, "LOG_LEVEL=debug")
			for _, auth := range []string{"", "Bearer " + wrong, "Basic " + tc.token} {
				r := p.mustDo(t, http.MethodPost, "/tests", nameBody("x"), "Authorization", auth)
				if r.status != http.StatusUnauthorized || !strings.HasPrefix(r.header.Get("WWW-Authenticate"), "Bearer") {
					t.Errorf("POST with Authorization %q: %d %q %s, want 401 with a Bearer challenge",
						auth, r.status, r.header.Get("WWW-Authenticate"), r.body)
				}
				if ct := r.header.Get("Content-Type"); ct != "application/problem+json" {
					t.Errorf("401 with Content-Type %q", ct)
				}
			}
			r := p.mustDo(t, http.MethodPost, "/tests", nameBody("authorized"), "Authorization", "Bearer "+tc.token)
			if r.status != http.StatusCreated {
				t.Fatalf("POST with the token: %d %s, want 201", r.status, r.body)
			}
			if r := p.mustDo(t, http.MethodGet, "/tests", ""); r.status != http.StatusOK {
				t.Errorf("GET /tests without a token: %d %s, want 200", r.status, r.body)
			}
			if rows := mustRows(t, dbURL); len(rows) != 1 {
				t.Errorf("table holds %v, want only the authorized row", rows)
			}

			// Stop it, so that the log is complete.
			_ = p.cmd.Process.Signal(os.Interrupt)
			p.waitExit(t, exitWithin)
			out := p.stdout.text() + p.stderr.text()
			for _, secret := range []string{tc.token, wrong} {
				if strings.Contains(out, secret) {
					t.Errorf("the output shows %q:\n%s", secret, out)
				}
			}
			if n := strings.Count(out, `"status":401`); n != 3 {
				t.Errorf("%d access log lines with status 401, want 3", n)
			}
		})
	}
}
