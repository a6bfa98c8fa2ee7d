package api_test

import (
	"bytes"
	"context"
	"log/slog"
	"net/http"
	"strconv"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/ybrest/testsapi/internal/api"
	"github.com/ybrest/testsapi/internal/dbtest"
	"github.com/ybrest/testsapi/internal/metrics"
	"github.com/ybrest/testsapi/internal/store"
)

// mustMetricsEnv is mustEnv with metrics wired as cmd/server wires them:
// the pool's statistics, the store's errors, and /metrics on the handler.
// It does not migrate, so that a test can stop the database first.
func mustMetricsEnv(t *testing.T, url string) *env {
	t.Helper()
	pool := mustPool(t, url, nil)
	m := metrics.New()
	st := store.New(pool, store.ObserveErrors(m.DBError))
	m.CollectPool(pool.Stat)
	h := api.NewHandler(slog.New(slog.DiscardHandler), st, testLimits, api.WithMetrics(m, true))
	return &env{h: h, pool: pool, st: st}
}

// scrape GETs /metrics through do (so the response is checked against
// openapi.yaml) and parses it.
func scrape(t *testing.T, h http.Handler) map[string]*dto.MetricFamily {
	t.Helper()
	res := do(t, h, "GET", "/metrics", "")
	if res.status != http.StatusOK {
		t.Fatalf("GET /metrics: %d %s", res.status, res.body)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(res.body))
	if err != nil {
		t.Fatalf("parse /metrics: %v\n%s", err, res.body)
	}
	return fams
}

// sample returns the value of the series of family name with exactly the
// given labels (a counter, gauge or untyped value, or a histogram's count),
// and whether there is one.
func sample(fams map[string]*dto.MetricFamily, name string, labels ...string) (float64, bool) {
	f := fams[name]
	if f == nil {
		return 0, false
	}
	for _, m := range f.GetMetric() {
		if len(m.GetLabel())*2 != len(labels) {
			continue
		}
		match := true
		for i, l := range m.GetLabel() {
			if l.GetName() != labels[2*i] || l.GetValue() != labels[2*i+1] {
				match = false
			}
		}
		if !match {
			continue
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue(), true
		case m.Gauge != nil:
			return m.Gauge.GetValue(), true
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount()), true
		case m.Untyped != nil:
			return m.Untyped.GetValue(), true
		}
	}
	return 0, false
}

