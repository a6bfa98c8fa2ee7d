package metrics_test

import (
	"log/slog"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/ybrest/testsapi/internal/metrics"
	"golang.org/x/sys/unix"
)

// router is a small chi router as the API builds it: a response writer
// wrapper first (the access log's, in the service), then the metrics.
func router(m *metrics.Metrics) http.Handler {
	r := chi.NewRouter()
	r.Use(func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			next.ServeHTTP(middleware.NewWrapResponseWriter(w, r.ProtoMajor), r)
		})
	})
	if m != nil {
		r.Use(m.Middleware)
	}
	r.Get("/tests/{id}", func(w http.ResponseWriter, r *http.Request) {
		if chi.URLParam(r, "id") == "0" {
			w.WriteHeader(http.StatusNotFound)
			return
		}
		_, _ = w.Write([]byte(`{"id":1,"name":"Bob"}`))
	})
	r.Get("/silent", func(http.ResponseWriter, *http.Request) {})
	return r
}

func TestMiddleware(t *testing.T) {
	m := metrics.New()
	h := router(m)
	for _, target := range []string{"/tests/1", "/tests/2", "/tests/0", "/silent", "/nope"} {
		h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", target, nil))
	}
	h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("BREW", "/tests/1", nil))

	want := `
# HELP testsapi_http_requests_total HTTP requests answered, by method, route pattern (not raw path) and status.
# TYPE testsapi_http_requests_total counter
testsapi_http_requests_total{method="GET",route="/silent",status="200"} 1
testsapi_http_requests_total{method="GET",route="/tests/{id}",status="200"} 2
testsapi_http_requests_total{method="GET",route="/tests/{id}",status="404"} 1
testsapi_http_requests_total{method="GET",route="unmatched",status="404"} 1
testsapi_http_requests_total{method="OTHER",route="unmatched",status="405"} 1
# HELP testsapi_http_requests_in_flight HTTP requests being served now.
# TYPE testsapi_http_requests_in_flight gauge
testsapi_http_requests_in_flight 0
`
	err := testutil.GatherAndCompare(m.Gatherer(), strings.NewReader(want), "testsapi_http_requests_total", "testsapi_http_requests_in_flight")
	if err != nil {
		t.Error(err)
	}
}

func TestDBError(t *testing.T) {
	m := metrics.New()
	for _, code := range []string{"", "08006", "40001", "40P01", "", "xx"} {
		m.DBError(code)
	}
	want := `
# HELP testsapi_db_errors_total Database errors the store returned, by SQLSTATE class (the code's first two characters; "none" when there was no answer from the server: unreachable, connection lost, or timed out).
# TYPE testsapi_db_errors_total counter
testsapi_db_errors_total{class="08"} 1
testsapi_db_errors_total{class="40"} 2
testsapi_db_errors_total{class="none"} 3
`
	if err := testutil.GatherAndCompare(m.Gatherer(), strings.NewReader(want), "testsapi_db_errors_total"); err != nil {
		t.Error(err)
	}
}

func TestBatch(t *testing.T) {
	m := metrics.New()
	for _, b := range []struct{ size, flights int }{{1, 1}, {3, 2}, {256, 3}} {
		m.Batch(b.size, b.flights)
	}
	wantGathered(t, m,
		`testsapi_create_batch_size_bucket{le="1"} 1`,
		`testsapi_create_batch_size_bucket{le="4"} 2`,
		`testsapi_create_batch_size_bucket{le="128"} 2`,
		`testsapi_create_batch_size_bucket{le="256"} 3`,
		`testsapi_create_batch_size_sum 260`,
		`testsapi_create_batch_flights_bucket{le="1"} 1`,
		`testsapi_create_batch_flights_bucket{le="2"} 2`,
		`testsapi_create_batch_flights_bucket{le="4"} 3`,
		`testsapi_create_batch_flights_sum 6`,
	)
}

func TestBatchTimesAndPageGroup(t *testing.T) {
	m := metrics.New()
	m.BatchAnswered(200 * time.Microsecond)
	m.BatchAnswered(3 * time.Millisecond)
	m.QueueWait(10 * time.Microsecond)
	m.QueueWait(3 * time.Millisecond)
	m.QueueWait(5 * time.Second) // past the last bucket
	m.PageGroup(1)
	m.PageGroup(16)
	m.PageGroup(5)
	wantGathered(t, m,
		`testsapi_create_batch_seconds_bucket{le="0.00025"} 1`,
		`testsapi_create_batch_seconds_bucket{le="0.002"} 1`,
		`testsapi_create_batch_seconds_bucket{le="0.004"} 2`,
		`testsapi_create_batch_seconds_count 2`,
		`testsapi_create_queue_seconds_bucket{le="6.25e-05"} 1`,
		`testsapi_create_queue_seconds_bucket{le="0.004"} 2`,
		`testsapi_create_queue_seconds_bucket{le="2.048"} 2`,
		`testsapi_create_queue_seconds_count 3`,
		`testsapi_page_group_size_bucket{le="1"} 1`,
		`testsapi_page_group_size_bucket{le="8"} 2`,
		`testsapi_page_group_size_bucket{le="16"} 3`,
		`testsapi_page_group_size_sum 22`,
	)
}

// wantGathered checks that the text exposition of m has every one of lines.
func wantGathered(t *testing.T, m *metrics.Metrics, lines ...string) {
	t.Helper()
	rec := httptest.NewRecorder()
	m.Handler(slog.New(slog.DiscardHandler)).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	for _, line := range lines {
		if !strings.Contains(rec.Body.String(), line+"\n") {
			t.Errorf("no %s", line)
		}
	}
}

// BenchmarkMiddleware is the middleware's own cost on a matched route: the
// same request through the same router with and without it. The two run in
// alternating blocks, each block timed by the CPU clock of the benchmark's
// own thread, so that a busy shared machine (other processes, frequency
// changes) weighs on both alike; it reports the CPU time per request of
// each and the difference, overhead-ns/op. Run:
// go test -run '^$' -bench Middleware -benchmem -cpu 1 -count 10 ./internal/metrics
func BenchmarkMiddleware(b *testing.B) {
	const block = 200 // requests per timed block
	bare, instrumented := router(nil), router(metrics.New())
	req := httptest.NewRequest("GET", "/tests/1", nil)
	w := httptest.NewRecorder()
	run := func(h http.Handler) time.Duration {
		start := threadCPU(b)
		for range block {
			w.Body.Reset()
			h.ServeHTTP(w, req)
		}
		return threadCPU(b) - start
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var tBare, tInstr time.Duration
	b.ReportAllocs()
	for b.Loop() {
		tBare += run(bare)
		tInstr += run(instrumented)
	}
	n := float64(b.N * block)
	b.ReportMetric(float64(tBare)/n, "bare-ns/req")
	b.ReportMetric(float64(tInstr)/n, "metrics-ns/req")
	b.ReportMetric(float64(tInstr-tBare)/n, "overhead-ns/req")
}

// threadCPU is the CPU time the calling thread has used.
func threadCPU(b *testing.B) time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ts.Nano())
}
