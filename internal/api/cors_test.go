package api_test

import (
	"encoding/json"
	"html"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/ybrest/testsapi/internal/api"
)

// corsPage is a page that calls the API at API from another origin, as a
// browser application would, and writes what it got into <pre id="out">
// as JSON: a GET of a page, a POST (preflighted: JSON, a token and an
// Idempotency-Key), and a PATCH with If-Match (preflighted: the method).
const corsPage = `<!doctype html>
<html><body><pre id="out">running</pre>
<script>
const api = "API";
const out = {};
async function call(what, path, init) {
  try {
    const r = await fetch(api + path, init);
    out[what] = {status: r.status, headers: {}, body: await r.text()};
    for (const h of ["Location", "ETag", "Link", "X-Request-Id", "Retry-After"]) {
      out[what].headers[h] = r.headers.get(h);
    }
  } catch (e) {
    out[what] = {refused: e.name};
  }
  return out[what];
}
async function run() {
  await call("get", "/tests?limit=1");
  const post = await call("post", "/tests", {method: "POST", body: JSON.stringify({name: "NAME"}),
    headers: {"Content-Type": "application/json", "Authorization": "Bearer tok", "Idempotency-Key": "k-NAME"}});
  if (post.status === 201) {
    const row = await call("read", post.headers.Location);
    await call("patch", post.headers.Location, {method: "PATCH", body: JSON.stringify({name: "NAME renamed"}),
      headers: {"Content-Type": "application/merge-patch+json", "Authorization": "Bearer tok", "If-Match": row.headers.ETag}});
  }
  document.getElementById("out").textContent = JSON.stringify(out);
}
run();
</script></body></html>`

// corsResult is one call of corsPage.
type corsResult struct {
	Refused string            `json:"refused"`
	Status  int               `json:"status"`
	Headers map[string]string `json:"headers"`
	Body    string            `json:"body"`
}

// servePage serves corsPage, calling apiURL and creating name, at a new
// origin.
func servePage(t *testing.T, apiURL, name string) *httptest.Server {
	t.Helper()
	page := strings.NewReplacer("API", apiURL, "NAME", name).Replace(corsPage)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		_, _ = w.Write([]byte(page))
	}))
	t.Cleanup(srv.Close)
	return srv
}

// runPage loads url in headless Chromium and returns what its calls got.
func runPage(t *testing.T, url string) map[string]corsResult {
	t.Helper()
	dom, log := dumpDOM(t, url)
	start := strings.Index(dom, `<pre id="out">`)
	end := strings.Index(dom, `</pre>`)
	if start < 0 || end < start {
		t.Fatalf("no output in the DOM: %.1000s\n%s", dom, lastLines(log, 20))
	}
	text := html.UnescapeString(dom[start+len(`<pre id="out">`) : end])
	var got map[string]corsResult
	if err := json.Unmarshal([]byte(text), &got); err != nil {
		t.Fatalf("page output %q: %v\n%s", text, err, lastLines(log, 20))
	}
	return got
}

