package api

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strconv"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/ybrest/testsapi/internal/store"
)

// newTest is one item of a POST /tests body: {"name": "..."}.
type newTest struct {
	Name string
	// present is false when name is absent or null.
	present bool
	// badUTF8 is true when the JSON string held invalid UTF-8 or a lone
	// surrogate escape, which encoding/json would silently turn into U+FFFD.
	badUTF8 bool
}

type unknownFieldError struct{ field string }

func (e *unknownFieldError) Error() string {
	return "Unknown field " + strconv.Quote(e.field) + ": an item has only \"name\"."
}

type wrongTypeError struct{ detail string }

func (e *wrongTypeError) Error() string { return e.detail }

// UnmarshalJSON decodes an item strictly: only the exact key "name" (the
// standard decoder would also take "Name" or "NAME"), a string or null.
func (t *newTest) UnmarshalJSON(b []byte) error {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(b, &fields); err != nil || fields == nil {
		return &wrongTypeError{"Each item must be an object like {\"name\": \"Bob\"}."}
	}
	for k := range fields {
		if k != "name" {
			return &unknownFieldError{k}
		}
	}
	if duplicateKey(b) {
		// The map kept the last value; which one the client meant is
		// anyone's guess (RFC 8259: names SHOULD be unique).
		return &wrongTypeError{"Field \"name\" appears more than once in an item."}
	}
	raw, ok := fields["name"]
	if !ok || string(raw) == "null" {
		return nil
	}
	if raw[0] != '"' {
		return &wrongTypeError{"Field \"name\" must be a string."}
	}
	t.present = true
	t.badUTF8 = !validUTF8String(raw[1 : len(raw)-1])
	return json.Unmarshal(raw, &t.Name)
}

// duplicateKey reports whether the JSON object b holds a key twice,
// comparing keys after unescaping.
func duplicateKey(b []byte) bool {
	dec := json.NewDecoder(bytes.NewReader(b))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return false
	}
	seen := make(map[string]bool, 1)
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return false
		}
		k, _ := t.(string)
		if seen[k] {
			return true
		}
		seen[k] = true
		var value json.RawMessage
		if err := dec.Decode(&value); err != nil {
			return false
		}
	}
	return false
}

// validUTF8String reports whether the body of a syntactically valid JSON
// string literal decodes to valid UTF-8: raw bytes must be valid UTF-8 and
// \u escapes must not leave a surrogate unpaired.
func validUTF8String(s []byte) bool {
	for i := 0; i < len(s); {
		switch c := s[i]; {
		case c == '\\' && s[i+1] == 'u':
			r := hex4(s[i+2 : i+6])
			i += 6
			if !utf16.IsSurrogate(r) {
				continue
			}
			if r >= 0xDC00 || i+6 > len(s) || s[i] != '\\' || s[i+1] != 'u' {
				return false
			}
			if lo := hex4(s[i+2 : i+6]); lo < 0xDC00 || lo > 0xDFFF {
				return false
			}
			i += 6
		case c == '\\':
			i += 2
		case c < utf8.RuneSelf:
			i++
		default:
			r, size := utf8.DecodeRune(s[i:])
			if r == utf8.RuneError && size == 1 {
				return false
			}
			i += size
		}
	}
	return true
}

func hex4(b []byte) rune {
	n, _ := strconv.ParseUint(string(b), 16, 16)
	return rune(n)
}

// problems lists what is wrong with the item, pointer being its place in
// the body ("#" or "#/3").
func (t newTest) problems(pointer string) []fieldError {
	at := pointer + "/name"
	switch {
	case !t.present:
		return []fieldError{{Pointer: at, Detail: "name is required."}}
	case t.badUTF8:
		return []fieldError{{Pointer: at, Detail: store.NameNotUTF8}}
	case t.Name == "":
		return []fieldError{{Pointer: at, Detail: "name must not be empty."}}
	}
	var errs []fieldError
	for _, p := range store.NameProblems(t.Name) {
		errs = append(errs, fieldError{Pointer: at, Detail: p})
	}
	return errs
}

// parseCreate decodes a POST /tests body: one object, or an array of 1 to
// maxItems objects. It returns the names and whether the body was a single
// object; malformed input is a 400, invalid names or sizes a 422 listing
// every problem.
func parseCreate(body []byte, maxItems int) (names []string, single bool, err error) {
	if names, single, ok := parseCreateFast(body, maxItems); ok {
		return names, single, nil
	}
	return parseCreateFull(body, maxItems)
}

// parseCreateFull is parseCreate with encoding/json: it takes every body
// and gives every error.
func parseCreateFull(body []byte, maxItems int) (names []string, single bool, err error) {
	var items []newTest
	switch first(body) {
	case '{':
		var item newTest
		if err := decodeJSON(body, &item); err != nil {
			return nil, false, err
		}
		items, single = []newTest{item}, true
	case '[':
		if err := decodeJSON(body, &items); err != nil {
			return nil, false, err
		}
	default:
		if err := decodeJSON(body, new(json.RawMessage)); err != nil {
			return nil, false, err
		}
		return nil, false, badRequest("The request body must be an object or an array of objects.")
	}

	var errs []fieldError
	switch {
	case len(items) == 0:
		errs = append(errs, fieldError{Pointer: "#", Detail: "The array must not be empty."})
	case len(items) > maxItems:
		errs = append(errs, fieldError{Pointer: "#", Detail: "The array has " + strconv.Itoa(len(items)) +
			" items; the most is " + strconv.Itoa(maxItems) + "."})
	}
	names = make([]string, len(items))
	for i, it := range items {
		pointer := "#"
		if !single {
			pointer = "#/" + strconv.Itoa(i)
		}
		errs = append(errs, it.problems(pointer)...)
		names[i] = it.Name
	}
	if len(errs) > 0 {
		return nil, false, &requestError{
			status: http.StatusUnprocessableEntity,
			detail: "The request has " + strconv.Itoa(len(errs)) + " invalid value(s); see errors.",
			errors: errs,
		}
	}
	return names, single, nil
}

// first returns the first byte of body that is not JSON whitespace, or 0.
func first(body []byte) byte {
	body = bytes.TrimLeft(body, " \t\r\n")
	if len(body) == 0 {
		return 0
	}
	return body[0]
}
