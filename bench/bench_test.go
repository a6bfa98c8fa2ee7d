package main

import (
	"os"
	"slices"
	"strings"
	"testing"
	"time"
)

const pgbenchOutput = `pgbench (15.18 (Debian 15.18-0+deb12u1))
transaction type: c.sql
scaling factor: 1
query mode: prepared
number of clients: 2
number of threads: 1
maximum number of tries: 1
duration: 1 s
number of transactions actually processed: 14150
number of failed transactions: 0 (0.000%)
latency average = 0.140 ms
initial connection time = 8.328 ms
tps = 14265.622873 (without initial connection time)
`

func TestParsePgbench(t *testing.T) {
	s, err := parsePgbench([]byte(pgbenchOutput))
	if err != nil {
		t.Fatal(err)
	}
	if s.rate != 14265.622873 || s.ops != 14150 || s.avg != 140*time.Microsecond {
		t.Errorf("got rate %v, ops %v, avg %v; want 14265.622873, 14150, 140µs", s.rate, s.ops, s.avg)
	}
	failed := strings.Replace(pgbenchOutput, "failed transactions: 0", "failed transactions: 3", 1)
	if _, err := parsePgbench([]byte(failed)); err == nil {
		t.Error("failed transactions were not an error")
	}
	if _, err := parsePgbench([]byte("pgbench: error: connection refused\n")); err == nil {
		t.Error("output without results was not an error")
	}
}

func TestParseWrk(t *testing.T) {
	out := "Running 1s test @ http://127.0.0.1:1/tests\n" +
		`BENCH {"requests":2000,"duration_us":1000000,"p50_us":1500,"p99_us":9000,` +
		`"connect_errors":0,"read_errors":0,"write_errors":0,"status_errors":1,"timeouts":0}` + "\n"
	r, err := parseWrk([]byte(out))
	if err != nil {
		t.Fatal(err)
	}
	if r.Requests != 2000 || r.DurationUS != 1e6 || r.P50US != 1500 || r.P99US != 9000 || r.StatusErrors != 1 {
		t.Errorf("parsed %+v", r)
	}
	if _, err := parseWrk([]byte("unable to connect to 127.0.0.1:1 Connection refused\n")); err == nil {
		t.Error("output without the report line was not an error")
	}
}

func TestMedianPercentile(t *testing.T) {
	xs := []float64{3, 1, 2}
	if got := median(xs); got != 2 {
		t.Errorf("median(3,1,2) = %v", got)
	}
	if xs[0] != 3 {
		t.Error("median sorted its argument")
	}
	if got := median([]float64{4, 1, 3, 2}); got != 2.5 {
		t.Errorf("median(4,1,3,2) = %v", got)
	}
	var ds []time.Duration
	for i := 100; i >= 1; i-- {
		ds = append(ds, time.Duration(i))
	}
	if p50, p99, p100 := percentile(ds, 50), percentile(ds, 99), percentile(ds, 100); p50 != 50 || p99 != 99 || p100 != 100 {
		t.Errorf("percentiles of 1..100: p50 %d, p99 %d, p100 %d", p50, p99, p100)
	}
}

func TestParseFlags(t *testing.T) {
	o, err := parseFlags([]string{"-smoke", "-only", "page, export-csv"})
	if err != nil {
		t.Fatal(err)
	}
	if o.rounds != 1 || o.duration != time.Second || !o.only["page"] || !o.only["export-csv"] || len(o.only) != 2 ||
		!slices.Equal(o.latencies, []time.Duration{0, time.Millisecond}) {
		t.Errorf("smoke options: %+v", o)
	}
	o, err = parseFlags([]string{"-db-latency", "0, 2ms,5ms"})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(o.latencies, []time.Duration{0, 2 * time.Millisecond, 5 * time.Millisecond}) ||
		o.jitterFor(2*time.Millisecond) != time.Millisecond || o.jitterFor(5*time.Millisecond) != 2*time.Millisecond {
		t.Errorf("-db-latency 0,2ms,5ms: latencies %v, jitter at 2ms %v, at 5ms %v", o.latencies,
			o.jitterFor(2*time.Millisecond), o.jitterFor(5*time.Millisecond))
	}
	for _, bad := range [][]string{
		{"-only", "paging"},
		{"-db-latency", "1.5ms"},
		{"-db-latency", "2ms,-1ms"},
		{"-db-jitter", "500us"},
		{"-compare", "A=1;A=2", "-only", "create", "-db-latency", "0,2ms"},
		{"-duration", "1500ms"},
		{"-rounds", "0"},
		{"-clients", "1", "-threads", "2"},
		{"-server-env", "DB_MAX_CONNS"},
		{"extra"},
	} {
		if _, err := parseFlags(bad); err == nil {
			t.Errorf("parseFlags(%q) succeeded", bad)
		}
	}
}

func TestImportNamesSameLength(t *testing.T) {
	a, b := importName(3, 'a', 99999), importName(3, 'b', 99999)
	if len(a) != len(b) || a == b {
		t.Errorf("import names %q and %q: want the same length, different names", a, b)
	}
}

func TestProcessCPU(t *testing.T) {
	// Burn a little CPU so the clock ticks at least once.
	deadline := time.Now().Add(50 * time.Millisecond)
	for time.Now().Before(deadline) {
	}
	d, err := processCPU(os.Getpid(), false)
	if err != nil {
		t.Fatal(err)
	}
	if d <= 0 {
		t.Errorf("own CPU time %v, want > 0", d)
	}
	if _, err := machineBusy(); err != nil {
		t.Error(err)
	}
}
