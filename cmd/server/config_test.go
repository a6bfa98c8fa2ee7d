package main_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestBadConfig checks that a configuration mistake stops the process at
// once with a message naming the variable, and that no message ever shows
// the database password or the API token.
func TestBadConfig(t *testing.T) {
	t.Parallel()
	// Where a bad value were accepted, the process would go on to this
	// refusing port and fail on STARTUP_TIMEOUT instead, naming the wrong
	// variable.
	unreachable := func(t *testing.T) string {
		return fmt.Sprintf("DATABASE_URL=postgres://app:s3cretpass@127.0.0.1:%d/app?sslmode=disable", closedPort(t))
	}
	tests := []struct {
		name      string
		env       string // added to a valid configuration, whose DATABASE_URL has a password
		tokenFile string // when set, API_TOKEN_FILE names a file with this content ("-" for no such file)
		naming    string // what stderr must contain
		connects  bool   // the process gets as far as trying the database
	}{
		{name: "MaxConnsNotNumber", env: "DB_MAX_CONNS=abc", naming: "DB_MAX_CONNS"},
		{name: "MaxConnsZero", env: "DB_MAX_CONNS=0", naming: "DB_MAX_CONNS"},
		{name: "RequestTimeoutNotDuration", env: "REQUEST_TIMEOUT=soon", naming: "REQUEST_TIMEOUT"},
		{name: "AcquireTimeoutZero", env: "DB_ACQUIRE_TIMEOUT=0s", naming: "DB_ACQUIRE_TIMEOUT"},
		{name: "MaxBodyBytesNegative", env: "MAX_BODY_BYTES=-1", naming: "MAX_BODY_BYTES"},
		{name: "LogLevelUnknown", env: "LOG_LEVEL=loud", naming: "LOG_LEVEL"},
		{name: "DatabaseURLMalformed", env: "DATABASE_URL=://bad", naming: "DATABASE_URL"},
		{name: "DatabaseURLMalformedWithPassword", env: "DATABASE_URL=postgres://app:s3cretpass@127.0.0.1:notaport/app", naming: "DATABASE_URL"},
		{name: "DatabaseUnreachableWithPassword", naming: "STARTUP_TIMEOUT", connects: true},
		{name: "IdempotencyTTLBelowRequestTimeout", env: "IDEMPOTENCY_TTL=1s", naming: "IDEMPOTENCY_TTL"},
		{name: "ImportMaxBytesZero", env: "IMPORT_MAX_BYTES=0", naming: "IMPORT_MAX_BYTES"},
		{name: "CORSOriginWithPath", env: "CORS_ALLOWED_ORIGINS=https://a.example,https://b.example/", naming: "CORS_ALLOWED_ORIGINS"},
		{name: "CORSOriginNoScheme", env: "CORS_ALLOWED_ORIGINS=a.example", naming: "CORS_ALLOWED_ORIGINS"},
		{name: "TokenTwice", env: "API_TOKEN=s3cretpass", tokenFile: "s3cretpass", naming: "API_TOKEN and API_TOKEN_FILE"},
		{name: "TokenEmpty", env: "API_TOKEN=", naming: "API_TOKEN"},
		{name: "TokenNotBearerSyntax", env: "API_TOKEN=s3cretpass with spaces", naming: "API_TOKEN"},
		{name: "TokenFileEmpty", tokenFile: "\n", naming: "API_TOKEN_FILE"},
		{name: "TokenFileMissing", tokenFile: "-", naming: "API_TOKEN_FILE"},
		{name: "TokenFileNotBearerSyntax", tokenFile: "s3cretpass\tx\n", naming: "API_TOKEN_FILE"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			env := []string{unreachable(t), "STARTUP_TIMEOUT=1s", "DB_CONNECT_TIMEOUT=1s"}
			if tc.env != "" {
				env = append(env, tc.env)
			}
			if tc.tokenFile != "" {
				path := filepath.Join(t.TempDir(), "token")
				if tc.tokenFile != "-" {
					if err := os.WriteFile(path, []byte(tc.tokenFile), 0o600); err != nil {
						t.Fatal(err)
					}
				}
				env = append(env, "API_TOKEN_FILE="+path)
			}
			p := start(t, env...)
			code := p.waitExit(t, exitWithin)
			stdout, stderr := p.stdout.text(), p.stderr.text()
			if code == 0 {
				t.Errorf("exit code 0, want non-zero")
			}
			if !strings.Contains(stderr, tc.naming) {
				t.Errorf("stderr does not name %s:\n%s", tc.naming, stderr)
			}
			if strings.Contains(stdout+stderr, "s3cretpass") {
				t.Errorf("the password is in the output:\nstdout:\n%s\nstderr:\n%s", stdout, stderr)
			}
			if tc.connects && !strings.Contains(stdout, "database not ready, retrying") {
				// Connection errors are where a password would leak: make
				// sure some were logged.
				t.Errorf("no failed connection attempt logged:\n%s", stdout)
			}
		})
	}
}
