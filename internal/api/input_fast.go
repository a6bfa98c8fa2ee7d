package api

import (
	"github.com/ybrest/testsapi/internal/store"
)

// parseCreateFast decodes the common POST /tests bodies, an array of
// {"name": "..."} objects or one such object, without encoding/json, which
// spends most of the server's time of a bulk import (reflection, a map per
// item for the strict key check, and a string per item). It answers only a
// body it can take as it is: JSON whitespace between tokens, exactly one key
// "name" per object, each name a non-empty string without escapes that the
// column takes (store.ValidName), 1 to maxItems items and nothing after the
// value.
// For anything else (an escape, another or a repeated key, null, a number,
// an invalid name, malformed JSON) ok is false and parseCreate's full
// decoder answers, so that every error keeps its one source; FuzzParseCreate
// checks that the two agree on every body this one takes.
func parseCreateFast(body []byte, maxItems int) (names []string, single, ok bool) {
	s := scanner{b: body}
	s.space()
	if s.i < len(s.b) && s.b[s.i] == '{' {
		start, end, ok := s.item()
		if !ok || !s.end() {
			return nil, false, false
		}
		name := string(body[start:end])
		if !store.ValidName(name) {
			return nil, false, false
		}
		return []string{name}, true, true
	}
	if !s.byte('[') {
		return nil, false, false
	}
	// Item i's name is body[spans[2i]:spans[2i+1]]. An item and its comma
	// take at least 13 bytes.
	spans := make([]int, 0, 2*min(maxItems, len(body)/13+1))
	for {
		if len(spans) == 2*maxItems {
			return nil, false, false
		}
		start, end, ok := s.item()
		if !ok {
			return nil, false, false
		}
		spans = append(spans, start, end)
		if s.byte(']') {
			break
		}
		if !s.byte(',') {
			return nil, false, false
		}
	}
	if !s.end() {
		return nil, false, false
	}
	// One string for the whole body, and every name a slice of it: one
	// allocation instead of one per name. The names keep the body's bytes
	// alive, for as long as the request holds them.
	all := string(body)
	names = make([]string, len(spans)/2)
	for i := range names {
		names[i] = all[spans[2*i]:spans[2*i+1]]
		if !store.ValidName(names[i]) {
			return nil, false, false
		}
	}
	return names, false, true
}

// scanner reads the tokens parseCreateFast takes from b, from offset i.
type scanner struct {
	b []byte
	i int
}

// space skips JSON whitespace.
func (s *scanner) space() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

// byte skips whitespace, then c if it comes next, and reports whether it did.
func (s *scanner) byte(c byte) bool {
	s.space()
	if s.i < len(s.b) && s.b[s.i] == c {
		s.i++
		return true
	}
	return false
}

// end reports whether only whitespace is left.
func (s *scanner) end() bool {
	s.space()
	return s.i == len(s.b)
}

// item reads {"name": "..."} and returns where the name is in b, if it is
// a non-empty string without escapes (the caller checks it is a name the
// column takes).
func (s *scanner) item() (start, end int, ok bool) {
	const key = `"name"`
	if !s.byte('{') {
		return 0, 0, false
	}
	s.space()
	if len(s.b)-s.i < len(key) || string(s.b[s.i:s.i+len(key)]) != key {
		return 0, 0, false
	}
	s.i += len(key)
	if !s.byte(':') || !s.byte('"') {
		return 0, 0, false
	}
	start = s.i
	for ; s.i < len(s.b); s.i++ {
		c := s.b[s.i]
		if c == '"' {
			break
		}
		if c == '\\' || c < 0x20 {
			// An escape, or a control character JSON does not allow.
			return 0, 0, false
		}
	}
	if s.i == len(s.b) {
		return 0, 0, false
	}
	end = s.i
	s.i++ // the closing quote
	if !s.byte('}') {
		return 0, 0, false
	}
	return start, end, end > start
}
