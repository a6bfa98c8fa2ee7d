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
		naming    string // what stderr must contain: the variable, and for a value the whole message
		connects  bool   // the process gets as far as trying the database
	}{
		{name: "MaxConnsNotNumber", env: "DB_MAX_CONNS=abc",
			naming: `DB_MAX_CONNS: "abc" is not an integer; it must be at least 1, since every request needs a connection`},
		{name: "MaxConnsTooLarge", env: "DB_MAX_CONNS=99999999999",
			naming: "DB_MAX_CONNS: 99999999999 is out of range: the most it can hold is 2147483647; it must be at least 1"},
		{name: "MaxConnsZero", env: "DB_MAX_CONNS=0",
			naming: "DB_MAX_CONNS: 0 is out of range: must be at least 1, since every request needs a connection"},
		{name: "MinConnsAboveMax", env: "DB_MIN_CONNS=17",
			naming: "DB_MIN_CONNS: 17 is out of range: must be at least 0 and at most DB_MAX_CONNS (16), since the pool"},
		{name: "MaxExportsNotBelowMaxConns", env: "MAX_EXPORTS=20",
			naming: "MAX_EXPORTS: 20 is out of range: must be at least 1 and less than DB_MAX_CONNS (16), since each export holds a connection"},
		// The range names DB_MAX_CONNS's value although envconfig stopped
		// at MAX_EXPORTS.
		{name: "MaxExportsNotNumber", env: "MAX_EXPORTS=four",
			naming: `MAX_EXPORTS: "four" is not an integer; it must be at least 1 and less than DB_MAX_CONNS (16)`},
		{name: "RequestTimeoutNotDuration", env: "REQUEST_TIMEOUT=soon",
			naming: `REQUEST_TIMEOUT: "soon" is not a duration such as "500ms", "5s" or "2m"; it must be more than 0s`},
		{name: "AcquireTimeoutZero", env: "DB_ACQUIRE_TIMEOUT=0s",
			naming: "DB_ACQUIRE_TIMEOUT: 0s is out of range: must be more than 0s, since it bounds a request's wait for a free connection"},
		{name: "MaxBodyBytesNegative", env: "MAX_BODY_BYTES=-1",
			naming: "MAX_BODY_BYTES: -1 is out of range: must be at least 1"},
		{name: "LogLevelUnknown", env: "LOG_LEVEL=loud",
			naming: `LOG_LEVEL: "loud" is not a log level: debug, info, warn or error`},
		{name: "DatabaseURLMalformed", env: "DATABASE_URL=://bad", naming: "DATABASE_URL"},
		{name: "DatabaseURLMalformedWithPassword", env: "DATABASE_URL=postgres://app:s3cretpass@127.0.0.1:notaport/app", naming: "DATABASE_URL"},
		{name: "DatabaseUnreachableWithPassword", naming: "STARTUP_TIMEOUT", connects: true},
		{name: "TCPKeepAliveBelowASecond", env: "DB_TCP_KEEPALIVE=500ms",
			naming: "DB_TCP_KEEPALIVE: 500ms is out of range: must be 0s (off) or at least 1s, since the kernel counts keepalive idle time and intervals in whole seconds"},
		{name: "TCPUserTimeoutNegative", env: "DB_TCP_USER_TIMEOUT=-1s",
			naming: "DB_TCP_USER_TIMEOUT: -1s is out of range: must be 0s (the system's default) or from 1ms to 596h31m23.647s"},
		{name: "TCPUserTimeoutTooLong", env: "DB_TCP_USER_TIMEOUT=600h",
			naming: "DB_TCP_USER_TIMEOUT: 600h0m0s is out of range: must be 0s (the system's default) or from 1ms to 596h31m23.647s"},
		{name: "FeedUnknown", env: "FEED=maybe", naming: "FEED: maybe is out of range: must be auto (on when the database has wal_level=logical), on or off"},
		{name: "FeedSlotUpperCase", env: "FEED_SLOT=Feed-1",
			naming: "FEED_SLOT: Feed-1 is out of range: must be 1 to 63 lower-case letters, digits or underscores"},
		{name: "FeedHeartbeatNotBelowWriteTimeout", env: "FEED_HEARTBEAT=30s",
			naming: "FEED_HEARTBEAT: 30s is out of range: must be at least 1s and less than WRITE_TIMEOUT (30s)"},
		{name: "FeedRetentionTooShort", env: "FEED_RETENTION=10s",
			naming: "FEED_RETENTION: 10s is out of range: must be at least 1m, since a client that reconnects must find the changes it missed"},
		{name: "IdlePingNegative", env: "DB_IDLE_PING=-1s", naming: "DB_IDLE_PING: -1s is out of range: must be 0s (off) or more"},
		{name: "ExportStallTimeoutNegative", env: "EXPORT_STALL_TIMEOUT=-1s",
			naming: "EXPORT_STALL_TIMEOUT: -1s is out of range: must be 0s (REQUEST_TIMEOUT) or more"},
		{name: "IdempotencyTTLBelowRequestTimeout", env: "IDEMPOTENCY_TTL=1s",
			naming: "IDEMPOTENCY_TTL: 1s is out of range: must be at least REQUEST_TIMEOUT (5s), since a key must outlive the request"},
		{name: "ImportMaxBytesZero", env: "IMPORT_MAX_BYTES=0",
			naming: "IMPORT_MAX_BYTES: 0 is out of range: must be at least 1, since it is the largest NDJSON or CSV import body"},
		{name: "CompressionUnknown", env: "COMPRESSION=gzip,br",
			naming: `COMPRESSION: gzip,br is out of range: must be "off" or gzip, zstd or both`},
		{name: "CompressionOffAndGzip", env: "COMPRESSION=off,gzip", naming: "COMPRESSION: off,gzip is out of range"},
		{name: "CompressMinBytesNegative", env: "COMPRESS_MIN_BYTES=-1",
			naming: "COMPRESS_MIN_BYTES: -1 is out of range: must be from 0 to 1048576"},
		{name: "CompressMinBytesNotNumber", env: "COMPRESS_MIN_BYTES=1k",
			naming: `COMPRESS_MIN_BYTES: "1k" is not an integer; it must be from 0 to 1048576`},
		{name: "CORSOriginWithPath", env: "CORS_ALLOWED_ORIGINS=https://a.example,https://b.example/",
			naming: "CORS_ALLOWED_ORIGINS: https://a.example,https://b.example/ is out of range: must be \"*\" or origins as a browser sends them"},
		{name: "CORSOriginNoScheme", env: "CORS_ALLOWED_ORIGINS=a.example", naming: "CORS_ALLOWED_ORIGINS: a.example is out of range"},
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
				t.Errorf("stderr does not say %q:\n%s", tc.naming, stderr)
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
