package api_test

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"testing"

	"github.com/getkin/kin-openapi/openapi3filter"
	testsapi "github.com/ybrest/testsapi"
	"github.com/ybrest/testsapi/internal/apiclient"
	"github.com/ybrest/testsapi/internal/dbtest"
)

// mustClient serves h on a real listener and returns a client generated
// from openapi.yaml for it. Every request the client sends is checked
// against openapi.yaml, and so is every response the server gives, so the
// document, the server and the generated client cannot drift apart.
func mustClient(t *testing.T, h http.Handler) *apiclient.ClientWithResponses {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		checkRequest(t, r)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, r)
		checkSpec(t, r, response{status: rec.Code, header: rec.Header(), body: rec.Body.Bytes()})
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.WriteHeader(rec.Code)
		_, _ = w.Write(rec.Body.Bytes())
	}))
	t.Cleanup(srv.Close)
	c, err := apiclient.NewClientWithResponses(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// invalidOnPurpose marks a request a test makes invalid on purpose, so
// that checkRequest lets it through to the server.
const invalidOnPurpose = "X-Test-Invalid-On-Purpose"

// checkRequest validates a request against openapi.yaml, leaving its body
// readable for the handler.
func checkRequest(t *testing.T, r *http.Request) {
	t.Helper()
	if r.Header.Get(invalidOnPurpose) != "" {
		return
	}
	route, params, err := specRouter(t).FindRoute(r)
	if err != nil {
		t.Errorf("the client sent %s %s, which openapi.yaml does not have: %v", r.Method, r.URL, err)
		return
	}
	body, _ := io.ReadAll(r.Body)
	r.Body = io.NopCloser(bytes.NewReader(body))
	in := &openapi3filter.RequestValidationInput{
		Request: r.Clone(r.Context()), PathParams: params, Route: route,
		// The server checks the bearer token (auth_test.go); here any credentials pass.
		Options: &openapi3filter.Options{MultiError: true, AuthenticationFunc: openapi3filter.NoopAuthenticationFunc},
	}
	in.Request.Body = io.NopCloser(bytes.NewReader(body))
	if err := openapi3filter.ValidateRequest(context.Background(), in); err != nil {
		t.Errorf("the client's %s %s does not match openapi.yaml: %v", r.Method, r.URL, err)
	}
}

// nextLink is the target of a Link header's rel="next", or "".
var nextLink = regexp.MustCompile(`<([^>]+)>;\s*rel="next"`)

// TestClientEndToEnd drives the real handler and store through the client
// generated from openapi.yaml, one step after another on one table: create
// one and many, a keyed create replayed, a conflict, a validation problem,
// get, pagination by the Link header, and the operations endpoints. A step
// that fails ends the test: the later ones count on its rows.
func TestClientEndToEnd(t *testing.T) {
	t.Parallel()
	e := mustMetricsEnv(t, dbtest.NewSchema(t))
	if _, _, err := e.st.Migrate(context.Background()); err != nil {
		t.Fatal(err)
	}
	c := mustClient(t, e.h)
	step := func(name string, f func(t *testing.T)) {
		t.Helper()
		if !t.Run(name, f) {
			t.FailNow()
		}
	}

	var one apiclient.NewTests
	if err := one.FromNewTest(apiclient.NewTest{Name: "Bob"}); err != nil {
		t.Fatal(err)
	}
	var bob, first apiclient.Test // Bob's row, and the keyed create's
	var rows []apiclient.Test     // the array's rows

	step("CreateOne", func(t *testing.T) {
		// 201, the row, and Location.
		created, err := c.CreateTestsWithResponse(t.Context(), nil, one)
		if err != nil || created.StatusCode() != http.StatusCreated {
			t.Fatalf("create Bob: %v %v %s", err, created.Status(), created.Body)
		}
		bob, err = created.JSON201.AsTest()
		if err != nil || bob.Name != "Bob" || bob.Id < 1 {
			t.Fatalf("create Bob: %+v %v", bob, err)
		}
		if loc := created.Headers201.Location; loc == nil || *loc != "/tests/"+strconv.Itoa(int(bob.Id)) {
			t.Errorf("Location %v, want /tests/%d", loc, bob.Id)
		}
	})

	step("CreateKeyedRetried", func(t *testing.T) {
		// The same key again: the first answer again, same id, one row.
		var keyed apiclient.NewTests
		if err := keyed.FromNewTest(apiclient.NewTest{Name: "Keyed"}); err != nil {
			t.Fatal(err)
		}
		key := apiclient.IdempotencyKey("e2e-key-1")
		for attempt := range 2 {
			res, err := c.CreateTestsWithResponse(t.Context(), &apiclient.CreateTestsParams{IdempotencyKey: &key}, keyed)
			if err != nil || res.JSON201 == nil {
				t.Fatalf("keyed create, attempt %d: %v %v %s", attempt, err, res.Status(), res.Body)
			}
			got, err := res.JSON201.AsTest()
			if err != nil {
				t.Fatal(err)
			}
			if attempt == 0 {
				first = got
			} else if got != first {
				t.Errorf("keyed create replayed %+v, want the first answer %+v", got, first)
			}
		}
	})

	step("CreateConflict", func(t *testing.T) {
		// The same name again: 409, decoded as a problem.
		conflict, err := c.CreateTestsWithResponse(t.Context(), nil, one)
		if err != nil || conflict.ApplicationproblemJSON409 == nil {
			t.Fatalf("create Bob twice: %v %v %s", err, conflict.Status(), conflict.Body)
		}
		if p := conflict.ApplicationproblemJSON409; p.Status != 409 || p.Title != "Conflict" || p.Detail == "" {
			t.Errorf("409 problem %+v", p)
		}
	})

	step("CreateMany", func(t *testing.T) {
		// An array: 201, rows in input order, ids ascending.
		var many apiclient.NewTests
		names := []string{"r1", "r2", "r3", "r4", "r5"}
		var list apiclient.NewTestList
		for _, n := range names {
			list = append(list, apiclient.NewTest{Name: n})
		}
		if err := many.FromNewTestList(list); err != nil {
			t.Fatal(err)
		}
		batch, err := c.CreateTestsWithResponse(t.Context(), nil, many)
		if err != nil || batch.JSON201 == nil {
			t.Fatalf("create batch: %v %v %s", err, batch.Status(), batch.Body)
		}
		rows, err = batch.JSON201.AsTestList()
		if err != nil || len(rows) != len(names) {
			t.Fatalf("create batch: %+v %v", rows, err)
		}
		for i, r := range rows {
			if r.Name != names[i] || (i > 0 && r.Id <= rows[i-1].Id) {
				t.Errorf("batch row %d: %+v, want %s with an id above the previous", i, r, names[i])
			}
		}
	})

	step("CreateInvalid", func(t *testing.T) {
		// A validation problem: 422 with a pointer to the field. An empty
		// name breaks the document's minLength: the server must say so,
		// and the request check must let it through.
		var bad apiclient.NewTests
		if err := bad.FromNewTest(apiclient.NewTest{Name: ""}); err != nil {
			t.Fatal(err)
		}
		invalid, err := c.CreateTestsWithResponse(t.Context(), nil, bad, func(_ context.Context, r *http.Request) error {
			r.Header.Set(invalidOnPurpose, "1")
			return nil
		})
		if err != nil || invalid.ApplicationproblemJSON422 == nil {
			t.Fatalf("create empty name: %v %v %s", err, invalid.Status(), invalid.Body)
		}
		if errs := invalid.ApplicationproblemJSON422.Errors; errs == nil || len(*errs) != 1 || (*errs)[0].Pointer != "#/name" {
			t.Errorf("422 errors %+v, want one at #/name", errs)
		}
	})

	step("Get", func(t *testing.T) {
		// 200 with the row; 404 problem for an id nobody has.
		got, err := c.GetTestWithResponse(t.Context(), apiclient.TestId(bob.Id), nil)
		if err != nil || got.JSON200 == nil || *got.JSON200 != bob {
			t.Fatalf("get %d: %v %v %s", bob.Id, err, got.Status(), got.Body)
		}
		missing, err := c.GetTestWithResponse(t.Context(), apiclient.TestId(rows[len(rows)-1].Id)+1000, nil)
		if err != nil || missing.ApplicationproblemJSON404 == nil || missing.ApplicationproblemJSON404.Status != 404 {
			t.Fatalf("get a missing id: %v %v %s", err, missing.Status(), missing.Body)
		}
	})

	step("ListByLinks", func(t *testing.T) {
		// Follow Link rel="next" until there is none.
		want := append([]apiclient.Test{bob, first}, rows...)
		var all []apiclient.Test
		limit := 2
		params := &apiclient.ListTestsParams{Limit: &limit}
		for pages := 1; ; pages++ {
			page, err := c.ListTestsWithResponse(t.Context(), params)
			if err != nil || page.JSON200 == nil {
				t.Fatalf("list page %d: %v %v %s", pages, err, page.Status(), page.Body)
			}
			all = append(all, *page.JSON200...)
			link := page.Headers200.Link
			if link == nil {
				break
			}
			if pages > len(want) {
				t.Fatalf("more than %d pages: the Link header never ends", pages)
			}
			m := nextLink.FindStringSubmatch(*link)
			if m == nil {
				t.Fatalf("Link %q has no rel=\"next\"", *link)
			}
			next, err := url.Parse(m[1])
			if err != nil {
				t.Fatal(err)
			}
			after, err1 := strconv.ParseInt(next.Query().Get("after"), 10, 64)
			lim, err2 := strconv.Atoi(next.Query().Get("limit"))
			if err1 != nil || err2 != nil || next.Path != "/tests" {
				t.Fatalf("next link %q: want /tests?after=N&limit=N", m[1])
			}
			params = &apiclient.ListTestsParams{After: &after, Limit: &lim}
		}
		if !slices.Equal(all, want) {
			t.Errorf("paged through %+v, want %+v", all, want)
		}
	})

	step("Operations", func(t *testing.T) {
		ctx := t.Context()
		if r, err := c.HealthzWithResponse(ctx); err != nil || r.JSON200 == nil || r.JSON200.Status != apiclient.Ok {
			t.Errorf("healthz: %v %v", err, r.Status())
		}
		if r, err := c.ReadyzWithResponse(ctx); err != nil || r.JSON200 == nil {
			t.Errorf("readyz: %v %v", err, r.Status())
		}
		if r, err := c.GetOpenAPIWithResponse(ctx); err != nil || !bytes.Equal(r.Body, testsapi.OpenAPI) {
			t.Errorf("openapi.yaml: %v, %d bytes, want the embedded document", err, len(r.Body))
		}
		if r, err := c.GetDocsWithResponse(ctx); err != nil || r.StatusCode() != 200 || r.Headers200.ContentSecurityPolicy == "" {
			t.Errorf("docs: %v %v", err, r.Status())
		}
		if r, err := c.GetMetricsWithResponse(ctx); err != nil || !bytes.Contains(r.Body, []byte(`route="/tests/{id}"`)) {
			t.Errorf("metrics: %v %v", err, r.Status())
		}
	})
}
