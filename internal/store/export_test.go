package store

// Group-commit internals for the tests in package store_test.
const (
	MaxBatchSize = maxBatchSize
	MaxFlights   = maxFlights
)

// Queued returns how many creates wait in the queue, not yet taken into a batch.
func (s *Store) Queued() int {
	s.creates.mu.Lock()
	defer s.creates.mu.Unlock()
	return len(s.creates.queue)
}

// CollectCreated is collectCreated, for a test of rows out of input order.
var CollectCreated = collectCreated
