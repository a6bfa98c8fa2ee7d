package api

import (
	"errors"
	"net/http"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/ybrest/testsapi/internal/store"
)

// FuzzParseCreate feeds arbitrary bodies to the POST /tests decoder: it
// must never panic, must fail only with a 400 or a 422, and every name it
// accepts must be storable as is (valid UTF-8, no NUL, 1-255 characters).
// Whatever body the fast path (parseCreateFast) takes, the full decoder
// must take too, with the same names.
func FuzzParseCreate(f *testing.F) {
	for _, seed := range []string{
		`{"name": "Bob"}`, `[{"name": "John"}, {"name": "Ivy"}]`, `[]`, `{}`, `{"name": null}`,
		`{"name": ""}`, `{"name": "a\u0000"}`, `{"name": "\ud800"}`, `{"name": "\ud83d\ude00"}`,
		"{\"name\": \"\xff\"}", `{"Name": "x"}`, `{"name": 1}`, `[[[[]]]]`, `{"name": "x"} 1`, `"x"`,
		`[{"name": "a"}, {"name": "a"}]`, `{"name": "` + strings.Repeat("é", 256) + `"}`,
		// The fast path's shapes and its edges.
		`[{"name":"a"},{"name":"b"}]`, " \t\r\n[ {\n\"name\" :\t\"é\" } ,{\"name\":\"😀\"}] \n",
		`[{"name":"a"},]`, `[{"name":"a"}}`, `[{"name":"a"},{"name":"b"},{"name":"c"},{"name":"d"},{"name":"e"}]`,
		`{"name":"a","name":"b"}`, `{"name":"a"`, `[{"name":"a"}]]`, `[{"name":"a\"}]`, "[{\"name\":\"a\tb\"}]",
		`{"name":"` + strings.Repeat("x", 255) + `"}`, `{"name":"` + strings.Repeat("x", 256) + `"}`,
		`[{"name":"` + strings.Repeat("é", 255) + `"}]`, "[{\"name\":\"\xed\xa0\x80\"}]",
	} {
		f.Add([]byte(seed))
	}
	const maxItems = 4
	f.Fuzz(func(t *testing.T, body []byte) {
		names, single, err := parseCreate(body, maxItems)
		if fastNames, fastSingle, ok := parseCreateFast(body, maxItems); ok {
			fullNames, fullSingle, fullErr := parseCreateFull(body, maxItems)
			if fullErr != nil || !slices.Equal(fastNames, fullNames) || fastSingle != fullSingle {
				t.Fatalf("fast path took %q as %q (single %v); the full decoder: %q (single %v), %v",
					body, fastNames, fastSingle, fullNames, fullSingle, fullErr)
			}
		}
		if err != nil {
			var re *requestError
			if !errors.As(err, &re) || (re.status != http.StatusBadRequest && re.status != http.StatusUnprocessableEntity) {
				t.Fatalf("error %v is not a 400 or 422", err)
			}
			if re.status == http.StatusUnprocessableEntity && len(re.errors) == 0 {
				t.Fatal("422 without field errors")
			}
			return
		}
		if len(names) < 1 || len(names) > maxItems || (single && len(names) != 1) {
			t.Fatalf("accepted %d names (single %v)", len(names), single)
		}
		for _, n := range names {
			if !utf8.ValidString(n) || strings.IndexByte(n, 0) >= 0 || n == "" || utf8.RuneCountInString(n) > store.MaxNameLen {
				t.Fatalf("accepted unstorable name %q", n)
			}
		}
	})
}

// FuzzQuery feeds arbitrary query values and Accept headers to GET /tests'
// parsing: no panic, limits in range, and an answer among the offers.
func FuzzQuery(f *testing.F) {
	f.Add("10", "100", "application/json")
	f.Add("", "0", "text/csv;q=0.5, */*;q=0.1")
	f.Add("-1", "1001", "application/*;q=x")
	f.Add("99999999999999999999", "+1", "")
	f.Fuzz(func(t *testing.T, after, limit, accept string) {
		a, l, err := parsePage(after, after != "", limit, limit != "")
		if err == nil && (a < 0 || l < 0 || l > maxLimit || (limit != "" && l < 1)) {
			t.Fatalf("after=%q limit=%q parsed as %d, %d", after, limit, a, l)
		}
		switch got := negotiate(accept, mediaJSON, mediaNDJSON, mediaCSV); got {
		case "", mediaJSON, mediaNDJSON, mediaCSV:
		default:
			t.Fatalf("negotiate(%q) = %q", accept, got)
		}
	})
}
