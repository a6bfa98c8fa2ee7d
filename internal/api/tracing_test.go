package api_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/ybrest/testsapi/internal/api"
	"github.com/ybrest/testsapi/internal/dbtest"
	"github.com/ybrest/testsapi/internal/spantest"
	"github.com/ybrest/testsapi/internal/store"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
)

// tracedEnv is a service with tracing on, its spans kept in memory as they
// end, and its log.
type tracedEnv struct {
	*env
	url   string
	spans *tracetest.InMemoryExporter
	log   *syncBuffer
}

func mustTracedEnv(t *testing.T) *tracedEnv {
	t.Helper()
	spans := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(spans),
		sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.AlwaysSample())))
	url := dbtest.NewSchema(t)
	pool := mustPool(t, url, nil, store.TraceStatements(tp))
	st := store.New(pool, store.Tracing(tp))
	t.Cleanup(st.Close) // before the pool's Close: cleanups run last-in first-out
	if _, _, err := st.Migrate(context.Background()); err != nil {
		t.Fatalf("migrate: %v", err)
	}
	var log syncBuffer
	h := api.NewHandler(slog.New(slog.NewJSONHandler(&log, nil)), st, testLimits, api.Tracing(tp, propagation.TraceContext{}))
	return &tracedEnv{env: &env{h: h, pool: pool, st: st}, url: url, spans: spans, log: &log}
}

// accessLines returns the access log's lines so far.
func (e *tracedEnv) accessLines(t *testing.T) []map[string]any {
	t.Helper()
	var lines []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(e.log.String()), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("log line %q: %v", l, err)
		}
		if m["msg"] == "request" {
			lines = append(lines, m)
		}
	}
	return lines
}

// ofTrace returns the spans of trace id, ended so far.
func (e *tracedEnv) ofTrace(id trace.TraceID) tracetest.SpanStubs {
	var out tracetest.SpanStubs
	for _, s := range e.spans.GetSpans() {
		if s.SpanContext.TraceID() == id {
			out = append(out, s)
		}
	}
	return out
}

// traceparent returns a W3C traceparent header of a new trace id and
// parent span id, sampled or not, and both ids.
func traceparent(t *testing.T, sampled bool) (string, trace.TraceID, trace.SpanID) {
	t.Helper()
	var tid trace.TraceID
	var sid trace.SpanID
	// Unique per test and call, and easy to spot in a failure.
	copy(tid[:], fmt.Sprintf("%-16.16s", strconv.FormatInt(int64(len(t.Name()))<<32+int64(nextID()), 16)))
	copy(sid[:], "parent!!")
	flags := "00"
	if sampled {
		flags = "01"
	}
	return "00-" + tid.String() + "-" + sid.String() + "-" + flags, tid, sid
}

var ids struct {
	mu sync.Mutex
	n  int
}

func nextID() int {
	ids.mu.Lock()
	defer ids.mu.Unlock()
	ids.n++
	return ids.n
}

// serverSpan returns the one server span of spans.
func serverSpan(t *testing.T, spans tracetest.SpanStubs) tracetest.SpanStub {
	t.Helper()
	var found []tracetest.SpanStub
	for _, s := range spans {
		if s.SpanKind == trace.SpanKindServer {
			found = append(found, s)
		}
	}
	if len(found) != 1 {
		t.Fatalf("%d server spans, want 1: %v", len(found), spanNames(spans))
	}
	return found[0]
}

func spanNames(spans tracetest.SpanStubs) []string {
	var out []string
	for _, s := range spans {
		out = append(out, s.Name)
	}
	return out
}

// childrenOf returns the spans whose parent is span id.
func childrenOf(spans tracetest.SpanStubs, id trace.SpanID) tracetest.SpanStubs {
	var out tracetest.SpanStubs
	for _, s := range spans {
		if s.Parent.SpanID() == id {
			out = append(out, s)
		}
	}
	return out
}

