package main

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/url"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/kelseyhightower/envconfig"
)

// config is the service's configuration, read from the environment. The
// README's configuration table lists the same variables and defaults.
// OpenTelemetry's OTEL_* variables are not here: its SDK reads them
// (tracing.go), and the README's Tracing section lists them.
type config struct {
	DatabaseURL       string        `envconfig:"DATABASE_URL" default:"postgres://yugabyte:yugabyte@localhost:5433/yugabyte?sslmode=disable"`
	HTTPAddr          string        `envconfig:"HTTP_ADDR" default:":8080"`
	MetricsAddr       string        `envconfig:"METRICS_ADDR"` // "": /metrics on HTTP_ADDR
	DBMaxConns        int32         `envconfig:"DB_MAX_CONNS" default:"16"`
	DBMinConns        int32         `envconfig:"DB_MIN_CONNS" default:"0"`
	DBMaxConnLifetime time.Duration `envconfig:"DB_MAX_CONN_LIFETIME" default:"30m"`
	DBConnectTimeout  time.Duration `envconfig:"DB_CONNECT_TIMEOUT" default:"5s"`
	DBAcquireTimeout  time.Duration `envconfig:"DB_ACQUIRE_TIMEOUT" default:"2s"`
	// The next three default to store.DefaultTCPKeepAlive,
	// DefaultTCPUserTimeout and DefaultIdlePing (config_test checks it).
	DBTCPKeepAlive    time.Duration `envconfig:"DB_TCP_KEEPALIVE" default:"5s"`
	DBTCPUserTimeout  time.Duration `envconfig:"DB_TCP_USER_TIMEOUT" default:"10s"`
	DBIdlePing        time.Duration `envconfig:"DB_IDLE_PING" default:"5s"`
	StartupTimeout    time.Duration `envconfig:"STARTUP_TIMEOUT" default:"60s"`
	RequestTimeout    time.Duration `envconfig:"REQUEST_TIMEOUT" default:"10s"`
	ReadHeaderTimeout time.Duration `envconfig:"READ_HEADER_TIMEOUT" default:"5s"`
	ReadTimeout       time.Duration `envconfig:"READ_TIMEOUT" default:"30s"`
	WriteTimeout      time.Duration `envconfig:"WRITE_TIMEOUT" default:"30s"`
	// ExportStallTimeout 0 (the default) means RequestTimeout.
	ExportStallTimeout time.Duration `envconfig:"EXPORT_STALL_TIMEOUT"`
	IdleTimeout        time.Duration `envconfig:"IDLE_TIMEOUT" default:"120s"`
	ShutdownTimeout    time.Duration `envconfig:"SHUTDOWN_TIMEOUT" default:"20s"`
	MaxBodyBytes       int64         `envconfig:"MAX_BODY_BYTES" default:"4194304"`
	MaxBatch           int           `envconfig:"MAX_BATCH" default:"10000"`
	ImportMaxBytes     int64         `envconfig:"IMPORT_MAX_BYTES" default:"1073741824"`
	MaxExports         int           `envconfig:"MAX_EXPORTS" default:"4"`
	LogLevel           slog.Level    `envconfig:"LOG_LEVEL" default:"info"`
	IdempotencyTTL     time.Duration `envconfig:"IDEMPOTENCY_TTL" default:"24h"`
	// Compression lists the codings offered for answers: gzip, zstd, or
	// both; "off" (alone) offers none. zstd is not offered by default: on
	// names like real ones it compressed no better than gzip and cost
	// about as much (BENCHMARKS.md, Compressed exports).
	Compression      []string `envconfig:"COMPRESSION" default:"gzip"`
	CompressMinBytes int      `envconfig:"COMPRESS_MIN_BYTES" default:"1024"`
	// Feed is auto (on when the database has wal_level=logical), on or
	// off; the other FEED_ settings tune the change feed.
	Feed          string        `envconfig:"FEED" default:"auto"`
	FeedSlot      string        `envconfig:"FEED_SLOT" default:"testsapi_feed"`
	FeedRetention time.Duration `envconfig:"FEED_RETENTION" default:"24h"`
	FeedMax       int           `envconfig:"FEED_MAX" default:"100"`
	FeedHeartbeat time.Duration `envconfig:"FEED_HEARTBEAT" default:"15s"`
	FeedMaxLag    int64         `envconfig:"FEED_MAX_LAG" default:"100000"`
	FeedPoll      time.Duration `envconfig:"FEED_POLL" default:"100ms"`
	FeedRetry     time.Duration `envconfig:"FEED_RETRY" default:"5s"`
	// CORSAllowedOrigins is comma-separated; none (the default) means
	// CORS is off.
	CORSAllowedOrigins []string `envconfig:"CORS_ALLOWED_ORIGINS"`
	// APIToken is read from API_TOKEN or the file API_TOKEN_FILE names;
	// envconfig does not read it, so that its value is never in an error.
	APIToken string `ignored:"true"`
}

