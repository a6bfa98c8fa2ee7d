package store_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/ybrest/testsapi/internal/dbtest"
	"github.com/ybrest/testsapi/internal/spantest"
	"github.com/ybrest/testsapi/internal/store"
	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
)

// TestTraceBatch: a group-commit batch is one span, under one of its
// creates' spans and linked to all of them, each of which links back to
// it; its statement's span is under it; the names are in no span; and work
// of no traced caller (the blocker) makes no span at all.
func TestTraceBatch(t *testing.T) {
	spans := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(spans), sdktrace.WithSampler(sdktrace.AlwaysSample()))
	e := mustBatchEnvPool(t, dbtest.NewSchema(t), []store.PoolOption{store.TraceStatements(tp)}, store.Tracing(tp))

	release := e.begin(t, `LOCK TABLE test IN ACCESS EXCLUSIVE MODE`)
	blockers := e.occupyFlights(t, t.Context(), "blocker")
	names := []string{"secret-batch-a", "secret-batch-b", "secret-batch-c", "secret-batch-d"}
	creates := make([]trace.Span, len(names))
	chs := make([]<-chan result, len(names))
	before := e.st.Queued()
	for i, n := range names {
		// Each create in a trace of its own, as each request is.
		ctx, span := tp.Tracer("test").Start(context.Background(), fmt.Sprintf("create %d", i))
		creates[i] = span
		chs[i] = e.create(ctx, n)
	}
	dbtest.WaitFor(t, "creates queued", within, func() bool { return e.st.Queued() == before+len(names) })
	release()
	for _, ch := range blockers {
		if r := recv(t, ch); r.err != nil {
			t.Fatalf("blocker: %v", r.err)
		}
	}
	for i, ch := range chs {
		if r := recv(t, ch); r.err != nil {
			t.Fatalf("Create(%q): %v", names[i], r.err)
		}
		creates[i].End()
	}
	e.wantBatches(t, len(names))

	got := spans.GetSpans()
	ours := map[trace.TraceID]bool{}
	for _, c := range creates {
		ours[c.SpanContext().TraceID()] = true
	}
	var batch *tracetest.SpanStub
	for i, s := range got {
		if !ours[s.SpanContext.TraceID()] {
			t.Errorf("span %q of trace %s, not of any create: untraced work made a span", s.Name, s.SpanContext.TraceID())
		}
		if s.Name == "create batch" {
			if batch != nil {
				t.Fatalf("two batch spans, want one")
			}
			batch = &got[i]
		}
	}
	if batch == nil {
		t.Fatalf("no span named \"create batch\" among %d spans", len(got))
	}
	// The first create in the queue; the goroutines queued in any order.
	if !slices.ContainsFunc(creates, func(c trace.Span) bool { return c.SpanContext().SpanID() == batch.Parent.SpanID() }) {
		t.Errorf("batch span's parent %s is none of the creates' spans", batch.Parent.SpanID())
	}
	linked := map[trace.SpanID]bool{}
	for _, l := range batch.Links {
		linked[l.SpanContext.SpanID()] = true
	}
	for i, c := range creates {
		if !linked[c.SpanContext().SpanID()] {
			t.Errorf("batch span has no link to create %d's span", i)
		}
	}
	if len(batch.Links) != len(creates) {
		t.Errorf("batch span has %d links, want %d", len(batch.Links), len(creates))
	}
	wantAttr(t, *batch, "testsapi.batch.creates", attribute.IntValue(len(names)))
	wantAttr(t, *batch, "testsapi.batch.created", attribute.IntValue(len(names)))

	var insert bool
	for _, s := range got {
		for i, c := range creates {
			if s.SpanContext.SpanID() != c.SpanContext().SpanID() {
				continue
			}
			if len(s.Links) != 1 || s.Links[0].SpanContext.SpanID() != batch.SpanContext.SpanID() {
				t.Errorf("create %d's span links %v, want one link to the batch span", i, s.Links)
			}
		}
		if s.Parent.SpanID() == batch.SpanContext.SpanID() && strings.Contains(spantest.Attr(s, "db.query.text"), "INSERT INTO test") {
			insert = true
		}
	}
	if !insert {
		t.Errorf("no INSERT statement span under the batch span")
	}
	spantest.NoneContains(t, got, names...)
}

// wantAttr checks that s has attribute key with value want.
func wantAttr(t *testing.T, s tracetest.SpanStub, key attribute.Key, want attribute.Value) {
	t.Helper()
	for _, a := range s.Attributes {
		if a.Key == key {
			if a.Value != want {
				t.Errorf("span %q: %s = %s, want %s", s.Name, key, a.Value.String(), want.String())
			}
			return
		}
	}
	t.Errorf("span %q has no attribute %s", s.Name, key)
}
