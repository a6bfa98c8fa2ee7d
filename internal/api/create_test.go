package api_test

import (
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/ybrest/testsapi/internal/dbtest"
)

func TestCreateOne(t *testing.T) {
	t.Parallel()
	e := mustEnv(t)
	res := do(t, e.h, "POST", "/tests", `{"name": "Bob"}`)
	if res.status != http.StatusCreated {
		t.Fatalf("status %d, want 201: %s", res.status, res.body)
	}
	var got test
	res.json(t, &got)
	if got.ID < 1 || got.Name != "Bob" {
		t.Fatalf("got %+v", got)
	}
	if loc := res.header.Get("Location"); loc != "/tests/"+strconv.Itoa(int(got.ID)) {
		t.Fatalf("Location %q for id %d", loc, got.ID)
	}
	// The Location resolves to the same row.
	var again test
	do(t, e.h, "GET", res.header.Get("Location"), "").json(t, &again)
	if again != got {
		t.Fatalf("GET Location = %+v, want %+v", again, got)
	}
}

func TestCreateMany(t *testing.T) {
	t.Parallel()
	e := mustEnv(t)
	res := do(t, e.h, "POST", "/tests", `[{"name": "John"}, {"name": "Ivy"}, {"name": "Bob"}]`)
	if res.status != http.StatusCreated {
		t.Fatalf("status %d, want 201: %s", res.status, res.body)
	}
	var got []test
	res.json(t, &got)
	if len(got) != 3 || got[0].Name != "John" || got[1].Name != "Ivy" || got[2].Name != "Bob" {
		t.Fatalf("got %+v, want John, Ivy, Bob in input order", got)
	}
	if !(got[0].ID < got[1].ID && got[1].ID < got[2].ID) {
		t.Fatalf("ids %d %d %d not ascending in input order", got[0].ID, got[1].ID, got[2].ID)
	}
	if l := res.header.Get("Location"); l != "" {
		t.Fatalf("array create sent Location %q", l)
	}
	if diff := cmp.Diff([]string{"John", "Ivy", "Bob"}, tableNames(t, e.pool)); diff != "" {
		t.Fatalf("table (-want +got):\n%s", diff)
	}
}

// TestCreateConflict checks that a taken name is a 409 and that nothing
// of the request is stored.
func TestCreateConflict(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		body string
	}{
		{"StoredName", `{"name": "Bob"}`},
		{"StoredNameInArray", `[{"name": "New1"}, {"name": "Bob"}, {"name": "New2"}]`},
		{"TwiceInArray", `[{"name": "New3"}, {"name": "New3"}]`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := mustEnv(t)
			mustCreate(t, e.h, "Bob")
			p := problemOf(t, do(t, e.h, "POST", "/tests", tc.body), http.StatusConflict)
			if strings.Contains(p.Detail, "23505") || strings.Contains(p.Detail, "duplicate key") {
				t.Fatalf("problem leaks the database error: %q", p.Detail)
			}
			if diff := cmp.Diff([]string{"Bob"}, tableNames(t, e.pool)); diff != "" {
				t.Fatalf("table changed (-want +got):\n%s", diff)
			}
		})
	}
}