// TestTracingRequest: a request's span continues the trace of its
// traceparent, is named by its route pattern, has its statements' spans
// under it, and its access log line carries the trace id.
func TestTracingRequest(t *testing.T) {
	e := mustTracedEnv(t)
	row := mustCreate(t, e.h, "traced")[0]

	header, tid, parent := traceparent(t, true)
	res := do(t, e.h, "GET", "/tests/"+strconv.Itoa(int(row.ID)), "", "traceparent", header)
	if res.status != http.StatusOK {
		t.Fatalf("GET: %d %s", res.status, res.body)
	}
	spans := e.ofTrace(tid)
	srv := serverSpan(t, spans)
	if srv.Name != "GET /tests/{id}" {
		t.Errorf("request span named %q, want \"GET /tests/{id}\"", srv.Name)
	}
	if got := spantest.Attr(srv, "http.route"); got != "/tests/{id}" {
		t.Errorf("http.route %q, want /tests/{id}", got)
	}
	if srv.Parent.SpanID() != parent || !srv.Parent.IsRemote() {
		t.Errorf("request span's parent %s (remote %v), want the traceparent's %s", srv.Parent.SpanID(), srv.Parent.IsRemote(), parent)
	}
	var selects int
	for _, s := range childrenOf(spans, srv.SpanContext.SpanID()) {
		if s.SpanKind == trace.SpanKindClient && strings.Contains(spantest.Attr(s, "db.query.text"), "FROM test") {
			selects++
		}
	}
	if selects != 1 {
		t.Errorf("%d SELECT statement spans under the request span, want 1; spans %v", selects, spanNames(spans))
	}

	var logged bool
	for _, l := range e.accessLines(t) {
		if l["trace_id"] == tid.String() {
			logged = true
			if l["route"] != "/tests/{id}" {
				t.Errorf("access log line of trace %s: route %v", tid, l["route"])
			}
		}
	}
	if !logged {
		t.Errorf("no access log line with trace_id %s", tid)
	}

	t.Run("NewTrace", func(t *testing.T) {
		res := do(t, e.h, "POST", "/tests", `{"name":"untraced-client"}`)
		if res.status != http.StatusCreated {
			t.Fatalf("POST: %d %s", res.status, res.body)
		}
		for _, s := range e.spans.GetSpans() {
			if s.Name == "POST /tests" && !s.Parent.IsValid() {
				return
			}
		}
		t.Errorf("no root span \"POST /tests\" for a request without traceparent")
	})
	t.Run("NotSampled", func(t *testing.T) {
		// The client's sampling decision holds; the log still joins.
		header, tid, _ := traceparent(t, false)
		if res := do(t, e.h, "GET", "/tests", "", "traceparent", header); res.status != http.StatusOK {
			t.Fatalf("GET: %d %s", res.status, res.body)
		}
		if spans := e.ofTrace(tid); len(spans) != 0 {
			t.Errorf("unsampled trace has spans %v", spanNames(spans))
		}
		var logged bool
		for _, l := range e.accessLines(t) {
			logged = logged || l["trace_id"] == tid.String()
		}
		if !logged {
			t.Errorf("no access log line with trace_id %s", tid)
		}
	})
	t.Run("Unmatched", func(t *testing.T) {
		header, tid, _ := traceparent(t, true)
		if res := do(t, e.h, "GET", "/nothing/here", "", "traceparent", header); res.status != http.StatusNotFound {
			t.Fatalf("GET: %d %s", res.status, res.body)
		}
		if srv := serverSpan(t, e.ofTrace(tid)); srv.Name != "GET" {
			t.Errorf("span of an unmatched path named %q, want the method alone", srv.Name)
		}
	})
	t.Run("Probes", func(t *testing.T) {
		header, tid, _ := traceparent(t, true)
		for _, path := range []string{"/healthz", "/readyz"} {
			do(t, e.h, "GET", path, "", "traceparent", header)
		}
		if spans := e.ofTrace(tid); len(spans) != 0 {
			t.Errorf("probes made spans %v", spanNames(spans))
		}
	})
}

