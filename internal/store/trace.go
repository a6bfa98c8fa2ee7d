package store

import (
	"context"

	"github.com/exaring/otelpgx"
	"github.com/jackc/pgx/v5/multitracer"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/trace"
)

// instrumentationName names the tracer of the store's own spans.
const instrumentationName = "github.com/ybrest/testsapi/internal/store"

// traceStatements adds otelpgx's tracer, on tp, to cfg's connections. Its
// spans record the statement's text (SQL with $1 placeholders: every
// value is bound, never in the text), the host, port, database and user,
// and the SQLSTATE of an error; never the arguments (otelpgx leaves them
// out unless WithIncludeQueryParameters asks) nor the password. Spans are
// made only under a sampled span: the idle check, migrations and other
// work of no request make none.
func traceStatements(cfg *pgxpool.Config, tp trace.TracerProvider) {
	t := otelpgx.NewTracer(
		otelpgx.WithTracerProvider(tp),
		// The service's metrics are Prometheus's (internal/metrics), not
		// OpenTelemetry's.
		otelpgx.WithMeterProvider(noop.NewMeterProvider()),
	)
	if cfg.ConnConfig.Tracer == nil {
		cfg.ConnConfig.Tracer = t
		return
	}
	cfg.ConnConfig.Tracer = multitracer.New(cfg.ConnConfig.Tracer, t)
}

// Tracing has the store make spans of tp for what it runs on behalf of
// several requests at once: a group-commit batch is one span, linked to
// the span of every create it carried (and each create's span linked back
// to it). A page query shared by several List calls runs under the span
// of the one that started it in any case (pages.go keeps that read's
// context values). Without it (the default) none of that costs anything. Statement spans come from the pool (TraceStatements).
func Tracing(tp trace.TracerProvider) Option {
	return func(s *Store) {
		s.creates.tracer = tp.Tracer(instrumentationName)
	}
}

// traceBatch starts the span of a batch, under the first of its creates
// whose span is sampled, so that a sampled create always finds its batch
// (with a parent-based sampler, the batch is sampled when its parent is),
// and linked to every create's span; each create's span gets a link back.
// ctx is the batch's context, to carry the span to its statements. With
// no sampled create, it returns ctx and a span that records nothing.
func (b *batcher) traceBatch(ctx context.Context, batch []*createReq, flights int) (context.Context, trace.Span) {
	var parent trace.Span
	for _, r := range batch {
		if s := trace.SpanFromContext(r.ctx); s.IsRecording() {
			parent = s
			break
		}
	}
	if parent == nil {
		return ctx, trace.SpanFromContext(ctx) // no create is sampled: no span
	}
	links := make([]trace.Link, 0, len(batch))
	for _, r := range batch {
		if sc := trace.SpanContextFromContext(r.ctx); sc.IsValid() {
			links = append(links, trace.Link{SpanContext: sc})
		}
	}
	ctx, span := b.tracer.Start(trace.ContextWithSpan(ctx, parent), "create batch",
		trace.WithLinks(links...),
		trace.WithAttributes(
			attribute.Int("testsapi.batch.creates", len(batch)),
			attribute.Int("testsapi.batch.flights", flights),
		))
	back := trace.Link{SpanContext: span.SpanContext()}
	for _, r := range batch {
		trace.SpanFromContext(r.ctx).AddLink(back)
	}
	return ctx, span
}

// endBatchSpan ends a batch's span with what the statement did.
func endBatchSpan(span trace.Span, created int, err error) {
	if !span.IsRecording() {
		return
	}
	if err != nil {
		// The SQLSTATE only: an error's text could quote a value.
		span.SetStatus(codes.Error, "create batch failed")
		span.SetAttributes(attribute.String("db.response.status_code", sqlstate(err)))
	} else {
		span.SetAttributes(attribute.Int("testsapi.batch.created", created))
	}
	span.End()
}
