package api

import (
	"bytes"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestParseCreateFast checks which bodies the fast path takes, and what it
// makes of them; FuzzParseCreate checks that it agrees with the full
// decoder on every body it takes.
func TestParseCreateFast(t *testing.T) {
	const maxItems = 3
	long := strings.Repeat("é", 255)
	taken := []struct {
		name, body string
		want       []string
		single     bool
	}{
		{"Object", `{"name":"Bob"}`, []string{"Bob"}, true},
		{"Array", `[{"name":"John"},{"name":"Ivy"}]`, []string{"John", "Ivy"}, false},
		{"Whitespace", " \t\r\n[ {\n\"name\" :\t\"a b\" } ,\r\n{ \"name\":\"c\"}\n] \n", []string{"a b", "c"}, false},
		{"MaxItems", `[{"name":"a"},{"name":"b"},{"name":"c"}]`, []string{"a", "b", "c"}, false},
		{"UTF8", `[{"name":"é😀日本"}]`, []string{"é😀日本"}, false},
		{"Longest", `[{"name":"` + long + `"}]`, []string{long}, false},
		{"HTMLAndSlash", `{"name":"<a&b>/"}`, []string{"<a&b>/"}, true},
	}
	for _, tc := range taken {
		t.Run(tc.name, func(t *testing.T) {
			names, single, ok := parseCreateFast([]byte(tc.body), maxItems)
			if !ok {
				t.Fatalf("fast path declined %q", tc.body)
			}
			if diff := cmp.Diff(tc.want, names); diff != "" || single != tc.single {
				t.Errorf("single %v, names (-want +got):\n%s", single, diff)
			}
		})
	}
	declined := map[string]string{
		"Empty":          ``,
		"EmptyArray":     `[]`,
		"TooMany":        `[{"name":"a"},{"name":"b"},{"name":"c"},{"name":"d"}]`,
		"Escape":         `[{"name":"a\nb"}]`,
		"EscapedQuote":   `[{"name":"a\"b"}]`,
		"ControlChar":    "[{\"name\":\"a\tb\"}]",
		"EmptyName":      `[{"name":""}]`,
		"TooLong":        `[{"name":"` + strings.Repeat("x", 256) + `"}]`,
		"TooLongUTF8":    `[{"name":"` + long + `é"}]`,
		"InvalidUTF8":    "[{\"name\":\"\xff\"}]",
		"Surrogate":      "[{\"name\":\"\xed\xa0\x80\"}]",
		"Null":           `[{"name":null}]`,
		"Number":         `[{"name":1}]`,
		"NoName":         `[{}]`,
		"OtherKey":       `[{"Name":"a"}]`,
		"ExtraKey":       `[{"name":"a","age":1}]`,
		"RepeatedKey":    `{"name":"a","name":"b"}`,
		"TrailingComma":  `[{"name":"a"},]`,
		"TrailingData":   `[{"name":"a"}] x`,
		"SecondValue":    `{"name":"a"}{"name":"b"}`,
		"Unclosed":       `[{"name":"a"}`,
		"UnclosedString": `[{"name":"a}]`,
		"NestedArray":    `[[{"name":"a"}]]`,
		"String":         `"a"`,
		"BOM":            "\xef\xbb\xbf{\"name\":\"a\"}",
	}
	for name, body := range declined {
		t.Run("Declines"+name, func(t *testing.T) {
			if names, _, ok := parseCreateFast([]byte(body), maxItems); ok {
				t.Errorf("fast path took %q as %q", body, names)
			}
		})
	}
}

// bulkBody is a body like the benchmark's bulk import: n objects with
// names of 11 characters.
func bulkBody(n int) []byte {
	var b bytes.Buffer
	b.WriteByte('[')
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(`{"name":"i1a-` + strconv.Itoa(1_000_000 + i)[1:] + `"}`)
	}
	b.WriteByte(']')
	return b.Bytes()
}

// BenchmarkParseCreate decodes one 1,000-item array, as each POST of the
// bulk import sends, with the fast path and with the full decoder.
func BenchmarkParseCreate(b *testing.B) {
	body := bulkBody(1000)
	for _, bc := range []struct {
		path  string
		parse func([]byte, int) ([]string, bool, error)
	}{{"fast", parseCreate}, {"full", parseCreateFull}} {
		b.Run("path="+bc.path, func(b *testing.B) {
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			for b.Loop() {
				if _, _, err := bc.parse(body, 10000); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
