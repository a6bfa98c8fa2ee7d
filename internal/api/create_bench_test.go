package api_test

import (
	"bytes"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/ybrest/testsapi/internal/dbtest"
)

// BenchmarkCreateMany is one POST /tests of a 1,000-name array, as the
// bulk import of bench/ sends, through the whole handler (middleware,
// decoding, the store, pgx, a real PostgreSQL) on one goroutine. Its time
// includes the database's; its allocations and cpu-ns/op (this process's
// CPU time) are the service's own:
//
//	go test -run '^$' -bench CreateMany -benchmem -count 10 ./internal/api
func BenchmarkCreateMany(b *testing.B) {
	lim := testLimits
	lim.MaxBatch, lim.MaxBodyBytes = 1000, 1<<20
	h := mustEnvURL(b, dbtest.NewSchema(b), lim).h

	// The bodies are made before the clock starts, each with new names.
	bodies := make([][]byte, 0, 64)
	body := func(n int) []byte {
		for len(bodies) <= n {
			var buf bytes.Buffer
			buf.WriteByte('[')
			for i := range 1000 {
				if i > 0 {
					buf.WriteByte(',')
				}
				fmt.Fprintf(&buf, `{"name":"b%d-%07d"}`, len(bodies), i)
			}
			buf.WriteByte(']')
			bodies = append(bodies, buf.Bytes())
		}
		return bodies[n]
	}
	post := func(n int) {
		req := httptest.NewRequest(http.MethodPost, "/tests", bytes.NewReader(body(n)))
		req.Header.Set("Content-Type", "application/json")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != http.StatusCreated {
			b.Fatalf("POST /tests: %d %.200s", rec.Code, rec.Body.Bytes())
		}
	}
	post(0)
	n := 1
	b.ReportAllocs()
	var cpu int64
	for b.Loop() {
		b.StopTimer()
		body(n)
		b.StartTimer()
		cpu0 := processCPU(b)
		post(n)
		cpu += int64(processCPU(b) - cpu0)
		n++
	}
	b.ReportMetric(float64(cpu)/float64(b.N), "cpu-ns/op")
}