func TestMetrics(t *testing.T) {
	t.Parallel()
	e := mustMetricsEnv(t, dbtest.NewSchema(t))
	if _, _, err := e.st.Migrate(context.Background()); err != nil {
		t.Fatal(err)
	}
	bob := mustCreate(t, e.h, "Bob")[0]
	for range 3 {
		do(t, e.h, "GET", "/tests/"+strconv.Itoa(int(bob.ID)), "")
	}
	do(t, e.h, "GET", "/tests/999999", "")
	do(t, e.h, "GET", "/no/such/path", "")
	do(t, e.h, "DELETE", "/tests", "")

	fams := scrape(t, e.h)
	for _, c := range []struct {
		method, route, status string
		want                  float64
	}{
		{"POST", "/tests", "201", 1},
		{"GET", "/tests/{id}", "200", 3},
		{"GET", "/tests/{id}", "404", 1},
		{"GET", "unmatched", "404", 1},
		{"DELETE", "unmatched", "405", 1},
	} {
		labels := []string{"method", c.method, "route", c.route, "status", c.status}
		if got, ok := sample(fams, "testsapi_http_requests_total", labels...); got != c.want {
			t.Errorf("testsapi_http_requests_total%q = %v (found: %v), want %v", labels, got, ok, c.want)
		}
		if got, _ := sample(fams, "testsapi_http_request_duration_seconds", labels...); got != c.want {
			t.Errorf("testsapi_http_request_duration_seconds%q count = %v, want %v", labels, got, c.want)
		}
	}
	// The ids must never become label values.
	for _, m := range fams["testsapi_http_requests_total"].GetMetric() {
		for _, l := range m.GetLabel() {
			if l.GetName() == "route" && (l.GetValue() == "/tests/"+strconv.Itoa(int(bob.ID)) || l.GetValue() == "/no/such/path") {
				t.Errorf("a raw path became a route label: %s", m)
			}
		}
	}
	// The scrape itself is in flight while the gauge is read.
	if got, _ := sample(fams, "testsapi_http_requests_in_flight"); got != 1 {
		t.Errorf("testsapi_http_requests_in_flight = %v, want 1 (the scrape)", got)
	}

	maxConns := float64(e.pool.Config().MaxConns)
	if got, _ := sample(fams, "testsapi_db_pool_max_conns"); got != maxConns {
		t.Errorf("testsapi_db_pool_max_conns = %v, want %v", got, maxConns)
	}
	total, _ := sample(fams, "testsapi_db_pool_total_conns")
	idle, _ := sample(fams, "testsapi_db_pool_idle_conns")
	acquired, okAcq := sample(fams, "testsapi_db_pool_acquired_conns")
	if total < 1 || total > maxConns || idle+acquired > total || !okAcq {
		t.Errorf("pool gauges total=%v idle=%v acquired=%v (found %v), want 1 <= total <= %v and idle+acquired <= total",
			total, idle, acquired, okAcq, maxConns)
	}
	// Migrate, one create and four gets each acquired a connection.
	if got, _ := sample(fams, "testsapi_db_pool_acquires_total"); got < 6 {
		t.Errorf("testsapi_db_pool_acquires_total = %v, want at least 6", got)
	}
	if _, ok := sample(fams, "testsapi_db_pool_acquire_wait_seconds_total"); !ok {
		t.Error("no testsapi_db_pool_acquire_wait_seconds_total")
	}
	for _, name := range []string{"go_goroutines", "process_cpu_seconds_total"} {
		if _, ok := sample(fams, name); !ok {
			t.Errorf("no %s: the Go and process collectors are missing", name)
		}
	}
	if len(fams["testsapi_db_errors_total"].GetMetric()) != 0 {
		t.Errorf("database errors counted without any: %v", fams["testsapi_db_errors_total"])
	}
}

// TestMetricsDatabaseErrors: with the database stopped, requests answer 503
// and the store's errors show up in testsapi_db_errors_total.
func TestMetricsDatabaseErrors(t *testing.T) {
	t.Parallel()
	srv := dbtest.NewServer(t)
	e := mustMetricsEnv(t, srv.URL())
	if _, _, err := e.st.Migrate(context.Background()); err != nil {
		t.Fatal(err)
	}
	srv.Stop(t)
	for range 2 {
		problemOf(t, do(t, e.h, "GET", "/tests", ""), http.StatusServiceUnavailable)
	}
	fams := scrape(t, e.h)
	var errs float64
	for _, m := range fams["testsapi_db_errors_total"].GetMetric() {
		// No SQLSTATE (connection refused), or the server's goodbye on a
		// pooled connection: 57P01 admin_shutdown or an 08 connection error.
		switch class := m.GetLabel()[0].GetValue(); class {
		case "none", "57", "08":
			errs += m.GetCounter().GetValue()
		default:
			t.Errorf("unexpected error class %q: %s", class, m)
		}
	}
	if errs != 2 {
		t.Errorf("testsapi_db_errors_total sums to %v, want 2 (one per failed request): %v", errs, fams["testsapi_db_errors_total"])
	}
	if got, _ := sample(fams, "testsapi_http_requests_total", "method", "GET", "route", "/tests", "status", "503"); got != 2 {
		t.Errorf(`requests_total{GET /tests 503} = %v, want 2`, got)
	}
}

// TestMetricsElsewhere: with the metrics served on another address, the
// requests are still counted but /metrics is not on the API's handler.
func TestMetricsElsewhere(t *testing.T) {
	t.Parallel()
	pool := mustPool(t, dbtest.NewSchema(t), nil)
	m := metrics.New()
	h := api.NewHandler(slog.New(slog.DiscardHandler), store.New(pool), testLimits, api.WithMetrics(m, false))
	problemOf(t, do(t, h, "GET", "/metrics", ""), http.StatusNotFound)
}
