package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/ybrest/testsapi/internal/dbtest"
)

// bench is one benchmark run: its options, tools, database and server.
type bench struct {
	opts  options
	tools tools
	db    *database
	bin   string // the server's binary
	srv   *server
	dir   string
	// What the server and the database's clients connect to: the database,
	// or the proxy in front of it, and the latency the proxy adds each way.
	dbURL, dbPort string
	latency       time.Duration
	// clientProxy is the proxy in front of the server that
	// -client-bandwidth adds for the export workloads, or nil.
	clientProxy *dbtest.Proxy
}

// exportBase is where the export workloads send their requests: the
// server, or the proxy in front of it.
func (b *bench) exportBase() string {
	if b.clientProxy != nil {
		return "http://" + b.clientProxy.Addr()
	}
	return b.srv.base
}

// atLatency is loopback's target, or the one for a database 2 ms or more
// away each way (issue 10), if the workload has one.
func (b *bench) atLatency(loopback, away float64) float64 {
	if b.latency >= 2*time.Millisecond {
		return away
	}
	return loopback
}

// workload is one row of the table: what ours (A) and the
// database's limit (B) run, and the target ratio of their rates.
type workload struct {
	key       string // its name for -only
	name      string
	ours      string
	limit     string
	unit      string  // of both rates
	target    float64 // ours/limit should be at least this
	maxGrowth int64   // if not 0: the server's RSS may grow at most this much during a run of ours
	rows      int     // the table is reloaded with this many rows before the workload
	warm      bool    // run each side once untimed (-warmup) before the rounds
	a, b      func(ctx context.Context, round int) (sample, error)
}

// workloadKeys are the workloads in the order they run.
var workloadKeys = []string{"page", "pages", "create", "import", "file-import", "export-ndjson", "export-csv",
	"export-ndjson-gzip", "export-csv-gzip", "export-ndjson-zstd"}

func isWorkloadKey(k string) bool { return slices.Contains(workloadKeys, k) }

func (b *bench) workloads() []workload {
	o := b.opts
	wrkDesc := fmt.Sprintf("wrk -t%d -c%d -d%s", o.threads, o.clients, o.duration)
	pgbDesc := fmt.Sprintf("pgbench -M prepared -c%d -j%d -T%d", o.clients, o.threads, int(o.duration.Seconds()))
	return []workload{{
		key:    "page",
		name:   "read a page",
		ours:   wrkDesc + ": GET /tests?limit=100",
		limit:  pgbDesc + ": SELECT id, name FROM test ORDER BY id LIMIT 100",
		unit:   "req/s",
		target: b.atLatency(0.5, 0.8),
		rows:   o.rows,
		warm:   true,
		a: func(ctx context.Context, _ int) (sample, error) {
			return b.runWrk(ctx, "page", b.srv.base+"/tests?limit=100", o.duration)
		},
		b: func(ctx context.Context, _ int) (sample, error) {
			return b.runPgbench(ctx, "page", o.duration)
		},
	}, {
		key:    "pages",
		name:   "random pages",
		ours:   wrkDesc + ": GET /tests?limit=100&after=random",
		limit:  pgbDesc + ": SELECT id, name FROM test WHERE id > random ORDER BY id LIMIT 100",
		unit:   "req/s",
		target: 0.5,
		rows:   o.rows,
		warm:   true,
		a: func(ctx context.Context, _ int) (sample, error) {
			return b.runWrk(ctx, "pages", b.srv.base+"/tests", o.duration, strconv.Itoa(o.rows))
		},
		b: func(ctx context.Context, _ int) (sample, error) {
			return b.runPgbench(ctx, "pages", o.duration, "rows="+strconv.Itoa(o.rows))
		},
	}, {
		key:    "create",
		name:   "create one row",
		ours:   wrkDesc + `: POST /tests {"name": unique}`,
		limit:  pgbDesc + ": INSERT INTO test (name) VALUES (unique) RETURNING id, name",
		unit:   "req/s",
		target: b.atLatency(1.25, 1.5),
		rows:   o.rows,
		warm:   true,
		a: func(ctx context.Context, round int) (sample, error) {
			before, err := b.batches(ctx)
			if err != nil {
				return sample{}, err
			}
			s, err := b.runWrk(ctx, "create", b.srv.base+"/tests", o.duration, "c"+strconv.Itoa(round))
			if err != nil {
				return s, err
			}
			after, err := b.batches(ctx)
			s.note = "batches: " + after.since(before)
			return s, err
		},
		b: func(ctx context.Context, round int) (sample, error) {
			// Names base + client_id*1e8 + i: base 1e10 per round keeps
			// every run's names apart.
			base := strconv.FormatInt(int64(round+1)*1e10, 10)
			return b.runPgbench(ctx, "create", o.duration, "i=0", "base="+base)
		},
	}, {
		key:    "import",
		name:   "bulk import",
		ours:   fmt.Sprintf("%d POSTs of %d-name arrays, %d at a time (Go client)", o.bulkRequests, o.bulkSize, o.bulkParallel),
		limit:  "psql: COPY test (name) FROM STDIN, the same number of names",
		unit:   "rows/s",
		target: 0.8,
		rows:   o.rows,
		a:      b.importOurs,
		b:      b.importCopy,
	},
		b.fileImportWorkload(), // fileimport.go
		b.exportWorkload("export-ndjson", "export NDJSON", "application/x-ndjson", "", 0),
		b.exportWorkload("export-csv", "export CSV", "text/csv", "", 1), // and the header line
		b.exportWorkload("export-ndjson-gzip", "export NDJSON, gzip", "application/x-ndjson", "gzip", 0),
		b.exportWorkload("export-csv-gzip", "export CSV, gzip", "text/csv", "gzip", 1),
		b.exportWorkload("export-ndjson-zstd", "export NDJSON, zstd", "application/x-ndjson", "zstd", 0),
	}
}

