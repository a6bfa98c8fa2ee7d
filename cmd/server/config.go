package main

import (
	"fmt"
	"log/slog"
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
	StartupTimeout    time.Duration `envconfig:"STARTUP_TIMEOUT" default:"60s"`
	RequestTimeout    time.Duration `envconfig:"REQUEST_TIMEOUT" default:"10s"`
	ReadHeaderTimeout time.Duration `envconfig:"READ_HEADER_TIMEOUT" default:"5s"`
	ReadTimeout       time.Duration `envconfig:"READ_TIMEOUT" default:"30s"`
	WriteTimeout      time.Duration `envconfig:"WRITE_TIMEOUT" default:"30s"`
	IdleTimeout       time.Duration `envconfig:"IDLE_TIMEOUT" default:"120s"`
	ShutdownTimeout   time.Duration `envconfig:"SHUTDOWN_TIMEOUT" default:"20s"`
	MaxBodyBytes      int64         `envconfig:"MAX_BODY_BYTES" default:"4194304"`
	MaxBatch          int           `envconfig:"MAX_BATCH" default:"10000"`
	MaxExports        int           `envconfig:"MAX_EXPORTS" default:"4"`
	LogLevel          slog.Level    `envconfig:"LOG_LEVEL" default:"info"`
}

// loadConfig reads the environment. Every error names the variable at fault.
func loadConfig() (config, error) {
	var c config
	if err := envconfig.Process("", &c); err != nil {
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
		{"STARTUP_TIMEOUT", c.StartupTimeout > 0},
		{"REQUEST_TIMEOUT", c.RequestTimeout > 0},
		{"READ_HEADER_TIMEOUT", c.ReadHeaderTimeout > 0},
		{"READ_TIMEOUT", c.ReadTimeout > 0},
		{"WRITE_TIMEOUT", c.WriteTimeout > 0},
		{"IDLE_TIMEOUT", c.IdleTimeout > 0},
		{"SHUTDOWN_TIMEOUT", c.ShutdownTimeout > 0},
		{"MAX_BODY_BYTES", c.MaxBodyBytes >= 1},
		{"MAX_BATCH", c.MaxBatch >= 1},
		{"MAX_EXPORTS", c.MaxExports >= 1 && c.MaxExports < int(c.DBMaxConns)},
	}
	for _, ch := range checks {
		if !ch.ok {
			return c, fmt.Errorf("%s: value out of range (see the README's configuration table)", ch.name)
		}
	}
	return c, nil
}
