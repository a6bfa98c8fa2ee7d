package store

import (
	"strconv"
	"strings"
	"unicode/utf8"
)

// MaxNameLen is the most characters (not bytes) a name can have: the
// column is varchar(255) (schema.go).
const MaxNameLen = 255

// NameNotUTF8 is NameProblems' sentence for a name that is not valid
// UTF-8, for a decoder that finds so before the name is a Go string
// (encoding/json turns invalid UTF-8 into U+FFFD instead of failing).
const NameNotUTF8 = "name is not valid UTF-8."

// NameProblems lists what keeps the name column from storing name exactly
// as it is, as sentences for the person who sent it: not valid UTF-8 (and
// then nothing else, since its characters cannot be counted), more than
// MaxNameLen characters (PostgreSQL fails the insert, or cuts the name if
// the excess is spaces, and then the stored name is not the one sent), a
// NUL (which PostgreSQL's text cannot hold). None means the column takes it.
// An empty name is the column's to take: whether it makes sense is the
// API's rule, not this one.
func NameProblems(name string) []string {
	if !utf8.ValidString(name) {
		return []string{NameNotUTF8}
	}
	var problems []string
	// A name of at most MaxNameLen bytes has at most as many characters:
	// the decoders' common case (short names) skips a pass to count them.
	if len(name) > MaxNameLen {
		if n := utf8.RuneCountInString(name); n > MaxNameLen {
			problems = append(problems, "name has "+strconv.Itoa(n)+" characters; the most is "+strconv.Itoa(MaxNameLen)+".")
		}
	}
	if strings.IndexByte(name, 0) >= 0 {
		problems = append(problems, "name must not contain NUL characters.")
	}
	return problems
}

// ValidName reports whether the name column stores name exactly as it is:
// NameProblems has nothing to say, which costs no allocation.
func ValidName(name string) bool {
	return NameProblems(name) == nil
}
