package store

import (
	"math/rand/v2"
	"testing"
	"time"
)

// drive feeds c batches of a model database, one every gap, each taking
// its round trip rtt plus up to extra more (queueing behind other work),
// for d, and returns the flights allowed at the end.
func drive(c *flightControl, now *time.Time, rng *rand.Rand, rtt, extra, gap, d time.Duration, maxFlights int) int {
	for end := now.Add(d); now.Before(end); *now = now.Add(gap) {
		took := rtt + time.Duration(rng.Int64N(int64(extra)+1))
		c.observe(took, *now, maxFlights)
	}
	return c.allowed
}

// TestFlightControl: the flights follow the floor of the batches' times,
// one per flightQuantum, within 1 and the maximum, however much longer
// most batches take, and follow a change of the round trip within two
// windows.
func TestFlightControl(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	now := time.Unix(0, 0)
	c := newFlightControl(now)
	steps := []struct {
		name       string
		rtt, extra time.Duration
		want       int
	}{
		{"database next door: an fsync", 900 * time.Microsecond, 5 * time.Millisecond, 1},
		{"2 ms each way", 5 * time.Millisecond, 10 * time.Millisecond, 3},
		{"5 ms each way", 11 * time.Millisecond, 20 * time.Millisecond, 6},
		{"20 ms each way: at the maximum", 41 * time.Millisecond, 0, 8},
		{"back next door", 900 * time.Microsecond, 30 * time.Millisecond, 1},
	}
	for _, s := range steps {
		// Long enough for the window before the change to be forgotten.
		if got := drive(&c, &now, rng, s.rtt, s.extra, 3*time.Millisecond, 2*floorWindow+time.Millisecond, 8); got != s.want {
			t.Errorf("%s (round trip %v, up to %v more): %d flights, want %d", s.name, s.rtt, s.extra, got, s.want)
		}
	}
}

// TestFlightControlSlowBatchesAlone: a window of slow batches alone (a
// database busy for a moment) does not raise the flights while the window
// before it had fast ones; after a quiet spell longer than a window, the
// floor starts afresh.
func TestFlightControlSlowBatchesAlone(t *testing.T) {
	now := time.Unix(0, 0)
	c := newFlightControl(now)
	for range 100 {
		now = now.Add(5 * time.Millisecond)
		c.observe(time.Millisecond, now, 8)
	}
	now = now.Add(floorWindow) // into the next window
	for range 100 {
		now = now.Add(5 * time.Millisecond)
		c.observe(30*time.Millisecond, now, 8)
	}
	if c.allowed != 1 {
		t.Errorf("slow batches in the window after fast ones: %d flights, want 1", c.allowed)
	}
	now = now.Add(3 * floorWindow) // nothing for a while
	c.observe(9*time.Millisecond, now, 8)
	if c.allowed != 5 {
		t.Errorf("first batch after a quiet spell took 9 ms: %d flights, want 5", c.allowed)
	}
}

// TestFlightControlFixed: a test's fixed number stays.
func TestFlightControlFixed(t *testing.T) {
	c := newFlightControl(time.Unix(0, 0))
	c.allowed, c.fixed = 4, true
	if c.observe(100*time.Millisecond, time.Unix(5, 0), 8) || c.allowed != 4 {
		t.Errorf("fixed at 4: %d", c.allowed)
	}
}