// loadConfig reads the environment. Every error names the variable at
// fault, says what is wrong with its value and which values it takes.
func loadConfig() (config, error) {
	var c config
	if err := envconfig.Process("", &c); err != nil {
		return c, parseError(c, err)
	}
	for _, r := range rules(c) {
		if !r.ok {
			return c, fmt.Errorf("%s: %s is out of range: %s", r.name, r.value, r.want)
		}
	}
	var err error
	c.APIToken, err = apiToken()
	return c, err
}

// rule is the values one variable takes: ok is whether the value read is
// one, and want says which are, and why.
type rule struct {
	name  string
	value string // the value read, as the message shows it
	ok    bool
	want  string
}

// rules lists the variables whose values are limited beyond their type. A
// rule may name a variable declared before its own in config: envconfig
// reads the fields in order, so parseError's message, made when a later
// one fails, still shows the earlier one's value.
func rules(c config) []rule {
	atLeast1 := func(name string, n int64, why string) rule {
		return rule{name, strconv.FormatInt(n, 10), n >= 1, "must be at least 1, since " + why}
	}
	positive := func(name string, d time.Duration, bounds string) rule {
		return rule{name, d.String(), d > 0, "must be more than 0s, since it bounds " + bounds}
	}
	return []rule{
		atLeast1("DB_MAX_CONNS", int64(c.DBMaxConns), "every request needs a connection"),
		{"DB_MIN_CONNS", strconv.Itoa(int(c.DBMinConns)), c.DBMinConns >= 0 && c.DBMinConns <= c.DBMaxConns,
			fmt.Sprintf("must be at least 0 and at most DB_MAX_CONNS (%d), since the pool keeps no more idle connections than it may open", c.DBMaxConns)},
		positive("DB_MAX_CONN_LIFETIME", c.DBMaxConnLifetime, "how long a connection is used before it is replaced"),
		positive("DB_CONNECT_TIMEOUT", c.DBConnectTimeout, "the wait for a new database connection"),
		positive("DB_ACQUIRE_TIMEOUT", c.DBAcquireTimeout, "a request's wait for a free connection"),
		{"DB_TCP_KEEPALIVE", c.DBTCPKeepAlive.String(), c.DBTCPKeepAlive == 0 || c.DBTCPKeepAlive >= time.Second,
			"must be 0s (off) or at least 1s, since the kernel counts keepalive idle time and intervals in whole seconds"},
		{"DB_TCP_USER_TIMEOUT", c.DBTCPUserTimeout.String(),
			c.DBTCPUserTimeout == 0 || c.DBTCPUserTimeout >= time.Millisecond && c.DBTCPUserTimeout <= math.MaxInt32*time.Millisecond,
			"must be 0s (the system's default) or from 1ms to 596h31m23.647s, since the kernel counts it in milliseconds in a 32-bit integer"},
		{"DB_IDLE_PING", c.DBIdlePing.String(), c.DBIdlePing >= 0,
			"must be 0s (off) or more, since it is how often idle connections are checked"},
		positive("STARTUP_TIMEOUT", c.StartupTimeout, "the wait for the database at start-up"),
		positive("REQUEST_TIMEOUT", c.RequestTimeout, "how long a request may take"),
		positive("READ_HEADER_TIMEOUT", c.ReadHeaderTimeout, "how long a client may take to send its headers"),
		positive("READ_TIMEOUT", c.ReadTimeout, "how long a client may take to send its request"),
		positive("WRITE_TIMEOUT", c.WriteTimeout, "how long an answer may take to write"),
		{"EXPORT_STALL_TIMEOUT", c.ExportStallTimeout.String(), c.ExportStallTimeout >= 0,
			"must be 0s (REQUEST_TIMEOUT) or more, since it bounds how long an export waits for its next row"},
		positive("IDLE_TIMEOUT", c.IdleTimeout, "how long an idle connection stays open"),
		positive("SHUTDOWN_TIMEOUT", c.ShutdownTimeout, "how long requests get to finish at shutdown"),
		atLeast1("MAX_BODY_BYTES", c.MaxBodyBytes, "it is the largest request body, and a POST needs one"),
		atLeast1("MAX_BATCH", int64(c.MaxBatch), "it is the most items a POST array may hold"),
		atLeast1("IMPORT_MAX_BYTES", c.ImportMaxBytes, "it is the largest NDJSON or CSV import body"),
		{"MAX_EXPORTS", strconv.Itoa(c.MaxExports), c.MaxExports >= 1 && c.MaxExports < int(c.DBMaxConns),
			fmt.Sprintf("must be at least 1 and less than DB_MAX_CONNS (%d), since each export holds a connection and the other requests need one too", c.DBMaxConns)},
		{"IDEMPOTENCY_TTL", c.IdempotencyTTL.String(), c.IdempotencyTTL >= c.RequestTimeout,
			fmt.Sprintf("must be at least REQUEST_TIMEOUT (%s), since a key must outlive the request that made it", c.RequestTimeout)},
		{"COMPRESSION", strings.Join(c.Compression, ","), validCompression(c.Compression),
			`must be "off" or gzip, zstd or both, comma-separated, since those are the codings the service can compress answers in`},
		{"COMPRESS_MIN_BYTES", strconv.Itoa(c.CompressMinBytes), c.CompressMinBytes >= 0 && c.CompressMinBytes <= 1<<20,
			"must be from 0 to 1048576, since it is the smallest answer compressed and the service holds that much of each answer before it decides (below a packet, about 1,400 bytes, compressing saves no packet)"},
		{"FEED", c.Feed, c.Feed == "auto" || c.Feed == "on" || c.Feed == "off",
			"must be auto (on when the database has wal_level=logical), on or off"},
		{"FEED_SLOT", c.FeedSlot, slotName.MatchString(c.FeedSlot),
			"must be 1 to 63 lower-case letters, digits or underscores, since it names a replication slot and a publication"},
		{"FEED_RETENTION", c.FeedRetention.String(), c.FeedRetention >= time.Minute,
			"must be at least 1m, since a client that reconnects must find the changes it missed"},
		{"FEED_MAX", strconv.Itoa(c.FeedMax), c.FeedMax >= 1 && c.FeedMax <= 100000,
			"must be from 1 to 100000, since each feed is a connection and a goroutine held open"},
		{"FEED_HEARTBEAT", c.FeedHeartbeat.String(), c.FeedHeartbeat >= time.Second && c.FeedHeartbeat < c.WriteTimeout,
			fmt.Sprintf("must be at least 1s and less than WRITE_TIMEOUT (%s), since each write gets WRITE_TIMEOUT and an idle feed must write before it passes", c.WriteTimeout)},
		{"FEED_MAX_LAG", strconv.FormatInt(c.FeedMaxLag, 10), c.FeedMaxLag >= 1000,
			"must be at least 1000, since a feed reads 500 changes at a time and a busy table moves while it writes them"},
		{"FEED_POLL", c.FeedPoll.String(), c.FeedPoll >= 10*time.Millisecond && c.FeedPoll <= 5*time.Second,
			"must be from 10ms to 5s, since it is how often each instance looks for new changes: one query each time, and the feed's delay"},
		{"FEED_RETRY", c.FeedRetry.String(), c.FeedRetry >= 100*time.Millisecond && c.FeedRetry <= time.Minute,
			"must be from 100ms to 1m, since it is how soon an instance takes over recording when the one that did stops"},
		{"CORS_ALLOWED_ORIGINS", strings.Join(c.CORSAllowedOrigins, ","), validOrigins(c.CORSAllowedOrigins),
			`must be "*" or origins as a browser sends them (http or https, a host, an optional port, no path, not even "/"), comma-separated`},
	}
}

