package store

import (
	"context"
	"fmt"
	"math"
)

// countRows counts every row: a full scan of the primary key (on
// YugabyteDB a scan of every tablet), so callers bound it by their context.
const countRows = `SELECT count(*) FROM test`

// estimateRows is the planner's estimate of the table's rows, kept by
// ANALYZE, VACUUM and (on PostgreSQL) autovacuum: -1 on PostgreSQL 14 and
// later until the table has been analyzed or vacuumed once.
const estimateRows = `
SELECT reltuples
FROM pg_class
WHERE oid = 'test'::regclass`

// Count returns the exact number of rows.
func (s *Store) Count(ctx context.Context) (int64, error) {
	if !s.ready.Load() {
		return 0, errNotMigrated
	}
	var n int64
	if err := s.pool.QueryRow(ctx, countRows).Scan(&n); err != nil {
		return 0, fmt.Errorf("count: %w", s.classify(err))
	}
	return n, nil
}

// EstimateCount returns the database's estimate of the number of rows,
// which costs one catalog read whatever the size of the table; known is
// false when the database has none yet (the table was never analyzed or
// vacuumed).
func (s *Store) EstimateCount(ctx context.Context) (n int64, known bool, err error) {
	if !s.ready.Load() {
		return 0, false, errNotMigrated
	}
	var est float32
	if err := s.pool.QueryRow(ctx, estimateRows).Scan(&est); err != nil {
		return 0, false, fmt.Errorf("estimate count: %w", s.classify(err))
	}
	if est < 0 {
		return 0, false, nil
	}
	return int64(math.Round(float64(est))), true, nil
}
