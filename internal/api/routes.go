// Package api serves table test over HTTP: the routes, the handlers, and
// the mapping of every error to an RFC 9457 problem.
package api

import (
	"context"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"
	testsapi "github.com/ybrest/testsapi"
	"github.com/ybrest/testsapi/internal/metrics"
	"github.com/ybrest/testsapi/internal/store"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// testStore is what the handlers need from the store.
type testStore interface {
	Create(ctx context.Context, name string) (store.Test, error)
	CreateMany(ctx context.Context, names []string) ([]store.Test, error)
	CreateOnce(ctx context.Context, k store.KeyedCreate, answer func([]store.Test, error) store.Response) (store.Response, error)
	RenameOnce(ctx context.Context, k store.KeyedRename, answer func(store.Test, error) store.Response) (store.Response, error)
	Get(ctx context.Context, id int64) (store.Test, error)
	Rename(ctx context.Context, id int64, name string, match store.Match) (store.Test, error)
	Delete(ctx context.Context, id int64, match store.Match) error
	List(ctx context.Context, after int64, limit int) ([]store.Test, error)
	Stream(ctx context.Context, after int64, limit int, fn func(store.Test) error) error
	FindByName(ctx context.Context, name string, after int64) ([]store.Test, error)
	Import(ctx context.Context, src store.ImportSource, created func(store.Test) error) (int64, error)
	Count(ctx context.Context) (int64, error)
	EstimateCount(ctx context.Context) (n int64, known bool, err error)
	Ping(ctx context.Context) error
}

var _ testStore = (*store.Store)(nil)

// Limits bound what one request may ask of the service.
type Limits struct {
	MaxBodyBytes   int64         // largest POST body; larger is 413
	MaxBatch       int           // most items in one POST array; more is 422
	RequestTimeout time.Duration // longest a non-streaming request may take; then 503
	WriteTimeout   time.Duration // longest a streaming export may go without writing
	MaxExports     int           // most NDJSON/CSV exports at once; more is 503
	ReadyTimeout   time.Duration // longest GET /readyz waits for its database ping; 0 means 2 s
	// ExportStallTimeout is the longest an export that has begun waits
	// for its next row from the database; then it is cut. 0 means
	// RequestTimeout.
	ExportStallTimeout time.Duration
	ImportMaxBytes     int64         // largest NDJSON/CSV import body; larger is 413
	ReadTimeout        time.Duration // longest an import may go without a byte of its body
}

func (l Limits) exportStallTimeout() time.Duration {
	if l.ExportStallTimeout > 0 {
		return l.ExportStallTimeout
	}
	return l.RequestTimeout
}

// Option turns on or tunes an optional feature of the handler.
type Option func(*options)

type options struct {
	token          string        // API token the writes require; "" means none
	idempotencyTTL time.Duration // how long an Idempotency-Key is remembered
	metrics        *metrics.Metrics
	serveMetrics   bool
	corsOrigins    []string                        // see CORS; none means CORS is off
	tracerProvider trace.TracerProvider            // see Tracing; nil means no tracing
	propagator     propagation.TextMapPropagator   // see Tracing
	compress       func(http.Handler) http.Handler // see Compress; nil means off
	feed           *Feed                           // see WithFeed; nil means the change feed is off
}

// WithFeed serves the change feed f on GET /tests (Accept:
// text/event-stream).
func WithFeed(f *Feed) Option {
	return func(o *options) { o.feed = f }
}

// WithMetrics counts and times every request in m and, when serve is true,
// serves m at GET /metrics. serve is false when the metrics listen on an
// address of their own (METRICS_ADDR), away from the API's clients.
func WithMetrics(m *metrics.Metrics, serve bool) Option {
	return func(o *options) {
		o.metrics = m
		o.serveMetrics = serve
	}
}

// instrument is the metrics middleware, or nothing without metrics.
func (o *options) instrument(next http.Handler) http.Handler {
	if o.metrics == nil {
		return next
	}
	return o.metrics.Middleware(next)
}

// compressor is the compression middleware, or nothing when it is off.
func (o *options) compressor(next http.Handler) http.Handler {
	if o.compress == nil {
		return next
	}
	return o.compress(next)
}

// NewHandler returns the service's HTTP handler: every route and its
// middleware, in the order openapi.yaml lists them.
func NewHandler(log *slog.Logger, st testStore, lim Limits, opts ...Option) http.Handler {
	o := options{idempotencyTTL: defaultIdempotencyTTL}
	for _, opt := range opts {
		opt(&o)
	}
	r := chi.NewRouter()
	// GetHead answers HEAD with the GET handler (net/http drops the body),
	// as RFC 9110 expects of every GET resource. instrument sits inside the
	// access log to reuse its response writer wrapper. lingerBody comes
	// first, so that the access log and the metrics time the answer, not
	// the reading of a refused body after it. trace comes before the
	// access log, which logs its trace id. Compression sits inside the
	// access log, which counts the bytes sent (compressed), and outside
	// recoverer, whose cut of a begun answer must pass through it (see
	// compressAnswers); request bodies are decoded before any handler reads
	// them, under its limits.
	r.Use(lingerBody, o.trace, requestID, secureHeaders, accessLog(log), o.instrument, o.compressor, recoverer(log),
		decodeBodies(log), middleware.GetHead)
	if c := o.cors(); c != nil {
		r.Use(c)
		allow := func(path string) string { return allowed(r, path) }
		r.Options("/tests", handleOptions(allow).ServeHTTP)
		r.Options("/tests/{id}", handleOptions(allow).ServeHTTP)
	}

	// An import (NDJSON or CSV body) is not bounded by the request
	// timeout, which would bound the size of a file; see handleTestsImport.
	r.With(requireToken(log, o.token)).Post("/tests", byContentType(
		handleTestsImport(log, st, lim),
		timeout(lim.RequestTimeout)(handleTestsCreate(log, st, lim, o.idempotencyTTL)),
	).ServeHTTP)
	r.Get("/tests", handleTestsList(log, st, lim, o.feed).ServeHTTP) // times its own JSON pages; streams and the feed run long
	r.With(timeout(lim.RequestTimeout)).Get("/tests/{id}", handleTestsGet(log, st).ServeHTTP)
	r.With(requireToken(log, o.token), timeout(lim.RequestTimeout)).
		Patch("/tests/{id}", handleTestsRename(log, st, lim, o.idempotencyTTL).ServeHTTP)
	r.With(requireToken(log, o.token), timeout(lim.RequestTimeout)).
		Delete("/tests/{id}", handleTestsDelete(log, st).ServeHTTP)
	r.Get("/healthz", handleHealthz().ServeHTTP)
	r.Get("/readyz", handleReadyz(log, st, lim.ReadyTimeout).ServeHTTP)
	r.Get("/openapi.yaml", handleOpenAPI(testsapi.OpenAPI).ServeHTTP)
	r.Get("/", handleRoot().ServeHTTP)
	r.Get("/docs", handleDocs().ServeHTTP)
	r.Get("/docs/{asset}", handleDocsAsset().ServeHTTP)
	if o.serveMetrics {
		r.Get("/metrics", o.metrics.Handler(log).ServeHTTP)
	}

	r.NotFound(func(w http.ResponseWriter, _ *http.Request) {
		writeProblem(w, http.StatusNotFound, "There is no resource at this path.", nil)
	})
	r.MethodNotAllowed(func(w http.ResponseWriter, req *http.Request) {
		w.Header().Set("Allow", allowed(r, req.URL.Path))
		writeProblem(w, http.StatusMethodNotAllowed, "This path does not support "+req.Method+".", nil)
	})
	return r
}

// byContentType sends a POST /tests of an import media type to imports,
// anything else to create.
func byContentType(imports, create http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if isImport(r.Header.Get("Content-Type")) {
			imports.ServeHTTP(w, r)
			return
		}
		create.ServeHTTP(w, r)
	})
}

// allowed lists the methods routes has for path, for the Allow header of a
// 405 (chi sets it only on its default handler).
func allowed(routes chi.Routes, path string) string {
	var ms []string
	for _, m := range []string{http.MethodGet, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete} {
		if routes.Match(chi.NewRouteContext(), m, path) {
			ms = append(ms, m)
			if m == http.MethodGet {
				ms = append(ms, http.MethodHead)
			}
		}
	}
	return strings.Join(ms, ", ")
}
