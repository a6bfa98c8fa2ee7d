// Package metrics exposes the service's Prometheus metrics: HTTP requests
// by route pattern, method and status, requests in flight, the database
// pool's statistics, and database errors by SQLSTATE class, beside the Go
// runtime and process metrics. Everything lives in a registry of its own,
// never Prometheus' global one, so tests and several handlers in one process
// do not share counters.
package metrics

import (
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// namespace prefixes every metric the service defines itself.
const namespace = "testsapi"

// Metrics holds the registry and the service's own metrics.
type Metrics struct {
	reg       *prometheus.Registry
	requests  *prometheus.CounterVec
	duration  *prometheus.HistogramVec
	inFlight  prometheus.Gauge
	dbErrors  *prometheus.CounterVec
	batches   prometheus.Histogram
	flights   prometheus.Histogram
	batchDur  prometheus.Histogram
	queueWait prometheus.Histogram
	pages     prometheus.Histogram
	groups    prometheus.Histogram
	feed      feedMetrics

	// series caches each label set's counter and histogram: one map
	// lookup per request instead of two label hashes and validations.
	mu     sync.RWMutex
	series map[seriesKey]series
}

type seriesKey struct {
	method, route string
	status        int
}

type series struct {
	requests prometheus.Counter
	duration prometheus.Observer
}

// New returns a registry with the Go and process collectors and the
// service's HTTP and database error metrics. The pool's statistics are added
// by CollectPool.
func New() *Metrics {
	labels := []string{"method", "route", "status"}
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace,
			Name:      "http_requests_total",
			Help:      "HTTP requests answered, by method, route pattern (not raw path) and status.",
		}, labels),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace,
			Name:      "http_request_duration_seconds",
			Help:      "Time from the request reaching the router to the handler's return, by method, route pattern and status.",
			// DefBuckets (5 ms to 10 s) end at the default REQUEST_TIMEOUT.
			Buckets: prometheus.DefBuckets,
		}, labels),
		inFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace,
			Name:      "http_requests_in_flight",
			Help:      "HTTP requests being served now.",
		}),
		dbErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace,
			Name:      "db_errors_total",
			Help: "Database errors the store returned, by SQLSTATE class (the code's first two characters; " +
				`"none" when there was no answer from the server: unreachable, connection lost, or timed out).`,
		}, []string{"class"}),
		batches: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: namespace,
			Name:      "create_batch_size",
			Help:      "Single creates sent together in one group-commit statement.",
			// 1 to 256 (the store's largest batch), doubling.
			Buckets: prometheus.ExponentialBuckets(1, 2, 9),
		}),
		flights: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: namespace,
			Name:      "create_batch_flights",
			Help:      "Group-commit batches in flight at once (the one being sent included), counted as each is sent.",
			// 1 to 32 (half of a 64-connection pool), doubling.
			Buckets: prometheus.ExponentialBuckets(1, 2, 6),
		}),
		batchDur: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: namespace,
			Name:      "create_batch_seconds",
			Help: "How long each group-commit statement took, from being sent to its answer: " +
				"the round trip to the database, the insert and the commit.",
			// 0.25 ms to about 0.5 s, doubling: an fsync next door to a slow consensus round.
			Buckets: prometheus.ExponentialBuckets(0.00025, 2, 12),
		}),
		queueWait: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: namespace,
			Name:      "create_queue_seconds",
			Help: "How long each single create waited for its group-commit batch to be sent " +
				"(while every flight was busy); its statement's time is create_batch_seconds.",
			// 62.5 µs (a flight was free) to about 2 s (DB_ACQUIRE_TIMEOUT's default bounds the wait), doubling.
			Buckets: prometheus.ExponentialBuckets(0.0000625, 2, 16),
		}),
		pages: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: namespace,
			Name:      "page_read_shared",
			Help:      "GET /tests JSON pages answered by one shared page query.",
			Buckets:   prometheus.ExponentialBuckets(1, 2, 9),
		}),
		groups: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: namespace,
			Name:      "page_group_size",
			Help:      "GET /tests JSON page queries sent together in one statement (PostgreSQL only; 1 is a page alone).",
			Buckets:   prometheus.ExponentialBuckets(1, 2, 5), // 1 to 16, the store's largest group
		}),
		series: map[seriesKey]series{},
		feed:   newFeedMetrics(),
	}
	m.reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.requests, m.duration, m.inFlight, m.dbErrors, m.batches, m.flights, m.batchDur, m.queueWait, m.pages, m.groups,
		m.feed.slotLag, m.feed.slotState, m.feed.consumer,
	)
	return m
}

