// Command bench measures the service against the database's own limit
// (issue 4): it starts a throwaway PostgreSQL and the release build of the
// server, loads rows, and for each workload runs ours (A) and the database's
// limit (B) in alternating rounds, A B A B ..., printing the ratio of each
// round, the median ratio, our p50/p99 latency and the server's peak RSS.
//
// Load comes from other processes on loopback: wrk for HTTP and pgbench
// for the database (both C programs, 64 connections and 2 threads each by
// default), psql for COPY, and this process's HTTP client for the bulk
// import and the exports, whose requests are few and large.
//
//	go run ./bench            # the full run (make bench), a few minutes
//	go run ./bench -smoke     # one tiny round of each, for CI; asserts no timing
//	go run ./bench -only page -pprof /tmp/prof   # CPU profile of the server under the page load
//	go run ./bench -db-latency 0,2ms -only create # on loopback, then with 2ms ±1ms each way
//
// With -db-latency, every workload runs again at each latency: for a
// latency above 0 the database is behind a TCP proxy (toxiproxy, run in
// this process) that delays the data each way, and both sides (the server,
// and pgbench or psql) connect through it, so their ratio compares like
// with like. At 0 both connect to the database directly.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ybrest/testsapi/internal/dbtest"
)

// options are the command's flags.
type options struct {
	rounds          int
	duration        time.Duration
	warmup          time.Duration
	clients         int
	threads         int
	rows            int
	exportRows      int
	bulkRequests    int
	bulkSize        int
	bulkParallel    int
	only            map[string]bool
	pprofDir        string
	serverEnv       []string
	compare         []string
	smoke           bool
	clientBandwidth int64           // KB/s between the server and the export workloads' client; 0 is direct
	latencies       []time.Duration // added each way between the clients and the database; 0 is direct
	jitter          time.Duration   // plus or minus, on every latency above 0; -1: half the latency
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	opts, err := parseFlags(os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}
	if err := run(ctx, opts); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func parseFlags(args []string) (options, error) {
	var o options
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.IntVar(&o.rounds, "rounds", 3, "rounds of each workload (each round runs ours, then the limit)")
	fs.DurationVar(&o.duration, "duration", 10*time.Second, "length of one timed run of the create and page workloads (whole seconds)")
	fs.DurationVar(&o.warmup, "warmup", 3*time.Second, "untimed run of each side before the rounds of the create and page workloads (0: none)")
	fs.IntVar(&o.clients, "clients", 64, "concurrent connections of wrk and pgbench")
	fs.IntVar(&o.threads, "threads", 2, "threads of wrk and pgbench")
	fs.IntVar(&o.rows, "rows", 100_000, "rows in the table for the create, page and import workloads")
	fs.IntVar(&o.exportRows, "export-rows", 1_000_000, "rows in the table for the export workloads")
	fs.IntVar(&o.bulkRequests, "bulk-requests", 100, "POSTs of the bulk import")
	fs.IntVar(&o.bulkSize, "bulk-size", 1000, "names per bulk POST")
	fs.IntVar(&o.bulkParallel, "bulk-parallel", 4, "bulk POSTs in flight at once")
	only := fs.String("only", "", "comma-separated workloads to run ("+strings.Join(workloadKeys, ", ")+"); default all")
	fs.StringVar(&o.pprofDir, "pprof", "", "build the server with -tags pprof and write CPU profiles of its first timed round of each workload here (those numbers are not for the table)")
	compare := fs.String("compare", "", `instead of the table: ours of the one workload -only names against one server per variant, round-robin, e.g. "DB_MAX_CONNS=8;DB_MAX_CONNS=32 GOGC=200;" (variants split at ";", the empty one is the defaults)`)
	latencies := fs.String("db-latency", "0", "comma-separated latencies added each way between the database and its clients (the server, pgbench, psql) by a proxy; every workload runs at each; 0 is direct, on loopback")
	fs.DurationVar(&o.jitter, "db-jitter", -1, "plus or minus this on every -db-latency above 0 (whole milliseconds, toxiproxy's unit); default half the latency")
	fs.Int64Var(&o.clientBandwidth, "client-bandwidth", 0, "KB/s: the export workloads read through a proxy in front of the server that limits what it sends to this (a client across a slow link; 12500 is 100 Mbit/s); 0 is direct")
	smoke := fs.Bool("smoke", false, "one tiny round of everything, to check that the harness works (CI); overrides the sizes")
	fs.Func("server-env", "NAME=VALUE for the server's environment, e.g. DB_MAX_CONNS=8 (repeatable)", func(s string) error {
		if !strings.Contains(s, "=") {
			return errors.New("want NAME=VALUE")
		}
		o.serverEnv = append(o.serverEnv, s)
		return nil
	})
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	o.smoke = *smoke
	if *smoke {
		o.rounds, o.duration, o.warmup = 1, time.Second, 0
		o.clients, o.rows, o.exportRows = 8, 1000, 5000
		o.bulkRequests, o.bulkSize = 4, 100
		if !flagSet(fs, "db-latency") {
			*latencies = "0,1ms" // the proxy's path too, once
		}
	}
	for _, l := range strings.Split(*latencies, ",") {
		d, err := time.ParseDuration(strings.TrimSpace(l))
		if err != nil || d < 0 || d%time.Millisecond != 0 {
			return o, fmt.Errorf("-db-latency: %q is not a whole number of milliseconds, 0 or more", l)
		}
		o.latencies = append(o.latencies, d)
	}
	if *compare != "" {
		o.compare = strings.Split(*compare, ";")
	}
	o.only = map[string]bool{}
	for _, k := range strings.Split(*only, ",") {
		if k = strings.TrimSpace(k); k == "" {
			continue
		}
		if !isWorkloadKey(k) {
			return o, fmt.Errorf("-only: unknown workload %q (have %s)", k, strings.Join(workloadKeys, ", "))
		}
		o.only[k] = true
	}
	switch {
	case o.rounds < 1:
		return o, errors.New("-rounds must be at least 1")
	case o.duration < time.Second || o.duration%time.Second != 0:
		return o, errors.New("-duration must be whole seconds, at least 1s (pgbench -T takes seconds)")
	case o.warmup < 0 || o.warmup%time.Second != 0:
		return o, errors.New("-warmup must be whole seconds")
	case o.clients < 1 || o.threads < 1 || o.clients < o.threads:
		return o, errors.New("-clients and -threads must be at least 1, and clients at least threads")
	case len(o.compare) > 0 && len(o.only) != 1:
		return o, errors.New("-compare needs -only with one workload")
	case o.jitter != -1 && (o.jitter < 0 || o.jitter%time.Millisecond != 0):
		return o, errors.New("-db-jitter must be whole milliseconds")
	case len(o.compare) > 0 && len(o.latencies) != 1:
		return o, errors.New("-compare takes one -db-latency")
	case o.clientBandwidth < 0:
		return o, errors.New("-client-bandwidth must be 0 (direct) or more")
	case o.clientBandwidth > 0 && len(o.compare) > 0:
		return o, errors.New("-client-bandwidth does not go with -compare")
	case o.rows < 1 || o.exportRows < 1 || o.bulkRequests < 1 || o.bulkSize < 1 || o.bulkParallel < 1:
		return o, errors.New("sizes must be at least 1")
	}
	return o, nil
}

func flagSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

// jitterFor is the jitter at latency d.
func (o options) jitterFor(d time.Duration) time.Duration {
	if o.jitter >= 0 {
		return o.jitter
	}
	return (d / 2).Truncate(time.Millisecond)
}

// run sets everything up, runs the selected workloads and prints the table.
func run(ctx context.Context, o options) error {
	tools, err := findTools()
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	m := describeMachine(ctx, tools)
	fmt.Printf("machine: %s\n", m)

	fmt.Printf("database: throwaway PostgreSQL, %s\n", strings.Join(pgSettings, " "))
	db, err := startDatabase(ctx)
	if err != nil {
		return err
	}
	defer db.close()

	fmt.Printf("server: go build %s ./cmd/server (CGO_ENABLED=0)\n", strings.Join(buildFlags(o.pprofDir != ""), " "))
	bin, err := buildServer(ctx, dir, o.pprofDir != "")
	if err != nil {
		return err
	}
	b := &bench{opts: o, tools: tools, db: db, bin: bin, dir: dir}
	var proxy *dbtest.Proxy
	if slices.ContainsFunc(o.latencies, func(d time.Duration) bool { return d > 0 }) {
		if proxy, err = dbtest.StartProxy("127.0.0.1:" + db.port); err != nil {
			return err
		}
		defer proxy.Close()
		fmt.Printf("proxy: toxiproxy in this process on %s, in front of the database\n", proxy.Addr())
	}
	var levels []level
	for _, d := range o.latencies {
		lv := level{latency: d, jitter: o.jitterFor(d)}
		url, port := db.url, db.port
		if d > 0 {
			if err := proxy.Latency(lv.latency, lv.jitter); err != nil {
				return err
			}
			url, port = proxy.URL(db.url), strconv.Itoa(proxy.Port())
		}
		fmt.Printf("\n=== database: %s\n", lv)
		b.latency = d
		results, err := b.runLevel(ctx, url, port)
		if err != nil {
			return fmt.Errorf("%s: %w", lv, err)
		}
		lv.results = results
		levels = append(levels, lv)
		if proxy != nil {
			proxy.Clear()
		}
	}
	if len(o.compare) > 0 {
		return nil
	}
	fmt.Printf("\nResults (%s; %d round(s); %d clients, %d threads; Go %s):\n", m, o.rounds, o.clients, o.threads, runtime.Version())
	for _, lv := range levels {
		fmt.Printf("\nDatabase %s:\n\n", lv)
		printTable(os.Stdout, lv.results)
		printWireTable(os.Stdout, lv.results)
	}
	if len(levels) > 1 {
		fmt.Println("\nMedian ratios by database latency:")
		fmt.Println()
		printLatencyTable(os.Stdout, levels)
	}
	if o.smoke {
		fmt.Println("\n(-smoke: tiny sizes and one short round, to check that everything runs; the numbers mean nothing.)")
	}
	return nil
}

// level is one -db-latency and what its workloads measured.
type level struct {
	latency, jitter time.Duration
	results         []result
}

func (lv level) String() string {
	if lv.latency == 0 {
		return "on loopback, direct"
	}
	if lv.jitter == 0 {
		return fmt.Sprintf("through the proxy, %s each way", lv.latency)
	}
	// toxiproxy adds rand.Int63n(2*jitter) - jitter whole milliseconds:
	// never the top of the range.
	return fmt.Sprintf("through the proxy, %s ±%s each way (toxiproxy draws %s to %s)", lv.latency, lv.jitter,
		lv.latency-lv.jitter, lv.latency+lv.jitter-time.Millisecond)
}

// runLevel starts a server against url (the database, or the proxy in
// front of it), points pgbench and psql at port, and runs the selected
// workloads, or the comparison.
func (b *bench) runLevel(ctx context.Context, url, port string) ([]result, error) {
	o := b.opts
	b.dbURL, b.dbPort = url, port
	if len(o.compare) > 0 {
		for _, w := range b.workloads() {
			if o.only[w.key] {
				if err := b.compare(ctx, w, o.compare); err != nil {
					return nil, err
				}
			}
		}
		return nil, nil
	}
	srv, err := startServer(ctx, b.bin, b.dir, url, o.pprofDir != "", o.serverEnv)
	if err != nil {
		return nil, err
	}
	defer srv.stop()
	b.srv = srv
	fmt.Printf("server: pid %d on %s, environment %q\n", srv.pid(), srv.base, o.serverEnv)
	if o.clientBandwidth > 0 {
		px, err := dbtest.StartProxy(strings.TrimPrefix(srv.base, "http://"))
		if err != nil {
			return nil, err
		}
		defer func() { b.clientProxy = nil; px.Close() }()
		if err := px.Bandwidth(o.clientBandwidth); err != nil {
			return nil, err
		}
		b.clientProxy = px
		fmt.Printf("client proxy: toxiproxy on %s in front of the server, %d KB/s to the client, for the exports\n", px.Addr(), o.clientBandwidth)
	}
	var results []result
	for _, w := range b.workloads() {
		if len(o.only) > 0 && !o.only[w.key] {
			continue
		}
		r, err := b.runWorkload(ctx, w)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", w.name, err)
		}
		results = append(results, r)
	}
	return results, srv.stop()
}
