package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/ybrest/testsapi/internal/dbtest"
)

// tools are the programs the benchmark runs.
type tools struct {
	wrk, pgbench, psql string
}

func findTools() (tools, error) {
	var t tools
	wrk, err := exec.LookPath("wrk")
	if err != nil {
		return t, errors.New("wrk not found on PATH; install it (apt-get install wrk)")
	}
	bin := dbtest.BinDir()
	if bin == "" {
		return t, errors.New("no PostgreSQL server binaries found; install them (apt-get install postgresql)")
	}
	t = tools{wrk: wrk, pgbench: filepath.Join(bin, "pgbench"), psql: filepath.Join(bin, "psql")}
	for _, p := range []string{t.pgbench, t.psql} {
		if _, err := os.Stat(p); err != nil {
			return t, fmt.Errorf("%s: %w (Debian's postgresql-client package has it)", p, err)
		}
	}
	return t, nil
}

// describeMachine says what the numbers were measured on.
func describeMachine(ctx context.Context, t tools) string {
	mem := "?"
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			var kb int64
			if _, err := fmt.Sscanf(line, "MemTotal: %d kB", &kb); err == nil {
				mem = fmt.Sprintf("%.1f GiB", float64(kb)/(1<<20))
			}
		}
	}
	cpu := "?"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				cpu = strings.TrimSpace(v)
				break
			}
		}
	}
	version := func(name string, args ...string) string {
		// wrk prints its version with its usage and exits 1: read the output either way.
		out, _ := exec.CommandContext(ctx, name, args...).CombinedOutput()
		first, _, _ := strings.Cut(string(out), "\n")
		if first = strings.TrimSpace(first); first == "" {
			return name + " (version unknown)"
		}
		return first
	}
	return fmt.Sprintf("%d CPUs (%s), %s RAM, %s, %s, %s", runtime.NumCPU(), cpu, mem, runtime.Version(),
		version(t.pgbench, "--version"), version(t.wrk, "--version"))
}