// exportWorkload is GET /tests as accept, in coding ("" for none), whose
// body has extra lines besides the rows, against psql's COPY TO STDOUT.
// A compressed export has no target (issue 15 asks what it costs and
// gains, which the wire bytes and the CPU per row say).
func (b *bench) exportWorkload(key, name, accept, coding string, extra int) workload {
	ours := "GET /tests, Accept: " + accept
	target := 1.0
	if coding != "" {
		ours += ", Accept-Encoding: " + coding
		target = 0
	}
	return workload{
		key:       key,
		name:      name,
		ours:      ours + " (Go client, decompressing)",
		limit:     "psql: COPY (SELECT id, name FROM test ORDER BY id) TO STDOUT",
		unit:      "rows/s",
		target:    target,
		maxGrowth: 32 << 20,
		rows:      b.opts.exportRows,
		a: func(ctx context.Context, _ int) (sample, error) {
			return b.exportOurs(ctx, accept, coding, extra)
		},
		b: b.exportCopy,
	}
}

// result is what a workload measured, round by round.
type result struct {
	w      workload
	rounds []round
}

type round struct {
	a, b    sample
	ratio   float64
	peakRSS int64 // the server's VmHWM during ours
	growth  int64 // how far that peak was above the RSS before ours
}

// runWorkload reloads the table, warms both sides up if the workload wants
// it, then runs rounds of A then B, printing each as it ends.
func (b *bench) runWorkload(ctx context.Context, w workload) (result, error) {
	res := result{w: w}
	fmt.Printf("\n== %s (target ours/limit >= %.2f)\n   ours:  %s\n   limit: %s\n", w.name, w.target, w.ours, w.limit)
	fmt.Printf("   table reloaded with %d rows\n", w.rows)
	if err := b.db.reload(ctx, w.rows); err != nil {
		return res, err
	}
	if w.warm && b.opts.warmup > 0 {
		// Round 0: the load generators name its rows apart from the timed rounds'.
		if _, err := w.a(ctx, 0); err != nil {
			return res, fmt.Errorf("warm-up of ours: %w", err)
		}
		if _, err := w.b(ctx, 0); err != nil {
			return res, fmt.Errorf("warm-up of the limit: %w", err)
		}
	}
	for i := 1; i <= b.opts.rounds; i++ {
		var r round
		if err := b.srv.resetPeak(); err != nil {
			return res, fmt.Errorf("reset the server's peak RSS: %w", err)
		}
		rss0, _, err := b.srv.memory()
		if err != nil {
			return res, err
		}
		var profiled sync.WaitGroup
		if b.srv.pprof != "" && i == 1 {
			profiled.Go(func() { b.profile(ctx, w.key) })
		}
		if r.a, err = b.measure(ctx, w.a, i); err != nil {
			return res, fmt.Errorf("round %d, ours: %w", i, err)
		}
		profiled.Wait()
		if _, r.peakRSS, err = b.srv.memory(); err != nil {
			return res, err
		}
		r.growth = r.peakRSS - rss0
		if err := b.srv.alive(); err != nil {
			return res, err
		}
		if r.b, err = b.measure(ctx, w.b, i); err != nil {
			return res, fmt.Errorf("round %d, limit: %w", i, err)
		}
		r.ratio = r.a.rate / r.b.rate
		res.rounds = append(res.rounds, r)
		fmt.Printf("   round %d: ours %s %s (%s, peak RSS %s, %s)   limit %s %s (%s)   ratio %.3f\n",
			i, fmtRate(r.a.rate), w.unit, fmtLatency(r.a), mib(r.peakRSS), growth(r.growth),
			fmtRate(r.b.rate), w.unit, fmtLatency(r.b), r.ratio)
		fmt.Printf("            ours %s\n            limit %s\n",
			fmtCPU(r.a.cpu, r.a.ops, true), fmtCPU(r.b.cpu, r.b.ops, false))
		if r.a.note != "" {
			fmt.Printf("            ours %s\n", r.a.note)
		}
		if r.a.wire > 0 {
			fmt.Printf("            ours on the wire: %s, %.1f bytes/row\n", mib(r.a.wire), float64(r.a.wire)/r.a.ops)
		}
	}
	fmt.Printf("   median ratio %.3f (target >= %.2f)\n", res.medianRatio(), w.target)
	return res, nil
}

