package main_test

import (
	"bytes"
	"encoding/hex"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/ybrest/testsapi/internal/dbtest"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"
)

// otlpReceiver is an OTLP/HTTP trace receiver, as a collector runs one:
// it takes POST /v1/traces in protobuf and keeps what it was sent.
type otlpReceiver struct {
	url string

	mu     sync.Mutex
	bodies [][]byte // as they came over the wire
	spans  []receivedSpan
}

// receivedSpan is one span received, with its resource's service.name.
type receivedSpan struct {
	service string
	*tracepb.Span
}

func startOTLPReceiver(t *testing.T) *otlpReceiver {
	t.Helper()
	o := &otlpReceiver{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/v1/traces" || r.Header.Get("Content-Type") != "application/x-protobuf" {
			t.Errorf("OTLP receiver: %s %s (%s), want POST /v1/traces in protobuf", r.Method, r.URL.Path, r.Header.Get("Content-Type"))
			http.Error(w, "not an OTLP trace export", http.StatusBadRequest)
			return
		}
		body, err := io.ReadAll(r.Body)
		var req coltracepb.ExportTraceServiceRequest
		if err == nil {
			err = proto.Unmarshal(body, &req)
		}
		if err != nil {
			t.Errorf("OTLP receiver: %v", err)
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		o.mu.Lock()
		o.bodies = append(o.bodies, body)
		for _, rs := range req.ResourceSpans {
			var service string
			for _, a := range rs.GetResource().GetAttributes() {
				if a.Key == "service.name" {
					service = a.GetValue().GetStringValue()
				}
			}
			for _, ss := range rs.ScopeSpans {
				for _, s := range ss.Spans {
					o.spans = append(o.spans, receivedSpan{service, s})
				}
			}
		}
		o.mu.Unlock()
		out, _ := proto.Marshal(&coltracepb.ExportTraceServiceResponse{})
		w.Header().Set("Content-Type", "application/x-protobuf")
		_, _ = w.Write(out)
	}))
	t.Cleanup(srv.Close)
	o.url = srv.URL
	return o
}

// ofTrace returns the spans received so far of trace id (16 bytes).
func (o *otlpReceiver) ofTrace(id []byte) []receivedSpan {
	o.mu.Lock()
	defer o.mu.Unlock()
	var out []receivedSpan
	for _, s := range o.spans {
		if bytes.Equal(s.TraceId, id) {
			out = append(out, s)
		}
	}
	return out
}

// received returns every export body so far, and the number of spans.
func (o *otlpReceiver) received() ([][]byte, int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([][]byte(nil), o.bodies...), len(o.spans)
}

// TestTracingOTLP runs the binary with tracing on, exporting OTLP over
// HTTP to a receiver of the test's: a request sent with a known
// traceparent arrives as a span of that trace, child of that parent,
// named by its route, with its statement's span under it; the access log
// line carries the same trace id; and nothing secret was sent.
func TestTracingOTLP(t *testing.T) {
	t.Parallel()
	recv := startOTLPReceiver(t)
	url := dbtest.NewSchema(t)
	const token = "otlp-test-token"
	p := startReady(t, url,
		"OTEL_TRACES_EXPORTER=otlp",
		"OTEL_EXPORTER_OTLP_ENDPOINT="+recv.url,
		"OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf",
		"OTEL_SERVICE_NAME=otlp-test",
		"OTEL_BSP_SCHEDULE_DELAY=100", // ms: export at once
		"API_TOKEN="+token)
	const name = "otlp-secret-name"
	r := p.mustDo(t, http.MethodPost, "/tests", nameBody(name), "Authorization", "Bearer "+token)
	if r.status != http.StatusCreated {
		t.Fatalf("POST /tests: %d %s", r.status, r.body)
	}
	row := decodeTest(t, r)

	const traceID, parentID = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	r = p.mustDo(t, http.MethodGet, "/tests/"+strconv.Itoa(int(row.ID)), "",
		"traceparent", "00-"+traceID+"-"+parentID+"-01")
	if r.status != http.StatusOK {
		t.Fatalf("GET: %d %s", r.status, r.body)
	}
	tid, _ := hex.DecodeString(traceID)
	pid, _ := hex.DecodeString(parentID)
	var spans []receivedSpan
	dbtest.WaitFor(t, "the request's spans at the OTLP receiver", 20*time.Second, func() bool {
		spans = recv.ofTrace(tid)
		return len(spans) >= 2 // the request's and its statement's
	})
	var server *receivedSpan
	for i, s := range spans {
		if s.Kind == tracepb.Span_SPAN_KIND_SERVER {
			server = &spans[i]
		}
	}
	if server == nil {
		t.Fatalf("no server span in trace %s", traceID)
	}
	if server.Name != "GET /tests/{id}" || !bytes.Equal(server.ParentSpanId, pid) || server.service != "otlp-test" {
		t.Errorf("server span %q, parent %x, service %q; want \"GET /tests/{id}\", %s, otlp-test",
			server.Name, server.ParentSpanId, server.service, parentID)
	}
	var statement bool
	for _, s := range spans {
		statement = statement || s.Kind == tracepb.Span_SPAN_KIND_CLIENT && bytes.Equal(s.ParentSpanId, server.SpanId)
	}
	if !statement {
		t.Errorf("no statement span under the request's span")
	}

	line := p.waitLog(t, "request", 3, 10*time.Second) // /readyz's, POST's, GET's at least
	var joined bool
	for _, e := range line {
		joined = joined || e["trace_id"] == traceID && e["route"] == "/tests/{id}"
	}
	if !joined {
		t.Errorf("no access log line of GET /tests/{id} with trace_id %s", traceID)
	}

	secrets := []string{name, token}
	if cfg, err := pgx.ParseConfig(url); err == nil && cfg.Password != "" {
		secrets = append(secrets, cfg.Password)
	}
	bodies, _ := recv.received()
	for _, b := range bodies {
		for _, s := range secrets {
			if bytes.Contains(b, []byte(s)) {
				t.Errorf("an OTLP export holds %q", s)
			}
		}
	}
}

