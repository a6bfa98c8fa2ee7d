package main

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
)

// batchStats is what the server's /metrics said of its group-commit
// batches so far: how many, the sums of their sizes and of the flights
// running as each was sent, how many answered and the sum of their
// statements' times, and how many creates were sent and the sum of their
// waits in the queue.
type batchStats struct {
	count, sizes, flights float64
	ones                  float64 // batches of a single create
	answered, seconds     float64
	waited, waits         float64
}

// batches reads the server's batch counters, so that a create round can
// say how its creates were batched.
func (b *bench) batches(ctx context.Context) (batchStats, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, b.srv.base+"/metrics", nil)
	if err != nil {
		return batchStats{}, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return batchStats{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return batchStats{}, fmt.Errorf("GET /metrics: %s", resp.Status)
	}
	var s batchStats
	fields := map[string]*float64{
		"testsapi_create_batch_size_count":          &s.count,
		`testsapi_create_batch_size_bucket{le="1"}`: &s.ones,
		"testsapi_create_batch_size_sum":            &s.sizes,
		"testsapi_create_batch_flights_sum":         &s.flights,
		"testsapi_create_batch_seconds_count":       &s.answered,
		"testsapi_create_batch_seconds_sum":         &s.seconds,
		"testsapi_create_queue_seconds_count":       &s.waited,
		"testsapi_create_queue_seconds_sum":         &s.waits,
	}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		name, value, ok := strings.Cut(sc.Text(), " ")
		if p := fields[name]; ok && p != nil {
			if *p, err = strconv.ParseFloat(value, 64); err != nil {
				return batchStats{}, fmt.Errorf("GET /metrics: %s: %w", name, err)
			}
		}
	}
	return s, sc.Err()
}

// since describes the batches between from and s.
func (s batchStats) since(from batchStats) string {
	n := s.count - from.count
	if n <= 0 {
		return "no batches"
	}
	desc := fmt.Sprintf("%.0f batches (%.0f%% of one create), mean %.1f creates, mean %.2f flights", n, 100*(s.ones-from.ones)/n, (s.sizes-from.sizes)/n, (s.flights-from.flights)/n)
	if a := s.answered - from.answered; a > 0 {
		desc += fmt.Sprintf(", mean statement %.2f ms", (s.seconds-from.seconds)/a*1000)
	}
	if w := s.waited - from.waited; w > 0 {
		desc += fmt.Sprintf(", mean queue wait %.2f ms", (s.waits-from.waits)/w*1000)
	}
	return desc
}
