package api_test

import (
	"cmp"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/legacy"
	"github.com/jackc/pgx/v5/pgxpool"
	testsapi "github.com/ybrest/testsapi"
	"github.com/ybrest/testsapi/internal/api"
	"github.com/ybrest/testsapi/internal/dbtest"
	"github.com/ybrest/testsapi/internal/store"
)

func TestMain(m *testing.M) { dbtest.Main(m) }

// testLimits are small so that the limits themselves can be tested cheaply.
var testLimits = api.Limits{
	MaxBodyBytes:   64 << 10,
	MaxBatch:       5,
	RequestTimeout: 5 * time.Second,
	WriteTimeout:   5 * time.Second,
	MaxExports:     2,
	ImportMaxBytes: 1 << 20,
}

// env is one test's service: the real router over the real store on its
// own schema, and the pool to look at the table directly.
type env struct {
	h    http.Handler
	pool *pgxpool.Pool
	st   *store.Store
}

// mustEnv gives the test a service on a fresh schema, table created.
func mustEnv(t *testing.T) *env {
	t.Helper()
	return mustEnvURL(t, dbtest.NewSchema(t), testLimits)
}

func mustEnvURL(t testing.TB, url string, lim api.Limits, configure ...func(*pgxpool.Config)) *env {
	t.Helper()
	pool := mustPool(t, url, func(cfg *pgxpool.Config) {
		for _, c := range configure {
			c(cfg)
		}
	})
	st := store.New(pool)
	if _, _, err := st.Migrate(context.Background()); err != nil {
		t.Fatalf("migrate: %v", err)
	}
	return &env{h: api.NewHandler(slog.New(slog.DiscardHandler), st, lim), pool: pool, st: st}
}

// mustPool opens a pool on url with the connections cmd/server opens
// (store.NewPool), configure (when not nil) applied to pgx's settings
// first; it is closed in t.Cleanup.
func mustPool(t testing.TB, url string, configure func(*pgxpool.Config), opts ...store.PoolOption) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		t.Fatalf("pool: %v", err)
	}
	if configure != nil {
		configure(cfg)
	}
	pool, err := store.NewPool(context.Background(), cfg, opts...)
	if err != nil {
		t.Fatalf("pool: %v", err)
	}
	t.Cleanup(pool.Close)
	return pool.Pool
}

// response is what a request got, body read.
type response struct {
	status int
	header http.Header
	body   []byte // decoded, when it has a Content-Encoding
	wire   []byte // as sent
}

func (r response) json(t *testing.T, v any) {
	t.Helper()
	if err := json.Unmarshal(r.body, v); err != nil {
		t.Fatalf("decode %q: %v", r.body, err)
	}
}

// do sends one request through the handler and checks the response against
// openapi.yaml, so every test that calls it also proves the spec matches
// the server for the statuses it produces.
func do(t *testing.T, h http.Handler, method, target string, body string, header ...string) response {
	t.Helper()
	return serve(t, h, newRequest(method, target, body, header...))
}

// newRequest builds the request do sends: a body is JSON, and header holds
// name, value pairs (an empty value removes the header).
func newRequest(method, target string, body string, header ...string) *http.Request {
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req := httptest.NewRequest(method, target, rd)
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	for i := 0; i+1 < len(header); i += 2 {
		if header[i+1] == "" {
			req.Header.Del(header[i])
		} else {
			req.Header.Set(header[i], header[i+1])
		}
	}
	return req
}

// serve runs req through h and checks the response against openapi.yaml.
func serve(t *testing.T, h http.Handler, req *http.Request) response {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	res := response{status: rec.Code, header: rec.Header(), body: rec.Body.Bytes(), wire: rec.Body.Bytes()}
	if ce := res.header.Get("Content-Encoding"); ce != "" {
		res.body = decoded(t, ce, res.wire)
	}
	checkSpec(t, req, res)
	return res
}

var spec struct {
	once   sync.Once
	router routers.Router
	err    error
}

// specRouter returns openapi.yaml's operations, loaded once.
func specRouter(t *testing.T) routers.Router {
	t.Helper()
	spec.once.Do(func() {
		loader := openapi3.NewLoader()
		doc, err := loader.LoadFromData(testsapi.OpenAPI)
		if err != nil {
			spec.err = err
			return
		}
		if spec.err = doc.Validate(context.Background()); spec.err != nil {
			return
		}
		doc.Servers = nil // match whatever host httptest uses
		spec.router, spec.err = legacy.NewRouter(doc)
	})
	if spec.err != nil {
		t.Fatalf("openapi.yaml: %v", spec.err)
	}
	return spec.router
}