// slotName is what PostgreSQL takes as a replication slot's name.
var slotName = regexp.MustCompile(`^[a-z0-9_]{1,63}$`)

// parseError turns envconfig's error for a value its field's type does not
// take ("envconfig.Process: assigning DB_MAX_CONNS to DBMaxConns: converting
// 'abc' to type int32. details: ...") into one that says what the value
// should be. c is the configuration as far as envconfig read it.
func parseError(c config, err error) error {
	var pe *envconfig.ParseError
	if !errors.As(err, &pe) {
		return err
	}
	var want string
	for _, r := range rules(c) {
		if r.name == pe.KeyName {
			want = "; it " + r.want
		}
	}
	switch pe.TypeName {
	case "int", "int32", "int64":
		if errors.Is(pe.Err, strconv.ErrRange) {
			most := map[string]int64{"int": math.MaxInt, "int32": math.MaxInt32, "int64": math.MaxInt64}[pe.TypeName]
			return fmt.Errorf("%s: %s is out of range: the most it can hold is %d%s", pe.KeyName, pe.Value, most, want)
		}
		return fmt.Errorf("%s: %q is not an integer%s", pe.KeyName, pe.Value, want)
	case "time.Duration":
		return fmt.Errorf("%s: %q is not a duration such as \"500ms\", \"5s\" or \"2m\"%s", pe.KeyName, pe.Value, want)
	case "slog.Level":
		return fmt.Errorf("%s: %q is not a log level: debug, info, warn or error", pe.KeyName, pe.Value)
	}
	return fmt.Errorf("%s: %q is not a %s: %w", pe.KeyName, pe.Value, pe.TypeName, pe.Err)
}