// TestTracingExport: an export's stream is one span under the request's,
// counting its rows, with the query's span under it.
func TestTracingExport(t *testing.T) {
	e := mustTracedEnv(t)
	mustCreate(t, e.h, "e1", "e2", "e3")
	header, tid, _ := traceparent(t, true)
	res := do(t, e.h, "GET", "/tests", "", "Accept", "application/x-ndjson", "traceparent", header)
	if res.status != http.StatusOK || bytes.Count(res.body, []byte("\n")) != 3 {
		t.Fatalf("export: %d %q", res.status, res.body)
	}
	spans := e.ofTrace(tid)
	srv := serverSpan(t, spans)
	if srv.Name != "GET /tests" {
		t.Errorf("request span named %q", srv.Name)
	}
	var export *tracetest.SpanStub
	for _, s := range childrenOf(spans, srv.SpanContext.SpanID()) {
		if s.Name == "export" {
			export = &s
		}
	}
	if export == nil {
		t.Fatalf("no export span under the request span; spans %v", spanNames(spans))
	}
	if got := spantest.Attr(*export, "testsapi.export.rows"); got != "3" {
		t.Errorf("export span rows %q, want 3", got)
	}
	if got := spantest.Attr(*export, "testsapi.export.media_type"); got != "application/x-ndjson" {
		t.Errorf("export span media type %q", got)
	}
	if export.StartTime.Before(srv.StartTime) || export.EndTime.After(srv.EndTime) {
		t.Errorf("export span %v to %v outside the request's %v to %v", export.StartTime, export.EndTime, srv.StartTime, srv.EndTime)
	}
	var query bool
	for _, s := range childrenOf(spans, export.SpanContext.SpanID()) {
		if strings.Contains(spantest.Attr(s, "db.query.text"), "FROM test") {
			query = true
			if s.EndTime.After(export.EndTime) {
				t.Errorf("query span ends after the export span")
			}
		}
	}
	if !query {
		t.Errorf("no query span under the export span; spans %v", spanNames(spans))
	}
}

// TestTracingConcurrentCreates: creates sent at once through the router go
// in group-commit batches, each batch span linked to the request spans of
// the creates it carried, and each of those linked back to its batch.
func TestTracingConcurrentCreates(t *testing.T) {
	e := mustTracedEnv(t)
	const n = 8
	tids := make([]trace.TraceID, n)
	var wg sync.WaitGroup
	for i := range n {
		header, tid, _ := traceparent(t, true)
		tids[i] = tid
		wg.Go(func() {
			req := newRequest("POST", "/tests", fmt.Sprintf(`{"name":"concurrent-%d"}`, i), "traceparent", header)
			res := serve(t, e.h, req)
			if res.status != http.StatusCreated {
				t.Errorf("POST: %d %s", res.status, res.body)
			}
		})
	}
	wg.Wait()
	all := e.spans.GetSpans()
	batches := map[trace.SpanID]tracetest.SpanStub{}
	for _, s := range all {
		if s.Name == "create batch" {
			batches[s.SpanContext.SpanID()] = s
		}
	}
	for i, tid := range tids {
		srv := serverSpan(t, e.ofTrace(tid))
		if len(srv.Links) != 1 {
			t.Errorf("create %d: request span has %d links, want 1 to its batch", i, len(srv.Links))
			continue
		}
		b, ok := batches[srv.Links[0].SpanContext.SpanID()]
		if !ok {
			t.Errorf("create %d: request span links to %s, no batch span", i, srv.Links[0].SpanContext.SpanID())
			continue
		}
		var back bool
		for _, l := range b.Links {
			back = back || l.SpanContext.SpanID() == srv.SpanContext.SpanID()
		}
		if !back {
			t.Errorf("create %d: its batch span does not link to its request span", i)
		}
	}
}

