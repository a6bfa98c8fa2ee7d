package store_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/ybrest/testsapi/internal/store"
)

func TestNameProblems(t *testing.T) {
	for _, tc := range []struct {
		name, input string
		want        []string
	}{
		{"OK", "Bob", nil},
		{"Empty", "", nil},
		{"MaxASCII", strings.Repeat("x", store.MaxNameLen), nil},
		{"MaxFourByte", strings.Repeat("😀", store.MaxNameLen), nil},
		{"TooLong", strings.Repeat("é", store.MaxNameLen+1), []string{"name has 256 characters; the most is 255."}},
		{"NUL", "a\x00b", []string{"name must not contain NUL characters."}},
		{"TooLongAndNUL", strings.Repeat("x", 300) + "\x00", []string{
			"name has 301 characters; the most is 255.", "name must not contain NUL characters."}},
		{"NotUTF8", "a\xff" + strings.Repeat("x", 300), []string{store.NameNotUTF8}},
		{"Surrogate", "\xed\xa0\x80", []string{store.NameNotUTF8}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := store.NameProblems(tc.input)
			if !slices.Equal(got, tc.want) {
				t.Fatalf("NameProblems = %q, want %q", got, tc.want)
			}
			if store.ValidName(tc.input) != (tc.want == nil) {
				t.Fatalf("ValidName = %v, want %v", !(tc.want == nil), tc.want == nil)
			}
		})
	}
}
