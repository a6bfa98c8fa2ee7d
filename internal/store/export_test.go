package store

import (
	"context"
	"math"
)

// Group-commit internals for the tests in package store_test.
const (
	MaxBatchSize = maxBatchSize
	StartFlights = startFlights
)

// AllowFlights lets n flights run from now on and stops the flight control
// from trying any other number, for tests of several flights at once.
func (s *Store) AllowFlights(n int) {
	s.creates.mu.Lock()
	defer s.creates.mu.Unlock()
	s.creates.ctl.allowed = n
	s.creates.ctl.phase = holding
	s.creates.ctl.held = math.MinInt / 2 // never reaches holdEpochs
}

// KeptFlights is the number of flights the flight control has settled on:
// during a trial, the number it will go back to.
func (s *Store) KeptFlights() int {
	s.creates.mu.Lock()
	defer s.creates.mu.Unlock()
	if s.creates.ctl.phase == trying {
		return s.creates.ctl.from
	}
	return s.creates.ctl.allowed
}

// MaxCreateFlights is the most flights the store may run.
func (s *Store) MaxCreateFlights() int { return s.creates.maxFlights }

// Queued returns how many creates wait in the queue, not yet taken into a batch.
func (s *Store) Queued() int {
	s.creates.mu.Lock()
	defer s.creates.mu.Unlock()
	return len(s.creates.queue)
}

// PageReadFunc is the query List's coalescing runs.
type PageReadFunc = func(ctx context.Context, after int64, limit int) ([]Test, error)

// WrapPageRead wraps that query, for tests that hold or watch it.
func (s *Store) WrapPageRead(wrap func(next PageReadFunc) PageReadFunc) {
	s.pages.read = wrap(s.pages.read)
}

// PageWaiting returns how many Lists of the page wait for its next query.
func (s *Store) PageWaiting(after int64, limit int) int {
	s.pages.mu.Lock()
	defer s.pages.mu.Unlock()
	if f := s.pages.flights[pageKey{after, limit}]; f != nil && f.next != nil {
		return int(f.next.waiting.Load())
	}
	return 0
}

// CollectCreated is collectCreated, for a test of rows out of input order.
var CollectCreated = collectCreated

// PageFlights returns how many pages have a query running.
func (s *Store) PageFlights() int {
	s.pages.mu.Lock()
	defer s.pages.mu.Unlock()
	return len(s.pages.flights)
}
