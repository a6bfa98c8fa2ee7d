package main

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
)

// median of xs (the mean of the middle two for an even count); xs is not
// changed.
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if n := len(s); n%2 == 0 {
		return (s[n/2-1] + s[n/2]) / 2
	}
	return s[len(s)/2]
}

// percentile p (0-100) of ds by the nearest-rank method; ds is not changed.
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	rank := int(p/100*float64(len(s))+0.999999) - 1
	return s[min(max(rank, 0), len(s)-1)]
}

// column returns f of every round.
func (r result) column(f func(round) float64) []float64 {
	xs := make([]float64, len(r.rounds))
	for i, rd := range r.rounds {
		xs[i] = f(rd)
	}
	return xs
}

func (r result) medianRatio() float64 {
	return median(r.column(func(rd round) float64 { return rd.ratio }))
}

// ok says whether the median ratio meets the target and, for the exports,
// every run of ours stayed within the RSS growth bound.
func (r result) ok() bool {
	if r.medianRatio() < r.w.target {
		return false
	}
	for _, rd := range r.rounds {
		if r.w.maxGrowth > 0 && rd.growth >= r.w.maxGrowth {
			return false
		}
	}
	return true
}

func fmtRate(r float64) string {
	switch {
	case r >= 100:
		return fmt.Sprintf("%.0f", r)
	case r >= 10:
		return fmt.Sprintf("%.1f", r)
	}
	return fmt.Sprintf("%.2f", r)
}

func fmtDuration(d time.Duration) string {
	ms := float64(d) / float64(time.Millisecond)
	if ms >= 100 {
		return fmt.Sprintf("%.0f ms", ms)
	}
	return fmt.Sprintf("%.2f ms", ms)
}

