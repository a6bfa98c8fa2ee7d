// Command server serves table test over HTTP. It is configured by
// environment variables (see the README) and stops cleanly on SIGINT or
// SIGTERM. `server healthcheck` instead probes the /healthz of a server
// running in the same container (the Dockerfile's HEALTHCHECK) and exits 0
// if it answers 200, 1 otherwise.
package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/ybrest/testsapi/internal/api"
	"github.com/ybrest/testsapi/internal/metrics"
	"github.com/ybrest/testsapi/internal/store"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "healthcheck" {
		// Docker's HEALTHCHECK runs this in the same container, with the
		// same environment as the server.
		if err := healthcheck(cmp.Or(os.Getenv("HTTP_ADDR"), ":8080")); err != nil {
			fmt.Fprintln(os.Stderr, "healthcheck:", err)
			os.Exit(1)
		}
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, stop, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "server:", err)
		os.Exit(1)
	}
}

// logFlushInterval is how often buffered log lines are written out.
const logFlushInterval = 100 * time.Millisecond

// run serves until ctx is done, then shuts down gracefully. stopSignals
// restores default signal handling once shutdown begins, so a second
// Ctrl-C kills at once.
func run(ctx context.Context, stopSignals func(), stdout io.Writer) error {
	cfg, err := loadConfig()
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	lw := newLogWriter(stdout, logFlushInterval)
	defer lw.Close() // deferred first, so it runs last: after "stopped"
	log := slog.New(slog.NewJSONHandler(lw, &slog.HandlerOptions{Level: cfg.LogLevel}))
	tr, err := newTracing(ctx, log) // nil: tracing off
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	defer tr.shutdown(log) // after the pool's Close: every span has ended

	poolCfg, err := pgxpool.ParseConfig(cfg.DatabaseURL)
	if err != nil {
		// pgx redacts the password in its parse errors.
		return fmt.Errorf("config: DATABASE_URL: %w", err)
	}
	poolCfg.MaxConns = cfg.DBMaxConns
	poolCfg.MinConns = cfg.DBMinConns
	poolCfg.MaxConnLifetime = cfg.DBMaxConnLifetime
	poolCfg.MaxConnLifetimeJitter = cfg.DBMaxConnLifetime / 10
	poolCfg.ConnConfig.ConnectTimeout = cfg.DBConnectTimeout
	pool, err := store.NewPool(ctx, poolCfg, append([]store.PoolOption{
		store.AcquireTimeout(cfg.DBAcquireTimeout),
		store.TCPKeepAlive(cfg.DBTCPKeepAlive),
		store.TCPUserTimeout(cfg.DBTCPUserTimeout),
		store.IdlePing(cfg.DBIdlePing),
	}, tr.poolOptions()...)...)
	if err != nil {
		return fmt.Errorf("database pool: %w", err)
	}
	defer pool.Close()
	m := metrics.New()
	m.CollectPool(pool.Stat)
	// A create waiting for its group-commit batch, and a page query for
	// its grouped statement, are bounded like a request waiting for a
	// connection. The change feed's consumer waits
	// for each answer of the database as long as a request waits for all
	// of its own: it then gives up, as the requests and the feeds do
	// (newFeed), and is started again (consume).
	var feed *api.Feed
	st := store.New(pool.Pool, append([]store.Option{
		store.QueueTimeout(cfg.DBAcquireTimeout), store.ConsumeTimeout(cfg.RequestTimeout),
		store.OnBatch(m.Batch), store.OnBatchAnswered(m.BatchAnswered), store.OnQueueWait(m.QueueWait),
		store.OnPageRead(m.PageReaders), store.OnPageGroup(m.PageGroup), store.ObserveErrors(m.DBError),
		store.OnChanges(func() { feed.Notify() }),
	}, tr.storeOptions()...)...)
	feed = newFeed(log, st, cfg)
	// Deferred after pool.Close, so it runs first: creates still queued
	// or in flight get their answer before the pool goes.
	defer st.Close()

	ln, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		return fmt.Errorf("listen on HTTP_ADDR %s: %w", cfg.HTTPAddr, err)
	}
	srv := &http.Server{
		Handler: api.NewHandler(log, st, api.Limits{
			MaxBodyBytes:   cfg.MaxBodyBytes,
			MaxBatch:       cfg.MaxBatch,
			RequestTimeout: cfg.RequestTimeout,
			WriteTimeout:   cfg.WriteTimeout,
			MaxExports:     cfg.MaxExports,
			// Ready means a request would get a connection that answers
			// within the time a request waits for one.
			ReadyTimeout:       cfg.DBAcquireTimeout,
			ExportStallTimeout: cfg.ExportStallTimeout,
			ImportMaxBytes:     cfg.ImportMaxBytes,
			ReadTimeout:        cfg.ReadTimeout,
		}, append(handlerOptions(cfg, tr), api.WithMetrics(m, cfg.MetricsAddr == ""), api.WithFeed(feed))...),
		ReadHeaderTimeout: cfg.ReadHeaderTimeout,
		ReadTimeout:       cfg.ReadTimeout,
		WriteTimeout:      cfg.WriteTimeout,
		IdleTimeout:       cfg.IdleTimeout,
		MaxHeaderBytes:    1 << 20,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	if feed != nil {
		// Feeds never end by themselves: at shutdown they are told to,
		// with a last event, so that Shutdown need not wait them out.
		srv.RegisterOnShutdown(feed.Shutdown)
	}
	log.Info("listening", "addr", ln.Addr().String(),
		"database", poolCfg.ConnConfig.Host, "port", poolCfg.ConnConfig.Port,
		"db", poolCfg.ConnConfig.Database, "user", poolCfg.ConnConfig.User,
		"writes_need_token", cfg.APIToken != "")

	// Serve at once, so /healthz answers and /readyz says 503 while the
	// database comes up; the store answers 503 until the schema is ready.
	serveErr := make(chan error, 2)
	go func() { serveErr <- srv.Serve(ln) }()
	servers := []*http.Server{srv}
	if cfg.MetricsAddr != "" {
		msrv, err := serveMetrics(log, m, cfg, serveErr)
		if err != nil {
			_ = srv.Close()
			return err
		}
		servers = append(servers, msrv)
	}
	// The feed's background work stops with feedCtx, after the servers
	// (no feed is left to serve) and before the store and pool close.
	feedCtx, stopFeed := context.WithCancel(context.WithoutCancel(ctx))
	defer stopFeed()
	waitFeed := func() {}
	startErr := make(chan error, 1)
	go func() { startErr <- waitForDatabase(ctx, log, st, cfg.StartupTimeout) }()

	for ctx.Err() == nil {
		select {
		case err := <-serveErr:
			return fmt.Errorf("serve: %w", err)
		case err := <-startErr:
			if err != nil {
				for _, s := range servers {
					_ = s.Close()
				}
				return err
			}
			go purgeKeys(ctx, log, st, cfg.IdempotencyTTL)
			waitFeed = startFeed(feedCtx, log, st, feed, m, pool.ConnConfig(), cfg)
		case <-ctx.Done():
		}
	}
	stopSignals()
	log.Info("shutting down", "timeout", cfg.ShutdownTimeout.String())
	shutdownCtx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	defer cancel()
	// The metrics server (if any) stops last, so a scrape can still see
	// the shutdown's requests draining.
	for _, s := range servers {
		if err := s.Shutdown(shutdownCtx); err != nil {
			// Only long exports outlive the timeout in practice; a create
			// cut here was never acknowledged, so nothing acknowledged is lost.
			_ = s.Close()
			log.Warn("shutdown timeout: closed requests still running", "timeout", cfg.ShutdownTimeout.String())
		}
	}
	// The consumer stops between transactions or abandons one it was
	// recording (rolled back, and the slot was not told: the next
	// consumer records it); nothing recorded is lost.
	stopFeed()
	waitFeed()
	// Every handler has returned (or was cut off): let the batches that
	// are still running finish before the pool closes.
	st.Close()
	log.Info("stopped")
	return nil
}