// TestCORSInChromium has pages of two other origins call the API from
// headless Chromium: the allowed one reads every answer and the headers it
// needs (the POST and the PATCH after a preflight), the other is refused,
// and its POST never reaches the API.
func TestCORSInChromium(t *testing.T) {
	t.Parallel()
	e := mustEnv(t)
	mustCreate(t, e.h, "first")

	var mu sync.Mutex
	var requests []string // "METHOD path status"
	apiSrv := httptest.NewUnstartedServer(nil)
	allowed := servePage(t, "http://"+apiSrv.Listener.Addr().String(), "from-allowed")
	refused := servePage(t, "http://"+apiSrv.Listener.Addr().String(), "from-refused")
	h := api.NewHandler(slog.New(slog.DiscardHandler), e.st, testLimits,
		api.CORS([]string{allowed.URL, "https://other.example"}), api.RequireToken("tok"))
	apiSrv.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		h.ServeHTTP(rec, r)
		mu.Lock()
		defer mu.Unlock()
		requests = append(requests, r.Method+" "+r.URL.Path+" "+http.StatusText(rec.status))
	})
	apiSrv.Start()
	defer apiSrv.Close()

	t.Run("Allowed", func(t *testing.T) {
		got := runPage(t, allowed.URL+"/")
		get, post, patch := got["get"], got["post"], got["patch"]
		if get.Status != http.StatusOK || !strings.Contains(get.Body, `"name":"first"`) ||
			get.Headers["Link"] == "" || get.Headers["ETag"] == "" || get.Headers["X-Request-Id"] == "" {
			t.Errorf("GET: %+v", get)
		}
		if post.Status != http.StatusCreated || !strings.HasPrefix(post.Headers["Location"], "/tests/") {
			t.Errorf("POST: %+v", post)
		}
		if patch.Status != http.StatusOK || !strings.Contains(patch.Body, `"name":"from-allowed renamed"`) || patch.Headers["ETag"] == "" {
			t.Errorf("PATCH: %+v", patch)
		}
		if names := tableNames(t, e.pool); !slices.Equal(names, []string{"first", "from-allowed renamed"}) {
			t.Errorf("table %q", names)
		}
		mu.Lock()
		defer mu.Unlock()
		for _, want := range []string{"OPTIONS /tests No Content", "POST /tests Created", "OPTIONS " + post.Headers["Location"] + " No Content"} {
			if !slices.Contains(requests, want) {
				t.Errorf("no %q among the API's requests %q", want, requests)
			}
		}
	})
	t.Run("Refused", func(t *testing.T) {
		mu.Lock()
		before := len(requests)
		mu.Unlock()
		got := runPage(t, refused.URL+"/")
		if got["get"].Refused != "TypeError" || got["post"].Refused != "TypeError" {
			t.Errorf("calls from an origin not allowed were not refused: %+v", got)
		}
		if names := tableNames(t, e.pool); slices.Contains(names, "from-refused") {
			t.Errorf("the refused page's POST was stored: %q", names)
		}
		mu.Lock()
		defer mu.Unlock()
		for _, r := range requests[before:] {
			if strings.HasPrefix(r, "POST ") {
				t.Errorf("the refused page's POST reached the API: %q", requests[before:])
			}
		}
	})
}

// TestCORSHeaders checks the headers themselves: a preflight per the Fetch
// standard, an actual request from an allowed origin, one from another
// origin, and none at all when CORS is off (the default).
func TestCORSHeaders(t *testing.T) {
	t.Parallel()
	e := mustEnv(t)
	on := api.NewHandler(slog.New(slog.DiscardHandler), e.st, testLimits, api.CORS([]string{"https://app.example"}))

	res := do(t, on, "OPTIONS", "/tests/1", "", "Origin", "https://app.example",
		"Access-Control-Request-Method", "PATCH", "Access-Control-Request-Headers", "content-type,if-match")
	want := map[string]string{
		"Access-Control-Allow-Origin":  "https://app.example",
		"Access-Control-Allow-Methods": "PATCH",
		"Access-Control-Allow-Headers": "content-type,if-match",
		"Access-Control-Max-Age":       "600",
		"Allow":                        "GET, HEAD, PATCH, DELETE",
	}
	if res.status != http.StatusNoContent {
		t.Fatalf("preflight: %d %s", res.status, res.body)
	}
	for k, v := range want {
		if got := res.header.Get(k); got != v {
			t.Errorf("preflight %s: %q, want %q", k, got, v)
		}
	}
	// A header the API does not take fails the preflight: no allow headers.
	res = do(t, on, "OPTIONS", "/tests", "", "Origin", "https://app.example",
		"Access-Control-Request-Method", "POST", "Access-Control-Request-Headers", "x-unknown")
	if res.header.Get("Access-Control-Allow-Origin") != "" {
		t.Errorf("preflight with an unknown header allowed: %v", res.header)
	}

	res = do(t, on, "GET", "/tests", "", "Origin", "https://app.example")
	if res.header.Get("Access-Control-Allow-Origin") != "https://app.example" ||
		!strings.Contains(res.header.Get("Access-Control-Expose-Headers"), "Etag") ||
		!slices.Equal(res.header.Values("Vary"), []string{"Origin", "Accept", "Prefer"}) {
		t.Errorf("GET from the allowed origin: %v", res.header)
	}
	res = do(t, on, "GET", "/tests", "", "Origin", "https://evil.example")
	if res.status != http.StatusOK || res.header.Get("Access-Control-Allow-Origin") != "" {
		t.Errorf("GET from another origin: %d %v", res.status, res.header)
	}

	res = do(t, e.h, "GET", "/tests", "", "Origin", "https://app.example")
	for k := range res.header {
		if strings.HasPrefix(k, "Access-Control-") {
			t.Errorf("CORS off, but %s: %q", k, res.header.Get(k))
		}
	}
	if res := do(t, e.h, "OPTIONS", "/tests", "", "Origin", "https://app.example", "Access-Control-Request-Method", "POST"); res.status != http.StatusMethodNotAllowed {
		t.Errorf("CORS off: a preflight got %d, want 405 as before", res.status)
	}
}