// Gatherer reads the registry, as Handler does for a scrape.
func (m *Metrics) Gatherer() prometheus.Gatherer { return m.reg }

// Handler serves the registry in the Prometheus text format. Errors
// gathering a metric are logged and the rest is served.
func (m *Metrics) Handler(log *slog.Logger) http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{
		ErrorLog:      slog.NewLogLogger(log.Handler(), slog.LevelError),
		ErrorHandling: promhttp.ContinueOnError,
		Registry:      m.reg, // counts its own errors in promhttp_metric_handler_errors_total
	})
}

// DBError counts one database error; sqlstate is "" for an error that has
// none. Pass it to store.ObserveErrors.
func (m *Metrics) DBError(sqlstate string) {
	class := "none"
	if len(sqlstate) == 5 {
		class = sqlstate[:2]
	}
	m.dbErrors.WithLabelValues(class).Inc()
}

// Batch records the size of one group-commit batch and the batches in
// flight with it. Pass it to store.OnBatch.
func (m *Metrics) Batch(size, flights int) {
	m.batches.Observe(float64(size))
	m.flights.Observe(float64(flights))
}

// BatchAnswered records how long one group-commit statement took. Pass it
// to store.OnBatchAnswered.
func (m *Metrics) BatchAnswered(took time.Duration) {
	m.batchDur.Observe(took.Seconds())
}

// QueueWait records how long one create waited for its batch to be sent.
// Pass it to store.OnQueueWait.
func (m *Metrics) QueueWait(waited time.Duration) {
	m.queueWait.Observe(waited.Seconds())
}

// PageReaders records how many page requests one page query answered.
// Pass it to store.OnPageRead.
func (m *Metrics) PageReaders(n int) {
	m.pages.Observe(float64(n))
}

// PageGroup records how many page queries one statement carried. Pass it
// to store.OnPageGroup.
func (m *Metrics) PageGroup(pages int) {
	m.groups.Observe(float64(pages))
}

// Middleware counts and times every request by method, route pattern and
// status. It belongs after chi's router has matched (any r.Use middleware
// qualifies: the pattern is read after the handler returns). The route is
// the pattern, such as /tests/{id}, so ids never become label values;
// requests that match no route are labelled "unmatched".
func (m *Metrics) Middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		m.inFlight.Inc()
		// Reuse the access log's wrapper when there is one: no second
		// allocation on every request.
		ww, ok := w.(middleware.WrapResponseWriter)
		if !ok {
			ww = middleware.NewWrapResponseWriter(w, r.ProtoMajor)
		}
		defer func() {
			m.inFlight.Dec()
			route := Route(r)
			status := ww.Status()
			if status == 0 {
				status = http.StatusOK // a handler that wrote nothing
			}
			s := m.seriesFor(seriesKey{methodLabel(r.Method), route, status})
			s.requests.Inc()
			s.duration.Observe(time.Since(start).Seconds())
		}()
		next.ServeHTTP(ww, r)
	})
}

// seriesFor returns the metrics of one label set, creating them on first
// use.
func (m *Metrics) seriesFor(k seriesKey) series {
	m.mu.RLock()
	s, ok := m.series[k]
	m.mu.RUnlock()
	if ok {
		return s
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	code := strconv.Itoa(k.status)
	s = series{
		requests: m.requests.WithLabelValues(k.method, k.route, code),
		duration: m.duration.WithLabelValues(k.method, k.route, code),
	}
	m.series[k] = s
	return s
}

// methodLabel keeps the method label's values few: a client can send any
// token as a method.
func methodLabel(method string) string {
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch,
		http.MethodDelete, http.MethodOptions, http.MethodConnect, http.MethodTrace:
		return method
	}
	return "OTHER"
}

// Route is r's route pattern, such as /tests/{id}, for labels and logs;
// "unmatched" for a request that matched no route (a 404, or a 405 on a
// path that exists for other methods). Read it once the router has run.
func Route(r *http.Request) string {
	if rc := chi.RouteContext(r.Context()); rc != nil {
		if p := rc.RoutePattern(); p != "" {
			return p
		}
	}
	return Unmatched
}

// Unmatched is Route's answer for a request that matched no route.
const Unmatched = "unmatched"