// TestTracingNoSecrets: no span holds a name a request sent (in a body or
// the query string), the API token, or the database password, whatever
// the route and whether it failed.
func TestTracingNoSecrets(t *testing.T) {
	e := mustTracedEnv(t)
	var secrets []string
	name := func() string {
		s := fmt.Sprintf("secret-name-%d", len(secrets))
		secrets = append(secrets, s)
		return s
	}
	a, b, c, d, f := name(), name(), name(), name(), name()
	steps := []struct {
		method, target, body string
		header               []string
		status               int
	}{
		{"POST", "/tests", `{"name":"` + a + `"}`, nil, http.StatusCreated},
		{"POST", "/tests", `{"name":"` + a + `"}`, nil, http.StatusConflict},
		{"POST", "/tests", `[{"name":"` + b + `"},{"name":"` + c + `"}]`, nil, http.StatusCreated},
		{"POST", "/tests", `{"name":"` + d + `"}`, []string{"Idempotency-Key", "key-1"}, http.StatusCreated},
		{"GET", "/tests?name=" + a, "", nil, http.StatusOK},
		{"GET", "/tests?name=" + b, "", []string{"Accept", "text/csv"}, http.StatusOK},
		{"GET", "/tests", "", []string{"Accept", "application/x-ndjson"}, http.StatusOK},
	}
	for _, s := range steps {
		res := do(t, e.h, s.method, s.target, s.body, s.header...)
		if res.status != s.status {
			t.Fatalf("%s %s: %d %s, want %d", s.method, s.target, res.status, res.body, s.status)
		}
	}
	rows := mustCreate(t, e.h, name(), name())
	for i, status := range []int{http.StatusOK, http.StatusConflict} {
		target := "/tests/" + strconv.Itoa(int(rows[i].ID))
		if res := do(t, e.h, "PATCH", target, `{"name":"`+f+`"}`); res.status != status {
			t.Fatalf("PATCH %s: %d %s, want %d", target, res.status, res.body, status)
		}
	}
	imp := newRequest("POST", "/tests", `{"name":"`+name()+`"}`+"\n", "Content-Type", "application/x-ndjson")
	if res := serve(t, e.h, imp); res.status != http.StatusOK && res.status != http.StatusCreated {
		t.Fatalf("import: %d %s", res.status, res.body)
	}
	cfg, err := pgxpool.ParseConfig(e.url)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.ConnConfig.Password != "" {
		secrets = append(secrets, cfg.ConnConfig.Password)
	}
	spans := e.spans.GetSpans()
	if len(spans) < len(steps) {
		t.Fatalf("only %d spans", len(spans))
	}
	spantest.NoneContains(t, spans, secrets...)
}

// TestTracingExportCut: an export cut midway (the database failed after
// 5000 rows) ends its span with an error status and the rows it sent, and
// the request span still ends, though the handler aborted the response.
func TestTracingExportCut(t *testing.T) {
	t.Parallel()
	spans := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(spans))
	srv := httptest.NewServer(api.NewHandler(slog.New(slog.DiscardHandler), midStreamStore{}, testLimits,
		api.Tracing(tp, propagation.TraceContext{})))
	defer srv.Close()
	res := getExport(t, srv, "application/x-ndjson")
	_, err := io.ReadAll(res.Body)
	res.Body.Close()
	if err == nil {
		t.Fatalf("export read to its end, want a cut")
	}
	var export, request *tracetest.SpanStub
	dbtest.WaitFor(t, "the export's and the request's spans", 10*time.Second, func() bool {
		got := spans.GetSpans()
		for i, s := range got {
			switch s.Name {
			case "export":
				export = &got[i]
			case "GET /tests":
				request = &got[i]
			}
		}
		return export != nil && request != nil
	})
	if export.Status.Code != codes.Error {
		t.Errorf("cut export's span status %v, want Error", export.Status)
	}
	if got := spantest.Attr(*export, "testsapi.export.rows"); got != "5000" {
		t.Errorf("cut export's span rows %q, want 5000", got)
	}
	if export.Parent.SpanID() != request.SpanContext.SpanID() {
		t.Errorf("export span is not under the request span")
	}
}

// TestTracingExportHead: HEAD of an export answers the export's status
// and headers, and reads no row past the first from the database: its
// export span counts none sent.
func TestTracingExportHead(t *testing.T) {
	e := mustTracedEnv(t)
	mustCreate(t, e.h, "h1", "h2", "h3")
	header, tid, _ := traceparent(t, true)
	// openapi.yaml lists only GET, so this bypasses the spec check (as
	// TestHead does).
	req := httptest.NewRequest("HEAD", "/tests", nil)
	req.Header.Set("Accept", "application/x-ndjson")
	req.Header.Set("traceparent", header)
	rec := httptest.NewRecorder()
	e.h.ServeHTTP(rec, req)
	if ct := rec.Header().Get("Content-Type"); rec.Code != http.StatusOK || !strings.HasPrefix(ct, "application/x-ndjson") {
		t.Fatalf("HEAD export: %d %q", rec.Code, ct)
	}
	var export *tracetest.SpanStub
	for _, s := range e.ofTrace(tid) {
		if s.Name == "export" {
			export = &s
		}
	}
	if export == nil {
		t.Fatal("no export span")
	}
	if got := spantest.Attr(*export, "testsapi.export.rows"); got != "0" {
		t.Errorf("export span rows %q, want 0: HEAD ran the export", got)
	}
}
