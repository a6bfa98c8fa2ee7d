package api_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	testsapi "github.com/ybrest/testsapi"
)

func TestDocsRoutes(t *testing.T) {
	t.Parallel()
	e := mustEnv(t)

	t.Run("RootRedirects", func(t *testing.T) {
		res := do(t, e.h, "GET", "/", "")
		if res.status != http.StatusFound || res.header.Get("Location") != "/docs" {
			t.Fatalf("GET /: %d Location %q, want 302 to /docs", res.status, res.header.Get("Location"))
		}
	})
	t.Run("Page", func(t *testing.T) {
		res := do(t, e.h, "GET", "/docs", "")
		if res.status != http.StatusOK {
			t.Fatalf("GET /docs: %d", res.status)
		}
		if ct := res.header.Get("Content-Type"); ct != "text/html; charset=utf-8" {
			t.Errorf("Content-Type %q", ct)
		}
		csp := res.header.Get("Content-Security-Policy")
		for _, want := range []string{"default-src 'none'", "script-src 'self'", "connect-src 'self'"} {
			if !strings.Contains(csp, want) {
				t.Errorf("Content-Security-Policy %q lacks %q", csp, want)
			}
		}
		if !strings.Contains(string(res.body), `<div id="swagger-ui">`) {
			t.Errorf("page without the viewer's element:\n%s", res.body)
		}
	})
	t.Run("Assets", func(t *testing.T) {
		for name, ct := range map[string]string{
			"swagger-ui-bundle.js": "text/javascript; charset=utf-8",
			"swagger-ui.css":       "text/css; charset=utf-8",
			"docs.js":              "text/javascript; charset=utf-8",
		} {
			res := do(t, e.h, "GET", "/docs/"+name, "")
			if res.status != http.StatusOK || res.header.Get("Content-Type") != ct || len(res.body) == 0 {
				t.Fatalf("GET /docs/%s: %d %q, %d bytes; want 200 %q", name, res.status, res.header.Get("Content-Type"), len(res.body), ct)
			}
			etag := res.header.Get("ETag")
			again := do(t, e.h, "GET", "/docs/"+name, "", "If-None-Match", etag)
			if again.status != http.StatusNotModified || len(again.body) != 0 {
				t.Errorf("GET /docs/%s If-None-Match %s: %d with %d bytes, want 304 and no body", name, etag, again.status, len(again.body))
			}
		}
	})
	t.Run("UnknownAsset", func(t *testing.T) {
		for _, p := range []string{"/docs/nope.js", "/docs/swagger-ui", "/docs/index.html", "/docs/..%2fdocs.go"} {
			problemOf(t, do(t, e.h, "GET", p, ""), http.StatusNotFound)
		}
	})
}

// TestDocsRenderInChromium loads /docs in headless Chromium, the way a
// person would, and checks that Swagger UI rendered every operation of
// openapi.yaml under the page's Content-Security-Policy, that "Try it out"
// points at this server, and that the page asked only this server for
// files, all of which it had.
func TestDocsRenderInChromium(t *testing.T) {
	t.Parallel()
	e := mustEnv(t)
	var mu sync.Mutex
	var requests []string // "status path", in arrival order
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		e.h.ServeHTTP(rec, r)
		mu.Lock()
		defer mu.Unlock()
		requests = append(requests, http.StatusText(rec.status)+" "+r.URL.Path)
	}))
	defer srv.Close()

	dom, log := dumpDOM(t, srv.URL+"/docs")

	doc, err := openapi3.NewLoader().LoadFromData(testsapi.OpenAPI)
	if err != nil {
		t.Fatal(err)
	}
	var missing []string
	for path, item := range doc.Paths.Map() {
		for method, op := range item.Operations() {
			// Swagger UI gives each operation a link "#/<first tag>/<operationId>".
			if !strings.Contains(dom, `href="#/`+op.Tags[0]+`/`+op.OperationID+`"`) {
				missing = append(missing, method+" "+path)
			}
		}
	}
	if len(missing) > 0 || len(dom) < 1000 {
		t.Errorf("operations not rendered: %q\nDOM (%d bytes): %.2000s\nChromium's log, last part:\n%s",
			missing, len(dom), dom, lastLines(log, 30))
	}
	if want := `<option value="` + srv.URL + `">`; !strings.Contains(dom, want) {
		t.Errorf("servers list has no %s: docs.js did not point Try it out at this server", want)
	}

	mu.Lock()
	defer mu.Unlock()
	for _, want := range []string{"OK /docs", "OK /docs/swagger-ui.css", "OK /docs/swagger-ui-bundle.js", "OK /docs/docs.js", "OK /openapi.yaml"} {
		if !slices.Contains(requests, want) {
			t.Errorf("the page did not load %q; requests: %q", want, requests)
		}
	}
	for _, r := range requests {
		if !strings.HasPrefix(r, "OK ") && r != "Not Found /favicon.ico" {
			t.Errorf("the page made a failing request: %s (all: %q)", r, requests)
		}
	}
}

// statusRecorder remembers the status a handler wrote.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (s *statusRecorder) WriteHeader(code int) {
	s.status = code
	s.ResponseWriter.WriteHeader(code)
}

// chromium returns the path of a Chromium binary: $CHROMIUM, or the first
// of the usual names on PATH. Without one the test fails: a skipped browser
// test would look like a passing one.
func chromium(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("CHROMIUM"); p != "" {
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Fatal("no Chromium found (set CHROMIUM, or install it: apt-get install chromium)")
	return ""
}

// dumpDOM loads url in headless Chromium, lets the page run until it is idle
// (virtual time: network waits do not count against the budget), and
// returns the DOM then and Chromium's log. The profile is a fresh temporary
// directory, and nothing reaches out to Google's services.
func dumpDOM(t *testing.T, url string) (dom, log string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute) // generous: a busy 2-core machine
	defer cancel()
	cmd := exec.CommandContext(ctx, chromium(t),
		"--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--user-data-dir="+t.TempDir(),
		"--virtual-time-budget=30000",
		"--dump-dom", url)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s: %v\n%s", cmd, err, lastLines(stderr.String(), 30))
	}
	return string(out), stderr.String()
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