// checkSpec validates res against openapi.yaml. A request for a path or
// method the spec does not have must be answered 404 or 405 as a problem.
func checkSpec(t *testing.T, req *http.Request, res response) {
	t.Helper()
	route, params, err := specRouter(t).FindRoute(req)
	for _, v := range params {
		if v == "" && err == nil {
			// The legacy router matches /tests to /tests/{id} with an
			// empty id: DELETE /tests is not that operation.
			err = routers.ErrPathNotFound
		}
	}
	if err != nil {
		if res.status != http.StatusNotFound && res.status != http.StatusMethodNotAllowed {
			t.Errorf("%s %s: not in openapi.yaml (%v) but answered %d", req.Method, req.URL, err, res.status)
		}
		if ct := res.header.Get("Content-Type"); ct != "application/problem+json" {
			t.Errorf("%s %s: %d with Content-Type %q, want a problem", req.Method, req.URL, res.status, ct)
		}
		return
	}
	in := &openapi3filter.ResponseValidationInput{
		RequestValidationInput: &openapi3filter.RequestValidationInput{
			Request: req, PathParams: params, Route: route,
			Options: &openapi3filter.Options{SkipSettingDefaults: true},
		},
		Status:  res.status,
		Header:  res.header,
		Options: &openapi3filter.Options{IncludeResponseStatus: true, MultiError: true},
	}
	in.SetBodyBytes(res.body)
	if err := openapi3filter.ValidateResponse(context.Background(), in); err != nil {
		t.Errorf("%s %s: response %d does not match openapi.yaml: %v\nbody: %.300s", req.Method, req.URL, res.status, err, res.body)
	}
}

// problemOf decodes a problem response and checks its common shape.
func problemOf(t *testing.T, res response, status int) problem {
	t.Helper()
	if res.status != status {
		t.Fatalf("status %d, want %d; body %s", res.status, status, res.body)
	}
	if ct := res.header.Get("Content-Type"); ct != "application/problem+json" {
		t.Fatalf("Content-Type %q, want application/problem+json", ct)
	}
	var p problem
	res.json(t, &p)
	if p.Status != status || p.Type == "" || p.Title == "" || p.Detail == "" {
		t.Fatalf("incomplete problem: %+v", p)
	}
	return p
}

type problem struct {
	Type   string `json:"type"`
	Title  string `json:"title"`
	Status int    `json:"status"`
	Detail string `json:"detail"`
	Errors []struct {
		Pointer string `json:"pointer"`
		Detail  string `json:"detail"`
	} `json:"errors"`
}

type test struct {
	ID   int32  `json:"id"`
	Name string `json:"name"`
}

// mustCreate creates rows through the API, MaxBatch names a request, and
// returns them in id order, the order GET /tests lists them. That is input
// order on PostgreSQL; on YugabyteDB only one request's rows are sure to
// be, as each connection caches sequence values of its own.
func mustCreate(t *testing.T, h http.Handler, names ...string) []test {
	t.Helper()
	items := make([]map[string]string, len(names))
	for i, n := range names {
		items[i] = map[string]string{"name": n}
	}
	var out []test
	for len(items) > 0 {
		chunk := items[:min(len(items), testLimits.MaxBatch)]
		items = items[len(chunk):]
		b, _ := json.Marshal(chunk)
		res := do(t, h, "POST", "/tests", string(b))
		if res.status != http.StatusCreated {
			t.Fatalf("create: %d %s", res.status, res.body)
		}
		var got []test
		res.json(t, &got)
		out = append(out, got...)
	}
	slices.SortFunc(out, func(a, b test) int { return cmp.Compare(a.ID, b.ID) })
	return out
}

// tableNames returns every name in the table, in id order, read directly.
func tableNames(t *testing.T, pool *pgxpool.Pool) []string {
	t.Helper()
	rows, err := pool.Query(context.Background(), "SELECT name FROM test ORDER BY id")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			t.Fatal(err)
		}
		names = append(names, n)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return names
}

// bigBody lets a request body be large enough for the deep-nesting case.
var bigBody = api.Limits{
	MaxBodyBytes:   1 << 20,
	MaxBatch:       testLimits.MaxBatch,
	RequestTimeout: testLimits.RequestTimeout,
	WriteTimeout:   testLimits.WriteTimeout,
	MaxExports:     testLimits.MaxExports,
}

// doReader posts body with no Content-Length, as a chunked upload would.
func doReader(t *testing.T, h http.Handler, body io.Reader) response {
	t.Helper()
	req := httptest.NewRequest("POST", "/tests", io.NopCloser(body))
	req.ContentLength = -1
	req.Header.Set("Content-Type", "application/json")
	return serve(t, h, req)
}
