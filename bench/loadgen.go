package main

import (
	"bufio"
	"bytes"
	"context"
	"embed"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// scripts holds the wrk Lua scripts and the pgbench scripts.
//
//go:embed scripts
var scripts embed.FS

// sample is what one timed run of one side measured.
type sample struct {
	rate     float64       // operations (requests, transactions or rows) per second
	p50, p99 time.Duration // latency percentiles, where the side reports them
	avg      time.Duration // mean latency, where only that is reported (pgbench)
	elapsed  time.Duration // the time of the whole run, for runs of one operation (an import, an export)
	ops      float64       // operations done (requests, transactions, rows)
	cpu      cpuUse        // where the run's CPU time went
	note     string        // more that ours's run measured, for its round's line
	wire     int64         // bytes of the HTTP body as sent, for an export
}

// wrkReport is the line scripts/report.lua prints.
type wrkReport struct {
	Requests      int64 `json:"requests"`
	DurationUS    int64 `json:"duration_us"`
	P50US         int64 `json:"p50_us"`
	P99US         int64 `json:"p99_us"`
	ConnectErrors int64 `json:"connect_errors"`
	ReadErrors    int64 `json:"read_errors"`
	WriteErrors   int64 `json:"write_errors"`
	StatusErrors  int64 `json:"status_errors"`
	Timeouts      int64 `json:"timeouts"`
}

// runWrk runs wrk with scripts/<script>.lua (and the report) against url
// for d, passing args to the script. Any failed request (a connection
// error, a timeout, a status of 400 or more) fails the run: a fast error is
// no result.
func (b *bench) runWrk(ctx context.Context, script, url string, d time.Duration, args ...string) (sample, error) {
	path, err := b.script(script+".lua", "report.lua")
	if err != nil {
		return sample{}, err
	}
	cmdArgs := []string{
		"-t", strconv.Itoa(b.opts.threads), "-c", strconv.Itoa(b.opts.clients),
		"-d", strconv.Itoa(int(d.Seconds())) + "s", "--timeout", "10s", "-s", path, url,
	}
	if len(args) > 0 {
		cmdArgs = append(append(cmdArgs, "--"), args...)
	}
	out, err := exec.CommandContext(ctx, b.tools.wrk, cmdArgs...).CombinedOutput()
	if err != nil {
		return sample{}, fmt.Errorf("wrk: %w\n%s", err, out)
	}
	r, err := parseWrk(out)
	if err != nil {
		return sample{}, err
	}
	if n := r.ConnectErrors + r.ReadErrors + r.WriteErrors + r.StatusErrors + r.Timeouts; n > 0 || r.Requests == 0 {
		return sample{}, fmt.Errorf("wrk: %d requests, %d failed (%+v); server log:\n%s", r.Requests, n, r, b.srv.logTail(10))
	}
	return sample{
		ops:  float64(r.Requests),
		rate: float64(r.Requests) / (float64(r.DurationUS) / 1e6),
		p50:  time.Duration(r.P50US) * time.Microsecond,
		p99:  time.Duration(r.P99US) * time.Microsecond,
	}, nil
}

func parseWrk(out []byte) (wrkReport, error) {
	var r wrkReport
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if line, ok := strings.CutPrefix(sc.Text(), "BENCH "); ok {
			if err := json.Unmarshal([]byte(line), &r); err != nil {
				return r, fmt.Errorf("wrk report %q: %w", line, err)
			}
			if r.DurationUS <= 0 {
				return r, fmt.Errorf("wrk report %q: no duration", line)
			}
			return r, nil
		}
	}
	return r, fmt.Errorf("no BENCH line in wrk's output:\n%s", out)
}

