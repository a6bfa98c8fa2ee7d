package api

import (
	"strconv"
	"sync"
	"unicode/utf8"

	"github.com/ybrest/testsapi/internal/store"
)

// The rows of GET /tests are written by hand rather than by encoding/json:
// the bytes are the same (jsonrow_test.go checks them against
// encoding/json), and a page of 100 rows costs a fraction of the time and
// no allocation (BenchmarkPageJSON).

// appendTest appends t as {"id":1,"name":"Bob"}.
func appendTest(b []byte, t store.Test) []byte {
	b = append(b, `{"id":`...)
	b = strconv.AppendInt(b, int64(t.ID), 10)
	b = append(b, `,"name":`...)
	b = appendJSONString(b, t.Name)
	return append(b, '}')
}

// appendRow appends t as the body of an answer of one row: its JSON and a
// newline, as encode writes a value.
func appendRow(b []byte, t store.Test) []byte {
	return append(appendTest(b, t), '\n')
}

// appendPage appends ts as a JSON array and a newline, as encode writes
// one.
func appendPage(b []byte, ts []store.Test) []byte {
	b = append(b, '[')
	for i, t := range ts {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendTest(b, t)
	}
	return append(b, "]\n"...)
}

// appendJSONString appends s as a JSON string the way encoding/json.Marshal
// writes one: HTML-safe (<, > and & escaped), U+2028 and U+2029 escaped,
// invalid UTF-8 replaced by U+FFFD, control characters as \b, \f, \n, \r,
// \t or \u00XX. (Names are valid UTF-8 without NUL when the API stores
// them, but rows written by other programs are answered as they are.)
func appendJSONString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
		case r == '\u2028' || r == '\u2029':
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hex[r&0xF])
		default:
			i += size
			continue
		}
		i += size
		start = i
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// maxPooledBuffer is the largest buffer bufferPool keeps: a page of 1,000
// long names may need more once, but it is not worth holding on to.
const maxPooledBuffer = 64 << 10

// bufferPool recycles the buffers responses are built in.
var bufferPool = sync.Pool{New: func() any { b := make([]byte, 0, 8<<10); return &b }}

// getBuffer returns an empty buffer from the pool; give it back with
// putBuffer once nothing refers to it any more.
func getBuffer() *[]byte {
	bp := bufferPool.Get().(*[]byte)
	*bp = (*bp)[:0]
	return bp
}

func putBuffer(bp *[]byte) {
	if cap(*bp) <= maxPooledBuffer {
		bufferPool.Put(bp)
	}
}
