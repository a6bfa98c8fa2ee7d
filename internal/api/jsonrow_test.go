package api

import (
	"encoding/json"
	"fmt"
	"testing"

	"github.com/ybrest/testsapi/internal/store"
)

// jsonStrings are names that take every branch of appendJSONString.
var jsonStrings = []string{
	"", "Bob", "seed-0000001", `quote " and backslash \`, "<script>&amp;</script>",
	"tab\tnew\nline\rcr", "\b\f\x00\x01\x1f\x7f", "é and 日本語 and 🙂", "\u2028\u2029",
	"bad \xff utf-8 \xc3", "\xed\xa0\x80 surrogate", "end \xe2\x80",
}

func FuzzAppendJSONString(f *testing.F) {
	for _, s := range jsonStrings {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		want, err := json.Marshal(s)
		if err != nil {
			t.Fatal(err)
		}
		if got := appendJSONString([]byte("x"), s); string(got) != "x"+string(want) {
			t.Errorf("appendJSONString(%q) = %s, encoding/json writes %s", s, got[1:], want)
		}
	})
}

func TestAppendPage(t *testing.T) {
	for _, n := range []int{0, 1, 3} {
		var ts []store.Test
		for i := range n {
			ts = append(ts, store.Test{ID: int32(i*1000 - 1), Name: jsonStrings[i*4%len(jsonStrings)]})
		}
		want, err := json.Marshal(append([]store.Test{}, ts...)) // [] rather than null when empty
		if err != nil {
			t.Fatal(err)
		}
		if got := appendPage(nil, ts); string(got) != string(want)+"\n" {
			t.Errorf("appendPage(%d rows) = %s, encoding/json writes %s", n, got, want)
		}
	}
}

// BenchmarkPageJSON compares a page of 100 rows written by encoding/json
// (as encode wrote pages before) with appendPage into a pooled buffer:
//
//	go test -run '^$' -bench PageJSON -benchmem -count 10 ./internal/api | benchstat -col /enc -
func BenchmarkPageJSON(b *testing.B) {
	ts := make([]store.Test, 100)
	for i := range ts {
		ts[i] = store.Test{ID: int32(i + 1), Name: fmt.Sprintf("seed-%07d", i+1)}
	}
	b.Run("enc=encoding-json", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			body, err := json.Marshal(ts)
			if err != nil {
				b.Fatal(err)
			}
			_ = append(body, '\n')
		}
	})
	b.Run("enc=appender", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			bp := getBuffer()
			*bp = appendPage(*bp, ts)
			putBuffer(bp)
		}
	})
}
