package store_test

import (
	"fmt"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/ybrest/testsapi/internal/dbtest"
	"github.com/ybrest/testsapi/internal/store"
)

// BenchmarkCreateThroughProxy is group commit on its own, without HTTP:
// 64 goroutines creating rows one at a time through the store (its pool
// of 16, as the service's default DB_MAX_CONNS), against the same 64
// running the single-row INSERT ... RETURNING the store would send for
// one create, each on a connection of its own (a pool of 64: what pgbench
// -c 64 does), both through one TCP proxy with no delay and with 2 ms
// ±1 ms each way (toxiproxy, whose jitter is whole milliseconds: 1 or 2
// ms). It reports creates/s; bench/ measures the same through the HTTP
// server, wrk and pgbench (BENCHMARKS.md):
//
//	go test -run '^$' -bench CreateThroughProxy -benchtime 20000x -count 3 ./internal/store
func BenchmarkCreateThroughProxy(b *testing.B) {
	for _, lat := range []time.Duration{0, 2 * time.Millisecond} {
		url := dbtest.NewSchema(b)
		p := dbtest.NewProxy(b, url)
		st := store.New(mustPool(b, p.URL(url), func(cfg *pgxpool.Config) { cfg.MaxConns = 16 }))
		b.Cleanup(st.Close)
		if _, _, err := st.Migrate(b.Context()); err != nil {
			b.Fatal(err)
		}
		single := mustPool(b, p.URL(url), func(cfg *pgxpool.Config) { cfg.MaxConns = 64 })
		if lat > 0 {
			if err := p.Latency(lat, time.Millisecond); err != nil {
				b.Fatal(err)
			}
		}
		var seq atomic.Int64
		name := func(kind string) string { return fmt.Sprintf("%s-%d", kind, seq.Add(1)) }
		b.Run(fmt.Sprintf("latency=%v/GroupCommit", lat), func(b *testing.B) {
			run64(b, func() error {
				_, err := st.Create(b.Context(), name("g"))
				return err
			})
		})
		b.Run(fmt.Sprintf("latency=%v/SingleStatements", lat), func(b *testing.B) {
			run64(b, func() error {
				var t store.Test
				return single.QueryRow(b.Context(), `INSERT INTO test (name) VALUES ($1) RETURNING id, name`, name("s")).Scan(&t.ID, &t.Name)
			})
		})
	}
}

// run64 runs op b.N times from 64 goroutines and reports the rate.
func run64(b *testing.B, op func() error) {
	b.SetParallelism(max(1, 64/runtime.GOMAXPROCS(0)))
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := op(); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "creates/s")
}
