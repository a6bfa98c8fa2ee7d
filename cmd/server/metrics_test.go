package main_test

import (
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/ybrest/testsapi/internal/dbtest"
)

// TestMetricsOnHTTPAddr: without METRICS_ADDR the API's own address serves
// /metrics, and the requests show up there by route pattern.
func TestMetricsOnHTTPAddr(t *testing.T) {
	t.Parallel()
	p := startReady(t, dbtest.NewSchema(t))
	bob := mustCreate(t, p, "Bob")
	p.mustDo(t, http.MethodGet, "/tests/"+strconv.Itoa(int(bob.ID)), "")
	p.mustDo(t, http.MethodGet, "/tests", "")

	r := p.mustDo(t, http.MethodGet, "/metrics", "")
	if r.status != http.StatusOK {
		t.Fatalf("GET /metrics: %d %s", r.status, r.body)
	}
	for _, want := range []string{
		`testsapi_http_requests_total{method="GET",route="/tests/{id}",status="200"} 1`,
		`testsapi_http_requests_total{method="POST",route="/tests",status="201"} 1`,
		`testsapi_db_pool_max_conns 16`,
		"testsapi_create_batch_size_bucket{le=\"1\"} 1\n", // Bob's create, a batch of one
		"testsapi_page_read_shared_count 1\n",             // the page below, alone on its query
		`go_goroutines `,
		`process_resident_memory_bytes `,
	} {
		if !strings.Contains(string(r.body), want) {
			t.Errorf("GET /metrics lacks %q:\n%s", want, r.body)
		}
	}
}

// TestMetricsAddr: with METRICS_ADDR the metrics are served there, and only
// there; that address serves nothing else, and the API's requests are
// counted all the same.
func TestMetricsAddr(t *testing.T) {
	t.Parallel()
	p := start(t, "DATABASE_URL="+dbtest.NewSchema(t), "METRICS_ADDR=127.0.0.1:0")
	p.waitListening(t)
	p.waitReady(t, startWithin)
	e := p.waitLog(t, "metrics listening", 1, startWithin)[0]
	addr, _ := e["addr"].(string)
	if addr == "" || "http://"+addr == p.url {
		t.Fatalf(`"metrics listening" with addr %q, API on %s: want an address of its own`, addr, p.url)
	}
	metricsURL := "http://" + addr

	bob := mustCreate(t, p, "Bob")
	p.mustDo(t, http.MethodGet, "/tests/"+strconv.Itoa(int(bob.ID)), "")
	if r := p.mustDo(t, http.MethodGet, "/metrics", ""); r.status != http.StatusNotFound {
		t.Errorf("GET /metrics on HTTP_ADDR: %d, want 404 when METRICS_ADDR is set", r.status)
	}

	get := func(path string) (int, string) {
		t.Helper()
		res, err := p.client.Get(metricsURL + path)
		if err != nil {
			t.Fatalf("GET %s%s: %v", metricsURL, path, err)
		}
		defer res.Body.Close()
		b, err := io.ReadAll(res.Body)
		if err != nil {
			t.Fatalf("GET %s%s: %v", metricsURL, path, err)
		}
		return res.StatusCode, string(b)
	}
	status, body := get("/metrics")
	if status != http.StatusOK {
		t.Fatalf("GET /metrics on METRICS_ADDR: %d %s", status, body)
	}
	for _, want := range []string{
		`testsapi_http_requests_total{method="GET",route="/tests/{id}",status="200"} 1`,
		`testsapi_http_requests_total{method="GET",route="unmatched",status="404"} 1`, // the /metrics above
		`testsapi_db_pool_total_conns `,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("GET /metrics on METRICS_ADDR lacks %q:\n%s", want, body)
		}
	}
	for _, path := range []string{"/tests", "/healthz", "/"} {
		if status, _ := get(path); status != http.StatusNotFound {
			t.Errorf("GET %s on METRICS_ADDR: %d, want 404: it serves only /metrics", path, status)
		}
	}
}

// TestMetricsAddrTaken: a METRICS_ADDR that cannot be listened on stops the
// process with a message naming the variable.
func TestMetricsAddrTaken(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	p := start(t, "DATABASE_URL="+dbtest.NewSchema(t), "METRICS_ADDR="+ln.Addr().String())
	if code := p.waitExit(t, exitWithin); code == 0 {
		t.Error("exit code 0, want non-zero")
	}
	if stderr := p.stderr.text(); !strings.Contains(stderr, "METRICS_ADDR") {
		t.Errorf("stderr does not name METRICS_ADDR:\n%s", stderr)
	}
}