// validCompression reports whether codings is "off" alone, or gzip and
// zstd, each at most once.
func validCompression(codings []string) bool {
	if len(codings) == 1 && codings[0] == "off" {
		return true
	}
	seen := map[string]bool{}
	for _, c := range codings {
		if c != "gzip" && c != "zstd" || seen[c] {
			return false
		}
		seen[c] = true
	}
	return len(codings) > 0
}

// validOrigins reports whether every origin is "*" or an origin as a
// browser sends it: http or https, a host, an optional port, and nothing
// else (no path, not even "/", which would never match).
func validOrigins(origins []string) bool {
	for _, o := range origins {
		u, err := url.Parse(o)
		ok := o == "*" || err == nil && (u.Scheme == "http" || u.Scheme == "https") &&
			u.Host != "" && u.User == nil && u.Path == "" && u.RawQuery == "" && u.Fragment == "" && u.String() == o
		if !ok {
			return false
		}
	}
	return true
}

// apiToken returns the token the writes require: API_TOKEN's value, or the
// content of the file API_TOKEN_FILE names with its trailing newline
// trimmed (a Docker or Kubernetes secret); "" when neither is set. No error
// shows the token.
func apiToken() (string, error) {
	token, inEnv := os.LookupEnv("API_TOKEN")
	file, inFile := os.LookupEnv("API_TOKEN_FILE")
	name := "API_TOKEN"
	switch {
	case inEnv && inFile:
		return "", errors.New("API_TOKEN and API_TOKEN_FILE are both set; set one of them")
	case inFile:
		name = "API_TOKEN_FILE"
		b, err := os.ReadFile(file)
		if err != nil {
			return "", fmt.Errorf("API_TOKEN_FILE: %w", err)
		}
		token = strings.TrimRight(string(b), "\r\n")
	case !inEnv:
		return "", nil
	}
	if token == "" {
		return "", fmt.Errorf("%s: the token is empty", name)
	}
	if !b64token.MatchString(token) {
		return "", fmt.Errorf("%s: the token must be letters, digits and -._~+/ (then = padding), as a Bearer token is", name)
	}
	return token, nil
}

// b64token is RFC 6750's syntax for a Bearer token.
var b64token = regexp.MustCompile(`^[A-Za-z0-9._~+/-]+=*$`)