// measure runs one side's run and records where the CPU time went. The
// backends of the previous run must be gone before it, and those of this
// one after it, for the database's CPU to be counted right.
func (b *bench) measure(ctx context.Context, run func(context.Context, int) (sample, error), round int) (sample, error) {
	if err := b.db.quiesce(ctx); err != nil {
		return sample{}, err
	}
	before, err := b.cpuNow()
	if err != nil {
		return sample{}, err
	}
	s, err := run(ctx, round)
	if err != nil {
		return s, err
	}
	// The run's backends, once reaped, count in the postmaster's children.
	if err := b.db.quiesce(ctx); err != nil {
		return s, err
	}
	after, err := b.cpuNow()
	if err != nil {
		return s, err
	}
	s.cpu = after.since(before)
	return s, nil
}

// profile saves a CPU profile of the server while ours runs (for as long as
// a timed run lasts, or 5s for the short workloads), and the allocation
// profile after it.
func (b *bench) profile(ctx context.Context, key string) {
	secs := max(1, int(b.opts.duration.Seconds())-1)
	if key != "page" && key != "create" {
		secs = 5
	}
	save := func(path, file string) {
		resp, err := http.Get(b.srv.pprof + path)
		if err != nil {
			fmt.Println("   pprof:", err)
			return
		}
		defer resp.Body.Close()
		out := filepath.Join(b.opts.pprofDir, file)
		f, err := os.Create(out)
		if err == nil {
			_, err = io.Copy(f, resp.Body)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
		}
		if err != nil {
			fmt.Println("   pprof:", err)
			return
		}
		fmt.Println("   pprof: wrote", out)
	}
	if err := os.MkdirAll(b.opts.pprofDir, 0o755); err != nil {
		fmt.Println("   pprof:", err)
		return
	}
	save("/debug/pprof/profile?seconds="+strconv.Itoa(secs), key+"-cpu.pprof")
	save("/debug/pprof/allocs", key+"-allocs.pprof")
}