// TestCreateBadRequest covers the bodies that are not JSON of the right
// shape: 400, and nothing stored.
func TestCreateBadRequest(t *testing.T) {
	t.Parallel()
	e := mustEnv(t)
	tests := []struct {
		name string
		body string
	}{
		{"MalformedJSON", `{"name": "Bob"`},
		{"Garbage", `not json`},
		{"Empty", ` `},
		{"TrailingData", `{"name": "Bob"} {"name": "Ann"}`},
		{"TrailingGarbage", `{"name": "Bob"}x`},
		{"UnknownField", `{"name": "Bob", "age": 3}`},
		{"OtherCaseField", `{"Name": "Bob"}`},
		{"DuplicateField", `{"name": "Bob", "name": "Ann"}`},
		{"DuplicateFieldEscaped", `[{"name": "Bob", "n\u0061me": "Ann"}]`},
		{"UnknownFieldInArray", `[{"name": "Bob"}, {"nam": "Ann"}]`},
		{"NameNumber", `{"name": 5}`},
		{"NameObject", `{"name": {"x": 1}}`},
		{"NameArray", `{"name": ["Bob"]}`},
		{"String", `"Bob"`},
		{"Number", `42`},
		{"Null", `null`},
		{"ArrayOfStrings", `["Bob"]`},
		{"ArrayOfNull", `[null]`},
		{"DeeplyNested", strings.Repeat("[", 100000) + strings.Repeat("]", 100000)},
		{"DeeplyNestedObject", strings.Repeat(`{"name":`, 100000) + `"x"` + strings.Repeat("}", 100000)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if strings.HasPrefix(tc.name, "DeeplyNested") {
				e := mustEnvURL(t, dbtest.NewSchema(t), bigBody)
				problemOf(t, do(t, e.h, "POST", "/tests", tc.body), http.StatusBadRequest)
				return
			}
			problemOf(t, do(t, e.h, "POST", "/tests", tc.body), http.StatusBadRequest)
		})
	}
	if names := tableNames(t, e.pool); len(names) != 0 {
		t.Fatalf("bad requests stored %q", names)
	}
}

// TestCreateInvalid covers well-formed bodies with invalid values: 422
// listing every problem with a pointer to it, and nothing stored.
func TestCreateInvalid(t *testing.T) {
	t.Parallel()
	e := mustEnv(t)
	tests := []struct {
		name     string
		body     string
		pointers []string
	}{
		{"MissingName", `{}`, []string{"#/name"}},
		{"NullName", `{"name": null}`, []string{"#/name"}},
		{"EmptyName", `{"name": ""}`, []string{"#/name"}},
		{"TooLong", `{"name": "` + strings.Repeat("a", 256) + `"}`, []string{"#/name"}},
		{"TooLongMultibyte", `{"name": "` + strings.Repeat("é", 256) + `"}`, []string{"#/name"}},
		{"NUL", `{"name": "a\u0000b"}`, []string{"#/name"}},
		{"InvalidUTF8", "{\"name\": \"a\xffb\"}", []string{"#/name"}},
		{"EncodedSurrogate", "{\"name\": \"a\xed\xa0\x80b\"}", []string{"#/name"}},
		{"LoneHighSurrogate", `{"name": "a\ud800b"}`, []string{"#/name"}},
		{"LoneLowSurrogate", `{"name": "a\udc00"}`, []string{"#/name"}},
		{"HighSurrogateAtEnd", `{"name": "a\ud800"}`, []string{"#/name"}},
		{"EmptyArray", `[]`, []string{"#"}},
		{"ArrayTooLong", `[{"name":"a"},{"name":"b"},{"name":"c"},{"name":"d"},{"name":"e"},{"name":"f"}]`, []string{"#"}},
		{"EveryProblemListed", `[{"name": ""}, {"name": "ok"}, {}, {"name": "a\u0000"}]`, []string{"#/0/name", "#/2/name", "#/3/name"}},
		{"TooLongAndNUL", `{"name": "` + strings.Repeat("a", 300) + `\u0000"}`, []string{"#/name", "#/name"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := problemOf(t, do(t, e.h, "POST", "/tests", tc.body), http.StatusUnprocessableEntity)
			var got []string
			for _, fe := range p.Errors {
				if fe.Detail == "" {
					t.Errorf("field error without detail: %+v", fe)
				}
				got = append(got, fe.Pointer)
			}
			if diff := cmp.Diff(tc.pointers, got); diff != "" {
				t.Fatalf("pointers (-want +got):\n%s\n%s", diff, p.Errors)
			}
		})
	}
	if names := tableNames(t, e.pool); len(names) != 0 {
		t.Fatalf("invalid requests stored %q", names)
	}
}

