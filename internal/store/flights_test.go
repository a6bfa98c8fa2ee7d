package store

import (
	"math/rand/v2"
	"testing"
	"time"
)

// runControl drives a flight control through epochs of a model database
// whose rows per second at f flights is rate(f), with multiplicative noise
// of up to ±noise, and returns how many epochs it spent at each number.
func runControl(t *testing.T, rate func(f int) float64, noise float64, epochs, maxFlights int) map[int]int {
	t.Helper()
	rng := rand.New(rand.NewPCG(1, 2))
	now := time.Unix(0, 0)
	c := newFlightControl(now)
	at := map[int]int{}
	for range epochs {
		if c.allowed < 1 || c.allowed > maxFlights {
			t.Fatalf("allowed %d, want 1 to %d", c.allowed, maxFlights)
		}
		at[c.allowed]++
		r := rate(c.allowed) * (1 + noise*(2*rng.Float64()-1))
		// One epoch: epochBatches batches of equal size over epochMin.
		rows := int(r * epochMin.Seconds() / epochBatches)
		for i := range epochBatches {
			c.queued(c.allowed) // every flight busy: creates wait
			step := epochMin * time.Duration(i+1) / epochBatches
			c.observe(c.epoch, rows, now.Add(step), maxFlights)
		}
		now = now.Add(epochMin)
	}
	return at
}

// TestFlightControlLatencyBound: against a database whose answers take a
// fixed round trip, with 64 clients that each wait for a flight's turn,
// the control goes to the most flights and stays there.
func TestFlightControlLatencyBound(t *testing.T) {
	const clients, rtt = 64, 0.005
	rate := func(f int) float64 { return clients / (rtt * (1 + 1/float64(f))) }
	at := runControl(t, rate, 0.05, 400, 8)
	if at[8] < 300 {
		t.Errorf("epochs at each number of flights %v; want most at 8", at)
	}
}

// TestFlightControlCPUBound: against a database whose CPU is the limit,
// where every extra flight costs 10% of the rows per second, the control
// stays at one flight but for its trials.
func TestFlightControlCPUBound(t *testing.T) {
	rate := func(f int) float64 { return 10000 * (1 - 0.1*float64(f-1)) }
	at := runControl(t, rate, 0.05, 400, 8)
	if at[1] < 300 {
		t.Errorf("epochs at each number of flights %v; want most at 1", at)
	}
}

// TestFlightControlIdle: epochs in which no create waited for a flight, or
// one found none running, change nothing.
func TestFlightControlIdle(t *testing.T) {
	now := time.Unix(0, 0)
	c := newFlightControl(now)
	for e := range 20 {
		for range epochBatches {
			if e%2 == 0 {
				c.queued(0) // load resuming
			}
			now = now.Add(epochMin / epochBatches)
			c.observe(c.epoch, 1+e*100, now, 8) // rising fast: would pass for a gain
		}
	}
	if c.allowed != 1 || c.phase != holding || c.held != 0 {
		t.Errorf("after idle epochs: allowed %d, phase %d, held %d; want 1, holding, 0", c.allowed, c.phase, c.held)
	}
}