// runPgbench runs pgbench with scripts/<script>.sql, prepared statements,
// the same clients and threads as wrk, for d; vars are -D name=value.
func (b *bench) runPgbench(ctx context.Context, script string, d time.Duration, vars ...string) (sample, error) {
	path, err := b.script(script + ".sql")
	if err != nil {
		return sample{}, err
	}
	args := []string{
		"-n", "-M", "prepared", "-c", strconv.Itoa(b.opts.clients), "-j", strconv.Itoa(b.opts.threads),
		"-T", strconv.Itoa(int(d.Seconds())), "-f", path,
	}
	for _, v := range vars {
		args = append(args, "-D", v)
	}
	args = append(append(args, clientArgs(b.dbPort)...), "postgres")
	out, err := exec.CommandContext(ctx, b.tools.pgbench, args...).CombinedOutput()
	if err != nil {
		return sample{}, fmt.Errorf("pgbench: %w\n%s", err, out)
	}
	return parsePgbench(out)
}

var (
	pgbenchTPS     = regexp.MustCompile(`(?m)^tps = ([0-9.]+) \(without initial connection time\)`)
	pgbenchLatency = regexp.MustCompile(`(?m)^latency average = ([0-9.]+) ms`)
	pgbenchFailed  = regexp.MustCompile(`(?m)^number of failed transactions: ([0-9]+)`)
	pgbenchDone    = regexp.MustCompile(`(?m)^number of transactions actually processed: ([0-9]+)`)
)

func parsePgbench(out []byte) (sample, error) {
	tps := pgbenchTPS.FindSubmatch(out)
	lat := pgbenchLatency.FindSubmatch(out)
	done := pgbenchDone.FindSubmatch(out)
	if tps == nil || lat == nil || done == nil {
		return sample{}, fmt.Errorf("no tps, latency or transaction count in pgbench's output:\n%s", out)
	}
	if f := pgbenchFailed.FindSubmatch(out); f != nil && string(f[1]) != "0" {
		return sample{}, fmt.Errorf("pgbench: %s failed transactions:\n%s", f[1], out)
	}
	rate, err := strconv.ParseFloat(string(tps[1]), 64)
	if err != nil || rate <= 0 {
		return sample{}, fmt.Errorf("pgbench tps %q", tps[1])
	}
	ms, err := strconv.ParseFloat(string(lat[1]), 64)
	if err != nil {
		return sample{}, fmt.Errorf("pgbench latency %q", lat[1])
	}
	n, err := strconv.ParseFloat(string(done[1]), 64)
	if err != nil || n <= 0 {
		return sample{}, fmt.Errorf("pgbench transactions %q", done[1])
	}
	return sample{rate: rate, avg: time.Duration(ms * float64(time.Millisecond)), ops: n}, nil
}

// script writes the named files of scripts/, joined, to the work directory
// and returns the path.
func (b *bench) script(names ...string) (string, error) {
	var buf bytes.Buffer
	for _, n := range names {
		s, err := scripts.ReadFile("scripts/" + n)
		if err != nil {
			return "", err
		}
		buf.Write(s)
		buf.WriteByte('\n')
	}
	path := filepath.Join(b.dir, strings.Join(names, "+"))
	return path, os.WriteFile(path, buf.Bytes(), 0o644)
}

// runPsql runs one SQL command with psql, stdin and stdout as given, and
// returns how long the whole process took: psql is what a person would run.
func (b *bench) runPsql(ctx context.Context, sql string, stdin io.Reader, stdout io.Writer) (time.Duration, error) {
	args := append(clientArgs(b.dbPort), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", "postgres", "-c", sql)
	cmd := exec.CommandContext(ctx, b.tools.psql, args...)
	var stderr bytes.Buffer
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	d := time.Since(start)
	if err != nil {
		return 0, fmt.Errorf("psql -c %q: %w\n%s", sql, err, stderr.Bytes())
	}
	return d, nil
}

// lineCounter counts the lines written to it and throws them away.
type lineCounter struct{ lines, bytes int64 }

func (c *lineCounter) Write(p []byte) (int, error) {
	c.lines += int64(bytes.Count(p, []byte{'\n'}))
	c.bytes += int64(len(p))
	return len(p), nil
}
