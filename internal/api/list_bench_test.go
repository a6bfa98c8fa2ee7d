package api_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/ybrest/testsapi/internal/api"
	"github.com/ybrest/testsapi/internal/dbtest"
	"github.com/ybrest/testsapi/internal/store"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
)

// BenchmarkListPage is GET /tests?limit=100 through the whole handler (the
// middleware with a JSON access log, the store, pgx, a real PostgreSQL) on
// one goroutine. Its time includes the database's; its allocations and
// cpu-ns/op (this process's CPU time) are the service's own:
//
//	go test -run '^$' -bench ListPage -benchmem -count 10 ./internal/api
//
// bench/ (make bench) measures the same request under load, against the
// database's limit. Its sub-benchmarks are tracing off (the default), on
// but not sampled, and on and sampled, exported in batches to an exporter
// that drops them: what tracing costs the service itself.
func BenchmarkListPage(b *testing.B) {
	b.Run("TracingOff", func(b *testing.B) { benchmarkListPage(b, nil) })
	for _, c := range []struct {
		name    string
		sampler sdktrace.Sampler
	}{
		{"Unsampled", sdktrace.NeverSample()},
		{"Sampled", sdktrace.AlwaysSample()},
	} {
		b.Run(c.name, func(b *testing.B) {
			tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(c.sampler),
				sdktrace.WithBatcher(tracetest.NewNoopExporter()))
			b.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
			benchmarkListPage(b, tp)
		})
	}
}

// benchmarkListPage runs BenchmarkListPage with tracing on tp, or off
// when tp is nil.
func benchmarkListPage(b *testing.B, tp trace.TracerProvider) {
	ctx := context.Background()
	var poolOpts []store.PoolOption
	var storeOpts []store.Option
	var handlerOpts []api.Option
	if tp != nil {
		poolOpts = append(poolOpts, store.TraceStatements(tp))
		storeOpts = append(storeOpts, store.Tracing(tp))
		handlerOpts = append(handlerOpts, api.Tracing(tp, propagation.TraceContext{}))
	}
	pool := mustPool(b, dbtest.NewSchema(b), nil, poolOpts...)
	st := store.New(pool, storeOpts...)
	if _, _, err := st.Migrate(ctx); err != nil {
		b.Fatal(err)
	}
	i := 0
	rows := pgx.CopyFromFunc(func() ([]any, error) {
		if i == 1000 {
			return nil, nil
		}
		i++
		return []any{fmt.Sprintf("seed-%07d", i)}, nil
	})
	if _, err := pool.CopyFrom(ctx, pgx.Identifier{"test"}, []string{"name"}, rows); err != nil {
		b.Fatal(err)
	}
	h := api.NewHandler(slog.New(slog.NewJSONHandler(io.Discard, nil)), st, testLimits, handlerOpts...)

	req := httptest.NewRequest(http.MethodGet, "/tests?limit=100", nil)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != http.StatusOK || rec.Body.Len() < 3000 {
		b.Fatalf("GET /tests?limit=100: %d %.200s", rec.Code, rec.Body.Bytes())
	}
	b.ReportAllocs()
	cpu0 := processCPU(b)
	for b.Loop() {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/tests?limit=100", nil))
		if rec.Code != http.StatusOK {
			b.Fatalf("GET /tests?limit=100: %d", rec.Code)
		}
	}
	// The wall time per page is mostly the round trip to PostgreSQL; the
	// CPU time of this process is what the service itself spends.
	b.ReportMetric(float64(processCPU(b)-cpu0)/float64(b.N), "cpu-ns/op")
}

// processCPU is the user and system CPU time this process has used.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// rowsStore streams n generated rows as fast as fn takes them, so that an
// export's time is the handler's own: all of one name, or varied names
// (made before the clock starts).
type rowsStore struct {
	failingStore
	n      int
	varied bool
}