// TestTracingOff: without OTEL_TRACES_EXPORTER nothing is exported, even
// with an OTLP endpoint set, and the access log has no trace id.
func TestTracingOff(t *testing.T) {
	t.Parallel()
	recv := startOTLPReceiver(t)
	p := startReady(t, dbtest.NewSchema(t),
		"OTEL_EXPORTER_OTLP_ENDPOINT="+recv.url, "OTEL_BSP_SCHEDULE_DELAY=100")
	r := p.mustDo(t, http.MethodGet, "/tests", "", "traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
	if r.status != http.StatusOK {
		t.Fatalf("GET /tests: %d %s", r.status, r.body)
	}
	for _, e := range p.waitLog(t, "request", 2, 10*time.Second) {
		if _, ok := e["trace_id"]; ok {
			t.Errorf("access log line with trace_id while tracing is off: %v", e)
		}
	}
	// Any span would be exported by now (100 ms), or at the latest as
	// the process shuts down.
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := p.waitExit(t, exitWithin); code != 0 {
		t.Fatalf("exit code %d after SIGTERM", code)
	}
	if _, n := recv.received(); n != 0 {
		t.Errorf("%d spans exported while tracing is off", n)
	}
}

// TestTracingConfigErrors: a value the OpenTelemetry SDK does not take is
// an error at start-up that names the variable, as our own variables' are.
func TestTracingConfigErrors(t *testing.T) {
	t.Parallel()
	for _, c := range []struct{ env, want string }{
		{"OTEL_TRACES_EXPORTER=jaeger-thrift", "OTEL_TRACES_EXPORTER"},
		{"OTEL_EXPORTER_OTLP_PROTOCOL=carrier-pigeon", "OTEL_EXPORTER_OTLP_"},
		{"OTEL_TRACES_SAMPLER=sometimes", "OTEL_TRACES_SAMPLER"},
		{"OTEL_RESOURCE_ATTRIBUTES=no-value", "OTEL_RESOURCE_ATTRIBUTES"},
		{"OTEL_PROPAGATORS=carrier-pigeon", "OTEL_PROPAGATORS"},
	} {
		t.Run(strings.SplitN(c.env, "=", 2)[0], func(t *testing.T) {
			t.Parallel()
			p := start(t, "OTEL_TRACES_EXPORTER=otlp", c.env)
			if code := p.waitExit(t, exitWithin); code != 1 {
				t.Errorf("exit code %d, want 1", code)
			}
			if got := p.stderr.text(); !strings.Contains(got, c.want) {
				t.Errorf("stderr %q does not name %s", got, c.want)
			}
		})
	}
}

// TestTracingCollectorDown: a collector that refuses connections costs the
// requests nothing: they are answered as usual, the failed exports are
// logged as warnings, and shutdown gives up on the buffered spans within
// its flush timeout instead of hanging.
func TestTracingCollectorDown(t *testing.T) {
	t.Parallel()
	p := startReady(t, dbtest.NewSchema(t),
		"OTEL_TRACES_EXPORTER=otlp",
		"OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:"+strconv.Itoa(closedPort(t)),
		"OTEL_BSP_SCHEDULE_DELAY=100")
	for i := range 20 {
		r := p.mustDo(t, http.MethodPost, "/tests", nameBody("collector-down-"+strconv.Itoa(i)))
		if r.status != http.StatusCreated {
			t.Fatalf("POST /tests: %d %s", r.status, r.body)
		}
	}
	sent := time.Now()
	warning := p.waitLog(t, "tracing", 1, 30*time.Second)[0] // the exporter's error
	if warning["level"] != "WARN" {
		t.Errorf("exporter error logged at %v, want WARN: %v", warning["level"], warning)
	}
	t.Logf("%s after the requests: %v", time.Since(sent).Round(time.Millisecond), warning)
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if code := p.waitExit(t, exitWithin); code != 0 {
		t.Fatalf("exit code %d after SIGTERM", code)
	}
	t.Logf("exited %s after SIGTERM", time.Since(start).Round(time.Millisecond))
}
