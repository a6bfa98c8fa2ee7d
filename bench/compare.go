package main

import (
	"context"
	"fmt"
	"strings"
)

// compare runs only ours of the workload, round-robin against one server
// per variant of the server's environment, so that every variant meets
// the shared machine's changing load alike. It is how the settings were
// chosen (BENCHMARKS.md): a variant is "" (the defaults) or NAME=VALUE
// pairs separated by spaces.
func (b *bench) compare(ctx context.Context, w workload, variants []string) error {
	servers := make([]*server, len(variants))
	for i, v := range variants {
		env := append(append([]string{}, b.opts.serverEnv...), strings.Fields(v)...)
		srv, err := startServer(ctx, b.bin, b.dir, b.dbURL, false, env)
		if err != nil {
			return fmt.Errorf("variant %q: %w", v, err)
		}
		defer srv.stop()
		servers[i] = srv
	}
	fmt.Printf("\n== compare %s: ours only, variants round-robin\n   ours: %s\n", w.name, w.ours)
	if err := b.db.reload(ctx, w.rows); err != nil {
		return err
	}
	rates := make([][]float64, len(variants))
	cpus := make([][]float64, len(variants))
	for round := 0; round <= b.opts.rounds; round++ { // round 0 warms every server up
		for i, srv := range servers {
			b.srv = srv
			// Every variant's run gets its own number: runs that create rows
			// name them after it.
			s, err := b.measure(ctx, w.a, round*len(servers)+i)
			if err != nil {
				return fmt.Errorf("variant %q: %w", variants[i], err)
			}
			if round == 0 {
				continue
			}
			rates[i] = append(rates[i], s.rate)
			cpus[i] = append(cpus[i], float64(s.cpu.server.Nanoseconds())/1e3/s.ops)
			fmt.Printf("   round %d %-30q %s %s (%s) %s\n", round, variants[i], fmtRate(s.rate), w.unit,
				fmtLatency(s), fmtCPU(s.cpu, s.ops, true))
			if s.note != "" {
				fmt.Printf("   %39s %s\n", "", s.note)
			}
		}
	}
	for i, v := range variants {
		fmt.Printf("   median %-30q %s %s, server %.3g µs/op\n", v, fmtRate(median(rates[i])), w.unit, median(cpus[i]))
	}
	return nil
}