// TestCreateValidEdges are names at the edges of what is allowed.
func TestCreateValidEdges(t *testing.T) {
	t.Parallel()
	e := mustEnv(t)
	tests := []struct {
		name string
		body string
		want string
	}{
		{"255Chars", `{"name": "` + strings.Repeat("a", 255) + `"}`, strings.Repeat("a", 255)},
		{"255TwoByteChars", `{"name": "` + strings.Repeat("é", 255) + `"}`, strings.Repeat("é", 255)},
		{"255FourByteChars", `{"name": "` + strings.Repeat("😀", 255) + `"}`, strings.Repeat("😀", 255)},
		{"SurrogatePairEscape", `{"name": "\ud83d\ude00"}`, "😀"},
		{"LiteralReplacementChar", `{"name": "\ufffd and �"}`, "\ufffd and \ufffd"},
		{"EscapedBackslashU", `{"name": "\\ud800"}`, `\ud800`},
		{"Spaces", `{"name": " padded "}`, " padded "},
		{"CharsetParam", `{"name": "charset"}`, "charset"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ct := "application/json"
			if tc.name == "CharsetParam" {
				ct = "application/json; charset=UTF-8"
			}
			res := do(t, e.h, "POST", "/tests", tc.body, "Content-Type", ct)
			if res.status != http.StatusCreated {
				t.Fatalf("status %d: %s", res.status, res.body)
			}
			var got test
			res.json(t, &got)
			if got.Name != tc.want {
				t.Fatalf("stored %q, want %q", got.Name, tc.want)
			}
			var stored string
			if err := e.pool.QueryRow(t.Context(), "SELECT name FROM test WHERE id = $1", got.ID).Scan(&stored); err != nil || stored != tc.want {
				t.Fatalf("table has %q (%v), want %q", stored, err, tc.want)
			}
		})
	}
}

func TestCreateMediaType(t *testing.T) {
	t.Parallel()
	e := mustEnv(t)
	for _, ct := range []string{"", "text/plain", "application/xml", "application/json; charset=latin1",
		"application/json-seq", "application/x-www-form-urlencoded", "application/json; foo=bar", "garbage/"} {
		t.Run(ct, func(t *testing.T) {
			problemOf(t, do(t, e.h, "POST", "/tests", `{"name": "Bob"}`, "Content-Type", ct), http.StatusUnsupportedMediaType)
		})
	}
	if names := tableNames(t, e.pool); len(names) != 0 {
		t.Fatalf("stored %q", names)
	}
}

func TestCreateTooLarge(t *testing.T) {
	t.Parallel()
	e := mustEnv(t)
	big := `{"name": "` + strings.Repeat("a", int(testLimits.MaxBodyBytes)) + `"}`
	problemOf(t, do(t, e.h, "POST", "/tests", big), http.StatusRequestEntityTooLarge)

	// Without a Content-Length the limit still holds, while reading.
	req := strings.NewReader(big)
	res := doReader(t, e.h, req)
	problemOf(t, res, http.StatusRequestEntityTooLarge)
	if names := tableNames(t, e.pool); len(names) != 0 {
		t.Fatalf("stored %q", names)
	}
}

// TestCreateConcurrentDuplicates races many creates of the same few names:
// exactly one 201 per name, every other answer a 409, nothing else.
func TestCreateConcurrentDuplicates(t *testing.T) {
	t.Parallel()
	e := mustEnv(t)
	names := []string{"a", "b", "c", "d", "e", "f", "g", "h"}
	const perName = 12
	var mu sync.Mutex
	created := map[string]int{}
	statuses := map[int]int{}
	var wg sync.WaitGroup
	for i := range perName {
		for _, n := range names {
			wg.Go(func() {
				body := `{"name": "` + n + `"}`
				if i%3 == 0 {
					body = `[{"name": "` + n + `"}]` // arrays race singles too
				}
				res := do(t, e.h, "POST", "/tests", body)
				mu.Lock()
				defer mu.Unlock()
				statuses[res.status]++
				if res.status == http.StatusCreated {
					created[n]++
				}
			})
		}
	}
	wg.Wait()
	for _, n := range names {
		if created[n] != 1 {
			t.Errorf("name %q created %d times, want exactly 1", n, created[n])
		}
	}
	if statuses[http.StatusCreated] != len(names) || statuses[http.StatusConflict] != len(names)*(perName-1) || len(statuses) != 2 {
		t.Fatalf("statuses %v, want %d×201 and %d×409 only", statuses, len(names), len(names)*(perName-1))
	}
	got := tableNames(t, e.pool)
	slices.Sort(got)
	if diff := cmp.Diff(names, got); diff != "" {
		t.Fatalf("table (-want +got):\n%s", diff)
	}
}
