package store

import (
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// How many group-commit flights may run at once, found by trying.
//
// Whether a second flight helps depends on what a batch's time is made of,
// and nothing a flight can time tells the two apart. When the database's
// work takes the time (its CPU, or a machine it shares with everything
// else, as on loopback), another flight runs beside the first and each
// batch takes as long as before: the rows per second stay, and every extra
// statement and commit costs CPU. When the answer's way back takes the time
// (a network, or a consensus round, as on YugabyteDB), a create that just
// missed a flight waits a whole round trip before its own is sent; another
// flight takes it at once, and the rows per second rise. So the control
// measures the one thing that matters, the rows committed per second, in
// epochs, and every few epochs tries twice (or half) the flights for one
// epoch, then goes back for one: the trial is compared with the mean of
// the epochs on either side, so that a load that is rising or falling
// anyway does not pass for the trial's effect. More flights are kept only
// if they gained clearly, twice in a row; fewer, which cost less, unless
// they lost. After a trial that was kept, the next one goes the same way
// at once. It starts at one flight, and only epochs in which creates
// waited for a busy flight count (with no load, or while load resumes, the
// number of flights is not what anyone waits for); a lone create never
// waits for any of it.
const (
	// An epoch is at least this many batches and this long: enough for
	// its rate to mean something, short enough to follow the load.
	epochBatches = 32
	epochMin     = 200 * time.Millisecond
	// holdEpochs epochs at one number between trials.
	holdEpochs = 4
	// More flights are kept if the trial's rate was more than gainUp
	// times its neighbours'; fewer unless it was less than lossDown times.
	gainUp   = 1.05
	lossDown = 0.97
	// More flights are kept only after upWins trials in a row gained: on a
	// busy machine one epoch's rate can be off by more than gainUp, and a
	// wrong doubling costs CPU on every create until a trial undoes it.
	upWins = 2
)

// startFlights is the number of flights a store starts with.
const startFlights = 1

// maxCreateFlights is the most flights a store on pool may run: half its
// connections, so that creates never take the connections reads need.
func maxCreateFlights(pool *pgxpool.Pool) int {
	return max(startFlights, int(pool.Config().MaxConns)/2)
}

// trial phases of flightControl.
const (
	holding = iota // at allowed, counting epochs until the next trial
	trying         // this epoch runs the candidate
	after          // back at from for one epoch, to compare
)

// flightControl is the number of flights that may run, and what it has
// measured. The batcher's mutex guards it.
type flightControl struct {
	allowed int // flights that may run: 1 to the batcher's maxFlights

	epoch   int       // numbers the epochs: a batch counts in the epoch it was sent in
	start   time.Time // of this epoch
	batches int       // of this epoch that have been answered
	rows    int
	loaded  bool // a create found every allowed flight busy in this epoch
	idle    bool // a create found no flight running in this epoch

	phase     int
	held      int     // epochs counted at allowed while holding
	from      int     // the number before the trial
	candidate int     // the number tried
	before    float64 // rows per second in the epoch before the trial
	trial     float64 // and in the trial's
	down      bool    // the next trial halves rather than doubles
	wins      int     // trials of more flights in a row that gained, not yet enough
}

func newFlightControl(now time.Time) flightControl {
	return flightControl{allowed: startFlights, start: now}
}

// queued records what a create found as it queued: how many flights were
// running.
func (c *flightControl) queued(flights int) {
	switch {
	case flights == 0:
		c.idle = true
	case flights >= c.allowed:
		c.loaded = true
	}
}

// observe counts a batch of rows sent in epoch that committed at now, and
// at the end of an epoch moves the trial on. It reports whether allowed grew.
func (c *flightControl) observe(epoch, rows int, now time.Time, maxFlights int) bool {
	if epoch != c.epoch {
		return false // sent under another number of flights
	}
	c.batches++
	c.rows += rows
	elapsed := now.Sub(c.start)
	if c.batches < epochBatches || elapsed < epochMin {
		return false
	}
	rate := float64(c.rows) / elapsed.Seconds()
	counts := c.loaded && !c.idle
	c.epoch++
	c.start, c.batches, c.rows, c.loaded, c.idle = now, 0, 0, false, false
	if !counts {
		return false // this phase's epoch again
	}
	before := c.allowed
	switch c.phase {
	case holding:
		if c.held++; c.held < holdEpochs {
			break
		}
		next := c.step(maxFlights)
		if next == c.allowed { // at a bound: the other way
			c.down = !c.down
			next = c.step(maxFlights)
		}
		if next != c.allowed {
			c.from, c.candidate, c.before = c.allowed, next, rate
			c.allowed, c.phase = next, trying
		}
	case trying:
		c.trial, c.allowed, c.phase = rate, c.from, after
	case after:
		base := (c.before + rate) / 2
		kept := c.trial > base*gainUp
		if c.candidate < c.from {
			kept = c.trial >= base*lossDown
		}
		c.phase = holding
		switch {
		case !kept:
			c.held, c.down, c.wins = 0, !c.down, 0 // the other way next time
		case c.candidate > c.from && c.wins+1 < upWins:
			// Not yet: the same trial again after one epoch.
			c.wins++
			c.held = holdEpochs - 1
		default:
			// Go on the same way after one epoch here.
			c.allowed, c.held, c.wins = c.candidate, holdEpochs-1, 0
		}
	}
	return c.allowed > before
}

// step is the number of flights the next trial tries: twice or half the
// current one, within 1 and maxFlights.
func (c *flightControl) step(maxFlights int) int {
	if c.down {
		return max(1, c.allowed/2)
	}
	return min(maxFlights, c.allowed*2)
}