func (s rowsStore) Stream(_ context.Context, _ int64, _ int, fn func(store.Test) error) error {
	for i := range s.n {
		name := "a name of some thirty characters"
		if s.varied {
			name = variedNames[i%len(variedNames)]
		}
		if err := fn(store.Test{ID: int32(i + 1), Name: name}); err != nil {
			return err
		}
	}
	return nil
}

// variedNames are 100,000 names like people's: "Grace Walker 48213".
var variedNames = func() []string {
	first := []string{"Ann", "Bob", "Carol", "Dave", "Eve", "Frank", "Grace", "Heidi", "Ivan", "Judy",
		"Mallory", "Niaj", "Olivia", "Peggy", "Rupert", "Sybil", "Trent", "Victor", "Walter", "Zoe"}
	last := []string{"Smith", "Jones", "Taylor", "Brown", "Williams", "Wilson", "Johnson", "Davies", "Robinson", "Wright",
		"Thompson", "Evans", "Walker", "White", "Roberts", "Green", "Hall", "Wood", "Jackson", "Clarke"}
	r := rand.New(rand.NewPCG(1, 2))
	names := make([]string, 100_000)
	for i := range names {
		names[i] = first[r.IntN(len(first))] + " " + last[r.IntN(len(last))] + " " + strconv.Itoa(r.IntN(100_000))
	}
	return names
}()

// BenchmarkExportRows is an NDJSON export of 100,000 rows through the
// whole handler with the database left out, for the handler's per-row
// cost (encoding, buffering, the stall watch), as it is and compressed
// (the handler with compression on, the client asking for gzip or zstd;
// "identity" is compression on, the client asking for none), of one name
// repeated ("same") and of names like people's ("varied": a first name, a
// last name and a number, from a fixed seed), which compress far less:
//
//	go test -run '^$' -bench ExportRows -benchmem -count 10 ./internal/api
func BenchmarkExportRows(b *testing.B) {
	const n = 100_000
	log := slog.New(slog.NewJSONHandler(io.Discard, nil))
	for _, names := range []string{"same", "varied"} {
		for _, c := range []struct {
			name, coding string
			opts         []api.Option
		}{
			{"off", "", nil},
			{"identity", "", []api.Option{api.Compress(1024, true, true)}},
			{"gzip", "gzip", []api.Option{api.Compress(1024, true, true)}},
			{"zstd", "zstd", []api.Option{api.Compress(1024, true, true)}},
		} {
			b.Run(names+"/"+c.name, func(b *testing.B) {
				h := api.NewHandler(log, rowsStore{n: n, varied: names == "varied"}, testLimits, c.opts...)
				for b.Loop() {
					w := &discardResponse{header: http.Header{}}
					req := httptest.NewRequest(http.MethodGet, "/tests", nil)
					req.Header.Set("Accept", "application/x-ndjson")
					if c.coding != "" {
						req.Header.Set("Accept-Encoding", c.coding)
					}
					h.ServeHTTP(w, req)
					if w.status != http.StatusOK || w.header.Get("Content-Encoding") != c.coding || c.coding == "" && w.bytes < n*40 {
						b.Fatalf("export: %d, Content-Encoding %q, %d bytes", w.status, w.header.Get("Content-Encoding"), w.bytes)
					}
					b.ReportMetric(float64(w.bytes)/n, "B/row")
				}
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/n, "ns/row")
			})
		}
	}
}

// discardResponse is a ResponseWriter that keeps only the status and the
// byte count, so that a benchmark does not measure a growing buffer.
type discardResponse struct {
	header http.Header
	status int
	bytes  int
}

func (d *discardResponse) Header() http.Header { return d.header }

func (d *discardResponse) WriteHeader(status int) { d.status = status }

// Flush is there because a real response has it: an export flushes
// through the compressor.
func (d *discardResponse) Flush() {}

func (d *discardResponse) Write(b []byte) (int, error) {
	if d.status == 0 {
		d.status = http.StatusOK
	}
	d.bytes += len(b)
	return len(b), nil
}