// importOurs POSTs bulkRequests arrays of bulkSize unique names,
// bulkParallel at a time, and returns rows per second and the latency of
// the requests. The bodies are made before the clock starts.
func (b *bench) importOurs(ctx context.Context, round int) (sample, error) {
	o := b.opts
	bodies := make(chan []byte, o.bulkRequests)
	for r := range o.bulkRequests {
		var buf bytes.Buffer
		buf.WriteByte('[')
		for i := range o.bulkSize {
			if i > 0 {
				buf.WriteByte(',')
			}
			fmt.Fprintf(&buf, `{"name":"%s"}`, importName(round, 'a', r*o.bulkSize+i))
		}
		buf.WriteByte(']')
		bodies <- buf.Bytes()
	}
	close(bodies)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: o.bulkParallel, DisableCompression: true}}
	defer client.CloseIdleConnections()

	var (
		mu        sync.Mutex
		latencies []time.Duration
		firstErr  error
		wg        sync.WaitGroup
	)
	start := time.Now()
	for range o.bulkParallel {
		wg.Go(func() {
			for body := range bodies {
				t0 := time.Now()
				err := post(ctx, client, b.srv.base+"/tests", body)
				d := time.Since(t0)
				mu.Lock()
				latencies = append(latencies, d)
				if err != nil && firstErr == nil {
					firstErr = err
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	if firstErr != nil {
		return sample{}, firstErr
	}
	return sample{
		ops:  float64(o.bulkRequests * o.bulkSize),
		rate: float64(o.bulkRequests*o.bulkSize) / elapsed.Seconds(),
		p50:  percentile(latencies, 50),
		p99:  percentile(latencies, 99),
	}, nil
}

func post(ctx context.Context, client *http.Client, url string, body []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	msg, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusCreated {
		return fmt.Errorf("POST /tests: %s: %.300s", resp.Status, msg)
	}
	return nil
}

// importName is the i-th name of a round's import: the same length for
// both sides (side is 'a' or 'b'), and apart, since both go into one table.
func importName(round int, side byte, i int) string {
	return fmt.Sprintf("i%d%c-%07d", round, side, i)
}

// importCopy COPYs as many names as importOurs POSTs with psql, in one
// COPY FROM STDIN. The file of names is written before the clock starts.
func (b *bench) importCopy(ctx context.Context, round int) (sample, error) {
	o := b.opts
	n := o.bulkRequests * o.bulkSize
	path := filepath.Join(b.dir, "import-"+strconv.Itoa(round)+".txt")
	var sb strings.Builder
	for i := range n {
		sb.WriteString(importName(round, 'b', i))
		sb.WriteByte('\n')
	}
	if err := os.WriteFile(path, []byte(sb.String()), 0o644); err != nil {
		return sample{}, err
	}
	f, err := os.Open(path)
	if err != nil {
		return sample{}, err
	}
	defer f.Close()
	d, err := b.runPsql(ctx, "COPY test (name) FROM STDIN", f, nil)
	if err != nil {
		return sample{}, err
	}
	return sample{rate: float64(n) / d.Seconds(), elapsed: d, ops: float64(n)}, nil
}

// exportOurs reads the whole table as accept, in coding ("" for none),
// decompressing as it reads, and checks that every row came (extra is the
// header line of CSV) and how many bytes the body took on the wire.
func (b *bench) exportOurs(ctx context.Context, accept, coding string, extra int) (sample, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, b.exportBase()+"/tests", nil)
	if err != nil {
		return sample{}, err
	}
	req.Header.Set("Accept", accept)
	if coding != "" {
		req.Header.Set("Accept-Encoding", coding)
	}
	// The Go client's own gzip off: the harness counts the bytes as sent.
	client := &http.Client{Transport: &http.Transport{DisableCompression: true}}
	defer client.CloseIdleConnections()
	var lc lineCounter
	start := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		return sample{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 300))
		return sample{}, fmt.Errorf("GET /tests: %s: %s", resp.Status, msg)
	}
	if got := resp.Header.Get("Content-Encoding"); got != coding {
		return sample{}, fmt.Errorf("GET /tests (%s): Content-Encoding %q, want %q", accept, got, coding)
	}
	wire := &countingReader{r: resp.Body}
	body, err := decompressor(coding, wire)
	if err == nil {
		_, err = io.Copy(&lc, body)
	}
	if err != nil {
		return sample{}, fmt.Errorf("GET /tests (%s, %s): %w", accept, coding, err)
	}
	d := time.Since(start)
	if want := int64(b.opts.exportRows + extra); lc.lines != want {
		return sample{}, fmt.Errorf("GET /tests (%s): %d lines, want %d", accept, lc.lines, want)
	}
	return sample{rate: float64(b.opts.exportRows) / d.Seconds(), elapsed: d, ops: float64(b.opts.exportRows), wire: wire.n}, nil
}

// decompressor reads r decoded from coding ("" for none).
func decompressor(coding string, r io.Reader) (io.Reader, error) {
	switch coding {
	case "":
		return r, nil
	case "gzip":
		return gzip.NewReader(r)
	case "zstd":
		return zstd.NewReader(r)
	}
	return nil, fmt.Errorf("unknown coding %q", coding)
}

// countingReader counts the bytes read through it.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// exportCopy is the database's own export with psql, read to the end here
// as exportOurs reads the HTTP response.
func (b *bench) exportCopy(ctx context.Context, _ int) (sample, error) {
	var lc lineCounter
	d, err := b.runPsql(ctx, "COPY (SELECT id, name FROM test ORDER BY id) TO STDOUT", nil, &lc)
	if err != nil {
		return sample{}, err
	}
	if want := int64(b.opts.exportRows); lc.lines != want {
		return sample{}, fmt.Errorf("COPY TO STDOUT: %d lines, want %d", lc.lines, want)
	}
	return sample{rate: float64(b.opts.exportRows) / d.Seconds(), elapsed: d, ops: float64(b.opts.exportRows)}, nil
}