// serveMetrics serves GET /metrics, and nothing else, on METRICS_ADDR, a
// port that can stay private to the scraper. Serve errors go to serveErr.
func serveMetrics(log *slog.Logger, m *metrics.Metrics, cfg config, serveErr chan<- error) (*http.Server, error) {
	ln, err := net.Listen("tcp", cfg.MetricsAddr)
	if err != nil {
		return nil, fmt.Errorf("listen on METRICS_ADDR %s: %w", cfg.MetricsAddr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", m.Handler(log))
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: cfg.ReadHeaderTimeout,
		ReadTimeout:       cfg.ReadTimeout,
		WriteTimeout:      cfg.WriteTimeout,
		IdleTimeout:       cfg.IdleTimeout,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	log.Info("metrics listening", "addr", ln.Addr().String())
	go func() { serveErr <- srv.Serve(ln) }()
	return srv, nil
}

// waitForDatabase creates the schema, retrying with capped exponential
// backoff while the database is unreachable or starting (in compose it
// starts slower than the service), up to limit. Errors that waiting cannot
// cure, such as a wrong password, end it at once.
func waitForDatabase(ctx context.Context, log *slog.Logger, st *store.Store, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	wait := 250 * time.Millisecond
	// cause is the last attempt's error that the deadline did not cut
	// short: "connection refused" says more than "context deadline exceeded".
	var cause error
	for attempt := 1; ; attempt++ {
		// Each attempt ends at the deadline too: a lock held by a hung
		// instance must not keep this one waiting past STARTUP_TIMEOUT.
		attemptCtx, cancel := context.WithDeadline(ctx, deadline)
		dialect, version, err := st.Migrate(attemptCtx)
		if err != nil && (attemptCtx.Err() == nil || cause == nil) {
			cause = err
		}
		cancel()
		if err == nil {
			log.Info("database ready", "dialect", string(dialect), "server_version", version, "attempt", attempt)
			return nil
		}
		if ctx.Err() != nil {
			return nil // shutting down before the database came up
		}
		if !errors.Is(err, store.ErrUnavailable) {
			return fmt.Errorf("database: %w", err)
		}
		if !time.Now().Before(deadline) {
			return fmt.Errorf("database not reachable within STARTUP_TIMEOUT (%s): %w; "+
				"start it (the YugabyteDB of docker-compose.yml: docker compose up -d yugabytedb) "+
				"or set DATABASE_URL to a database that runs", limit, cause)
		}
		// The last wait ends at the deadline, for one more try there.
		wait = min(wait, time.Until(deadline))
		log.Warn("database not ready, retrying", "attempt", attempt, "retry_in", wait.String(), "error", err.Error())
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
		wait = min(2*wait, 5*time.Second)
	}
}

// handlerOptions turns on the handler's optional features the
// configuration asks for.
func handlerOptions(cfg config, tr *tracing) []api.Option {
	opts := append([]api.Option{api.IdempotencyTTL(cfg.IdempotencyTTL)}, tr.handlerOptions()...)
	if cfg.APIToken != "" {
		opts = append(opts, api.RequireToken(cfg.APIToken))
	}
	if len(cfg.CORSAllowedOrigins) > 0 {
		opts = append(opts, api.CORS(cfg.CORSAllowedOrigins))
	}
	if !slices.Equal(cfg.Compression, []string{"off"}) {
		opts = append(opts, api.Compress(cfg.CompressMinBytes,
			slices.Contains(cfg.Compression, "gzip"), slices.Contains(cfg.Compression, "zstd")))
	}
	return opts
}

// keyPurgeInterval is how often expired idempotency keys are deleted. The
// store already ignores them; the purge only keeps the table small.
const keyPurgeInterval = time.Minute

// purgeKeys deletes expired idempotency keys every keyPurgeInterval until
// ctx is done.
func purgeKeys(ctx context.Context, log *slog.Logger, st *store.Store, ttl time.Duration) {
	purgeEvery(ctx, log, keyPurgeInterval, "expired idempotency keys", func(ctx context.Context) (int64, error) {
		return st.PurgeKeys(ctx, ttl)
	})
}

// purgeEvery runs purge every interval, each run bounded by it, until ctx
// is done. A failure is logged and the next round tries again.
func purgeEvery(ctx context.Context, log *slog.Logger, interval time.Duration, what string, purge func(context.Context) (int64, error)) {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		purgeCtx, cancel := context.WithTimeout(ctx, interval)
		n, err := purge(purgeCtx)
		cancel()
		switch {
		case err != nil && ctx.Err() == nil:
			log.Warn("purge "+what, "error", err.Error())
		case n > 0:
			log.Debug("purged "+what, "deleted", n)
		}
	}
}