// fmtLatency says what a sample knows about latency.
func fmtLatency(s sample) string {
	switch {
	case s.p99 > 0:
		return "p50 " + fmtDuration(s.p50) + ", p99 " + fmtDuration(s.p99)
	case s.avg > 0:
		return "avg " + fmtDuration(s.avg)
	case s.elapsed > 0:
		return "took " + fmtDuration(s.elapsed)
	}
	return "-"
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

// growth formats an RSS change with its sign (it can be slightly below 0
// when the heap shrank during the run).
func growth(n int64) string { return fmt.Sprintf("%+.1f MiB", float64(n)/(1<<20)) }

// printTable writes the results as the Markdown table BENCHMARKS.md keeps.
func printTable(w io.Writer, results []result) {
	fmt.Fprintln(w, "| workload | ours (median) | limit (median) | ratio per round | median ratio | target | ours p50 / p99 (median of rounds) | server peak RSS (max growth) |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|")
	for _, r := range results {
		ratios := make([]string, len(r.rounds))
		for i, rd := range r.rounds {
			ratios[i] = fmt.Sprintf("%.3f", rd.ratio)
		}
		latency := "-"
		p50 := median(r.column(func(rd round) float64 { return float64(rd.a.p50) }))
		p99 := median(r.column(func(rd round) float64 { return float64(rd.a.p99) }))
		if p99 > 0 {
			latency = fmtDuration(time.Duration(p50)) + " / " + fmtDuration(time.Duration(p99))
		} else if el := median(r.column(func(rd round) float64 { return float64(rd.a.elapsed) })); el > 0 {
			latency = "whole export " + fmtDuration(time.Duration(el))
		}
		peak := slices.Max(r.column(func(rd round) float64 { return float64(rd.peakRSS) }))
		maxGrowth := slices.Max(r.column(func(rd round) float64 { return float64(rd.growth) }))
		target := fmt.Sprintf(">= %.2f", r.w.target)
		if r.w.target == 0 {
			target = "none"
		}
		if r.w.maxGrowth > 0 {
			target += ", growth < " + mib(r.w.maxGrowth)
		}
		verdict := "met"
		if !r.ok() {
			verdict = "not met"
		}
		fmt.Fprintf(w, "| %s | %s %s | %s %s | %s | **%.3f** | %s (%s) | %s | %s (%s) |\n",
			r.w.name,
			fmtRate(median(r.column(func(rd round) float64 { return rd.a.rate }))), r.w.unit,
			fmtRate(median(r.column(func(rd round) float64 { return rd.b.rate }))), r.w.unit,
			strings.Join(ratios, ", "), r.medianRatio(), target, verdict, latency,
			mib(int64(peak)), growth(int64(maxGrowth)))
	}
}

// printWireTable writes, for the workloads that count the bytes of their
// answers (the exports), what one row cost on the wire and in the
// server's CPU, as a Markdown table; nothing when none did.
func printWireTable(w io.Writer, results []result) {
	var rs []result
	for _, r := range results {
		if r.rounds[0].a.wire > 0 {
			rs = append(rs, r)
		}
	}
	if len(rs) == 0 {
		return
	}
	fmt.Fprintln(w, "\n| workload | bytes on the wire | bytes/row | server CPU µs/row | client CPU µs/row | ours (median) | whole export | other load |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|")
	for _, r := range rs {
		med := func(f func(rd round) float64) float64 { return median(r.column(f)) }
		wire := med(func(rd round) float64 { return float64(rd.a.wire) })
		fmt.Fprintf(w, "| %s | %s | %.1f | %.3f | %.3f | %s %s | %s | %.2f cores |\n", r.w.name, mib(int64(wire)),
			wire/med(func(rd round) float64 { return rd.a.ops }),
			med(func(rd round) float64 { return float64(rd.a.cpu.server.Nanoseconds()) / 1e3 / rd.a.ops }),
			med(func(rd round) float64 { return float64(rd.a.cpu.client.Nanoseconds()) / 1e3 / rd.a.ops }),
			fmtRate(med(func(rd round) float64 { return rd.a.rate })), r.w.unit,
			fmtDuration(time.Duration(med(func(rd round) float64 { return float64(rd.a.elapsed) }))),
			med(func(rd round) float64 { return rd.a.cpu.other.Seconds() / rd.a.cpu.wall.Seconds() }))
	}
	fmt.Fprintln(w, "\n(medians of the rounds; client CPU includes decompressing, and the proxy when -client-bandwidth is set)")
}

// printLatencyTable writes the median ratio of every workload at every
// database latency, one column per latency, as a Markdown table.
func printLatencyTable(w io.Writer, levels []level) {
	head, rule := "| workload |", "|---|"
	for _, lv := range levels {
		if lv.latency == 0 {
			head += " loopback |"
		} else {
			head += fmt.Sprintf(" %s ±%s |", lv.latency, lv.jitter)
		}
		rule += "---|"
	}
	fmt.Fprintln(w, head+" target |")
	fmt.Fprintln(w, rule+"---|")
	var keys []string
	byKey := map[string]map[time.Duration]result{}
	for _, lv := range levels {
		for _, r := range lv.results {
			if byKey[r.w.key] == nil {
				byKey[r.w.key] = map[time.Duration]result{}
				keys = append(keys, r.w.key)
			}
			byKey[r.w.key][lv.latency] = r
		}
	}
	for _, k := range keys {
		var name string
		var targets []string
		line := ""
		for _, lv := range levels {
			r, ok := byKey[k][lv.latency]
			if !ok {
				line += " - |"
				continue
			}
			name = r.w.name
			t := ">= " + fmt.Sprintf("%.2f", r.w.target)
			if r.w.target == 0 {
				t = "none"
			}
			if !slices.Contains(targets, t) {
				targets = append(targets, t)
			}
			line += fmt.Sprintf(" %.3f (%s) |", r.medianRatio(), fmtRate(median(r.column(func(rd round) float64 { return rd.a.rate }))))
		}
		fmt.Fprintf(w, "| %s |%s %s |\n", name, line, strings.Join(targets, " / "))
	}
	fmt.Fprintln(w, "\n(median ratio ours/limit, and ours in its unit, per database latency each way)")
}
