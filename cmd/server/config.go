package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"regexp"
	"strings"
	"time"

	"github.com/kelseyhightower/envconfig"
)

// config is the service's configuration, read from the environment. The
// README's configuration table lists the same variables and defaults.
type config struct {
	DatabaseURL       string        `envconfig:"DATABASE_URL" default:"postgres://yugabyte:yugabyte@localhost:5433/yugabyte?sslmode=disable"`
	HTTPAddr          string        `envconfig:"HTTP_ADDR" default:":8080"`
	MetricsAddr       string        `envconfig:"METRICS_ADDR"` // "": /metrics on HTTP_ADDR
	DBMaxConns        int32         `envconfig:"DB_MAX_CONNS" default:"16"`
	DBMinConns        int32         `envconfig:"DB_MIN_CONNS" default:"0"`
	DBMaxConnLifetime time.Duration `envconfig:"DB_MAX_CONN_LIFETIME" default:"30m"`
	DBConnectTimeout  time.Duration `envconfig:"DB_CONNECT_TIMEOUT" default:"5s"`
	DBAcquireTimeout  time.Duration `envconfig:"DB_ACQUIRE_TIMEOUT" default:"2s"`
	StartupTimeout    time.Duration `envconfig:"STARTUP_TIMEOUT" default:"60s"`
	RequestTimeout    time.Duration `envconfig:"REQUEST_TIMEOUT" default:"10s"`
	ReadHeaderTimeout time.Duration `envconfig:"READ_HEADER_TIMEOUT" default:"5s"`
	ReadTimeout       time.Duration `envconfig:"READ_TIMEOUT" default:"30s"`
	WriteTimeout      time.Duration `envconfig:"WRITE_TIMEOUT" default:"30s"`
	IdleTimeout       time.Duration `envconfig:"IDLE_TIMEOUT" default:"120s"`
	ShutdownTimeout   time.Duration `envconfig:"SHUTDOWN_TIMEOUT" default:"20s"`
	MaxBodyBytes      int64         `envconfig:"MAX_BODY_BYTES" default:"4194304"`
	MaxBatch          int           `envconfig:"MAX_BATCH" default:"10000"`
	ImportMaxBytes    int64         `envconfig:"IMPORT_MAX_BYTES" default:"1073741824"`
	MaxExports        int           `envconfig:"MAX_EXPORTS" default:"4"`
	LogLevel          slog.Level    `envconfig:"LOG_LEVEL" default:"info"`
	IdempotencyTTL    time.Duration `envconfig:"IDEMPOTENCY_TTL" default:"24h"`
	// CORSAllowedOrigins is comma-separated; none (the default) means
	// CORS is off.
	CORSAllowedOrigins []string `envconfig:"CORS_ALLOWED_ORIGINS"`
	// APIToken is read from API_TOKEN or the file API_TOKEN_FILE names;
	// envconfig does not read it, so that its value is never in an error.
	APIToken string `ignored:"true"`
}

// loadConfig reads the environment. Every error names the variable at fault.
func loadConfig() (config, error) {
	var c config
	err := envconfig.Process("", &c)
	if err != nil {
		return c, err
	}
	checks := []struct {
		name string
		ok   bool
	}{
		{"DB_MAX_CONNS", c.DBMaxConns >= 1},
		{"DB_MIN_CONNS", c.DBMinConns >= 0 && c.DBMinConns <= c.DBMaxConns},
		{"DB_MAX_CONN_LIFETIME", c.DBMaxConnLifetime > 0},
		{"DB_CONNECT_TIMEOUT", c.DBConnectTimeout > 0},
		{"DB_ACQUIRE_TIMEOUT", c.DBAcquireTimeout > 0},
		{"STARTUP_TIMEOUT", c.StartupTimeout > 0},
		{"REQUEST_TIMEOUT", c.RequestTimeout > 0},
		{"READ_HEADER_TIMEOUT", c.ReadHeaderTimeout > 0},
		{"READ_TIMEOUT", c.ReadTimeout > 0},
		{"WRITE_TIMEOUT", c.WriteTimeout > 0},
		{"IDLE_TIMEOUT", c.IdleTimeout > 0},
		{"SHUTDOWN_TIMEOUT", c.ShutdownTimeout > 0},
		{"MAX_BODY_BYTES", c.MaxBodyBytes >= 1},
		{"MAX_BATCH", c.MaxBatch >= 1},
		{"IMPORT_MAX_BYTES", c.ImportMaxBytes >= 1},
		{"MAX_EXPORTS", c.MaxExports >= 1 && c.MaxExports < int(c.DBMaxConns)},
		{"IDEMPOTENCY_TTL", c.IdempotencyTTL >= c.RequestTimeout},
		{"CORS_ALLOWED_ORIGINS", validOrigins(c.CORSAllowedOrigins)},
	}
	for _, ch := range checks {
		if !ch.ok {
			return c, fmt.Errorf("%s: value out of range (see the README's configuration table)", ch.name)
		}
	}
	c.APIToken, err = apiToken()
	return c, err
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

// apiToken returns the token POST requires: API_TOKEN's value, or the
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
