package metrics_test

import (
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

// BenchmarkMiddleware is the middleware's own cost on a matched route, the
// router and a wrapped writer being there either way. Besides wall time it
// reports cpu-ns/op, the CPU time of the benchmark's own thread, which a
// busy shared machine inflates far less than wall time. Compare:
// go test -run '^$' -bench Middleware -benchmem -cpu 1 -count 10 ./internal/metrics
func BenchmarkMiddleware(b *testing.B) {
	for _, c := range []struct {
		name string
		m    *metrics.Metrics
	}{{"without", nil}, {"with", metrics.New()}} {
		b.Run(c.name, func(b *testing.B) {
			h := router(c.m)
			req := httptest.NewRequest("GET", "/tests/1", nil)
			w := httptest.NewRecorder()
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			b.ReportAllocs()
			start := threadCPU(b)
			for b.Loop() {
				w.Body.Reset()
				h.ServeHTTP(w, req)
			}
			b.ReportMetric(float64(threadCPU(b)-start)/float64(b.N), "cpu-ns/op")
		})
	}
}

// threadCPU is the CPU time the calling thread has used.
func threadCPU(b *testing.B) time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ts.Nano())
}
