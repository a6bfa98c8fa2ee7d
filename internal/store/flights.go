package store

import (
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// How many group-commit flights may run at once: one for every
// flightQuantum of the least time a batch has taken lately.
//
// A create that arrives while every flight is busy waits for one to come
// back before its own batch is sent: with one flight and a batch that takes
// a round trip R, it waits up to R on top of its own R. When the database's
// CPU is what takes the time, that wait is the price of sharing one
// statement and one commit among many creates, and more flights would only
// make smaller batches, each with its own statement and commit. When the
// time is spent waiting for an answer to come back (a network, a
// consensus round on YugabyteDB, an fsync), the database is idle for most
// of R, and more flights hide the wait. The least time any batch took
// lately (its floor) is the part of R that no load made longer: the round
// trip itself. So the store runs floor/flightQuantum flights, rounded up:
// a create then waits about flightQuantum at most for a flight, and one on
// a database next door (a batch's floor there is an fsync, about 1 ms on
// this project's machines) runs one flight, as it did before the floor
// was measured. The floor is the least of the last one to two seconds, so
// that a network that got faster or slower is followed within two seconds.
//
// A trial-and-error control (run more flights for a while, keep them if
// the rows per second rose) came first and was dropped: on a machine as
// busy as the load it measures, one epoch's rate moves by more than the
// gain it looks for, and it stayed near one flight at 2 ms each way. The
// floor's three flights there made 1.28x the creates per second of one
// (`go run ./bench -only create -db-latency 2ms -compare`, BENCHMARKS.md).
const (
	flightQuantum = 2 * time.Millisecond
	floorWindow   = time.Second
)

// startFlights is the number of flights a store starts with.
const startFlights = 1

// maxCreateFlights is the most flights a store on pool may run: half its
// connections, so that creates never take the connections reads need.
func maxCreateFlights(pool *pgxpool.Pool) int {
	return max(startFlights, int(pool.Config().MaxConns)/2)
}

// flightControl is the number of flights that may run, and the batch
// times it is made from. The batcher's mutex guards it.
type flightControl struct {
	allowed int  // flights that may run: 1 to the batcher's maxFlights
	fixed   bool // allowed is set by a test, not by the floor
	floor   roundTripFloor
}

func newFlightControl(now time.Time) flightControl {
	return flightControl{allowed: startFlights, floor: newRoundTripFloor(now)}
}

// observe records that a batch answered at now took took, and sets the
// flights from the floor. It reports whether allowed grew.
func (c *flightControl) observe(took time.Duration, now time.Time, maxFlights int) bool {
	if c.fixed {
		return false
	}
	before := c.allowed
	c.allowed = flightsFor(c.floor.observe(took, now), maxFlights)
	return c.allowed > before
}

// flightsFor is the number of flights for a floor: one per flightQuantum,
// rounded up, within 1 and maxFlights.
func flightsFor(floor time.Duration, maxFlights int) int {
	return min(maxFlights, max(1, int((floor+flightQuantum-1)/flightQuantum)))
}

// roundTripFloor is the least time a statement took in this window of
// floorWindow and the one before.
type roundTripFloor struct {
	cur, prev time.Duration // the least of this window and of the one before; 0 for none
	windowEnd time.Time     // when this window ends
}

func newRoundTripFloor(now time.Time) roundTripFloor {
	return roundTripFloor{windowEnd: now.Add(floorWindow)}
}

// observe records that a statement that ended at now took took, and
// returns the floor.
func (f *roundTripFloor) observe(took time.Duration, now time.Time) time.Duration {
	if !now.Before(f.windowEnd) {
		f.prev, f.cur = f.cur, 0
		if now.Sub(f.windowEnd) >= floorWindow {
			f.prev = 0 // nothing in the whole last window: nothing recent
		}
		f.windowEnd = now.Add(floorWindow)
	}
	if f.cur == 0 || took < f.cur {
		f.cur = took
	}
	if f.prev != 0 {
		return min(f.cur, f.prev)
	}
	return f.cur
}
