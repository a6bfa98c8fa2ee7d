package api

import (
	"context"
	"net/http"

	"github.com/ybrest/testsapi/internal/metrics"
	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"
	"go.opentelemetry.io/otel/trace"
)

// instrumentationName names the tracer of the handler's own spans.
const instrumentationName = "github.com/ybrest/testsapi/internal/api"

// Tracing makes a span of tp for every request but the probes and the
// scrapes (/healthz, /readyz, /metrics), continuing the trace of an
// incoming traceparent header as prop reads it, and named by the route
// pattern ("GET /tests/{id}"), and a span for each export's stream. The
// spans record the method, route, path, status, sizes, client address and
// user agent: no other header's value, and nothing of the body or the
// query string, where names are. Without it (the default) there is no tracing
// middleware at all.
func Tracing(tp trace.TracerProvider, prop propagation.TextMapPropagator) Option {
	return func(o *options) {
		o.tracerProvider = tp
		o.propagator = prop
	}
}

// untraced are the paths of requests that make no span: probes and
// scrapes, every few seconds, would drown the requests in the traces.
var untraced = map[string]bool{"/healthz": true, "/readyz": true, "/metrics": true}

// trace is the tracing middleware (otelhttp), or nothing without Tracing.
// It sits outside the access log, which logs the span's trace id.
func (o *options) trace(next http.Handler) http.Handler {
	if o.tracerProvider == nil {
		return next
	}
	// The route is known once chi has routed the request, inside the
	// span: name the span then, as otelhttp does itself for routes of
	// net/http's ServeMux (Request.Pattern), which chi does not set.
	// Deferred, so that a response the handler aborted (a cut export,
	// http.ErrAbortHandler) is named too.
	named := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer nameSpan(r)
		next.ServeHTTP(w, r)
	})
	return otelhttp.NewHandler(named, "",
		otelhttp.WithTracerProvider(o.tracerProvider),
		otelhttp.WithPropagators(o.propagator),
		// The service's metrics are Prometheus's (internal/metrics).
		otelhttp.WithMeterProvider(noop.NewMeterProvider()),
		otelhttp.WithFilter(func(r *http.Request) bool { return !untraced[r.URL.Path] }),
		// Until routed, the method alone, as OpenTelemetry's HTTP
		// conventions name a span with no route.
		otelhttp.WithSpanNameFormatter(func(_ string, r *http.Request) string { return r.Method }),
	)
}

// nameSpan names r's span by the route chi found for it.
func nameSpan(r *http.Request) {
	span := trace.SpanFromContext(r.Context())
	if !span.IsRecording() {
		return // not sampled: nothing to name
	}
	if route := metrics.Route(r); route != metrics.Unmatched {
		span.SetName(r.Method + " " + route)
		span.SetAttributes(semconv.HTTPRoute(route))
	}
}

// exportSpan is the span of one export's stream, a child of the request's
// when that is sampled; rows and end record what it sent.
type exportSpan struct {
	span trace.Span // nil when the request is not traced
	rows int
}

// startExportSpan starts the span of an export of media, when the span of
// ctx (the request's) records; the export then runs on the returned
// context. Its tracer is the request span's: no tracing, no span.
func startExportSpan(ctx context.Context, media string) (context.Context, *exportSpan) {
	parent := trace.SpanFromContext(ctx)
	if !parent.IsRecording() {
		return ctx, &exportSpan{}
	}
	ctx, span := parent.TracerProvider().Tracer(instrumentationName).Start(ctx, "export",
		trace.WithAttributes(attribute.String("testsapi.export.media_type", media)))
	return ctx, &exportSpan{span: span}
}

// row counts a row sent.
func (e *exportSpan) row() {
	if e.span != nil {
		e.rows++
	}
}

// end ends the span; err is why the stream was cut, nil if it completed.
func (e *exportSpan) end(err error) {
	if e.span == nil {
		return
	}
	e.span.SetAttributes(attribute.Int("testsapi.export.rows", e.rows))
	if err != nil {
		e.span.SetStatus(codes.Error, "export cut")
	}
	e.span.End()
}
