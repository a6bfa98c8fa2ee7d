package store

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// The change feed. One instance at a time (the one holding the replication
// slot, see consume.go) records every committed change to table test in
// table test_changes, in commit order, numbering them with seq; every
// instance serves feeds from that table. A feed is the rows of a snapshot
// (FeedSnapshot) followed by the changes after it, or, resumed from a
// cursor (a seq), the changes after the cursor.

// Kinds of change a feed delivers.
const (
	KindCreate   = "create"   // a row was inserted
	KindRename   = "rename"   // a row's name was updated
	KindDelete   = "delete"   // a row was deleted (only ID is set)
	KindTruncate = "truncate" // the table was truncated (no ID)
)

// Change is one committed change to table test.
type Change struct {
	Seq       int64  // position in commit order: the feed's cursor
	CommitLSN uint64 // the commit LSN of its transaction
	Xid       uint32 // its transaction's id
	Kind      string // KindCreate, KindRename, KindDelete or KindTruncate
	Row       Test   // the row after the change (ID only for a delete)
}

// ErrCursorGone means a feed cursor is older than the oldest change kept:
// the changes after it were purged (FEED_RETENTION) or never recorded
// (the replication slot was lost). The client must read the table again.
var ErrCursorGone = errors.New("feed cursor older than the changes kept")

// ErrCursorUnknown means a feed cursor is beyond any change recorded: it
// did not come from this database's feed.
var ErrCursorUnknown = errors.New("feed cursor beyond the last change")

// ErrFeedNotReady means no consumer has created the replication slot yet,
// so changes are not being recorded and a feed could miss them.
var ErrFeedNotReady = fmt.Errorf("%w: the change feed is not recording yet", ErrUnavailable)

// FeedState is how far the feed's recording has got.
type FeedState struct {
	LastSeq int64 // the highest seq recorded
	// Floor is the oldest valid cursor: the changes after it are all
	// kept. A cursor below it is ErrCursorGone.
	Floor     int64
	SlotReady bool // a consumer has created the slot: changes are recorded
}

// Check reports whether cursor can be resumed from: ErrCursorGone below
// the floor, ErrCursorUnknown above the last change.
func (f FeedState) Check(cursor int64) error {
	switch {
	case cursor < f.Floor:
		return ErrCursorGone
	case cursor > f.LastSeq:
		return ErrCursorUnknown
	}
	return nil
}

const feedStateSQL = `
SELECT last_seq, floor, slot_ready
FROM test_changes_state
WHERE id = 1`

// FeedState reads the feed's state.
func (s *Store) FeedState(ctx context.Context) (FeedState, error) {
	if !s.ready.Load() {
		return FeedState{}, errNotMigrated
	}
	var f FeedState
	err := retry(ctx, func() error {
		return s.pool.QueryRow(ctx, feedStateSQL).Scan(&f.LastSeq, &f.Floor, &f.SlotReady)
	})
	if err != nil {
		return f, fmt.Errorf("feed state: %w", s.classify(err))
	}
	return f, nil
}

// ChangesAfter returns up to limit changes with a seq above cursor, in
// seq order, and the floor in the same statement's snapshot: when the
// floor is above cursor the changes right after it are gone, and the
// answer is ErrCursorGone instead of a page with a hole in it.
func (s *Store) ChangesAfter(ctx context.Context, cursor int64, limit int) ([]Change, error) {
	if !s.ready.Load() {
		return nil, errNotMigrated
	}
	const q = `
SELECT st.floor, c.seq, c.commit_lsn, c.xid, c.kind, c.id, c.name
FROM test_changes_state st
LEFT JOIN LATERAL (
    SELECT seq, commit_lsn, xid, kind, id, name
    FROM test_changes
    WHERE seq > $1
    ORDER BY seq
    LIMIT $2) c ON true
WHERE st.id = 1`
	var floor int64
	var cs []Change
	err := retry(ctx, func() error {
		rows, err := s.pool.Query(ctx, q, cursor, limit)
		if err != nil {
			return err
		}
		cs = cs[:0]
		for rows.Next() {
			var seq *int64
			var lsn, xid *int64
			var kind *string
			var id *int32
			var name *string
			if err := rows.Scan(&floor, &seq, &lsn, &xid, &kind, &id, &name); err != nil {
				rows.Close()
				return err
			}
			if seq == nil {
				continue // no change after cursor: the join's one empty row
			}
			c := Change{Seq: *seq, CommitLSN: uint64(*lsn), Xid: uint32(*xid), Kind: *kind}
			if id != nil {
				c.Row.ID = *id
			}
			if name != nil {
				c.Row.Name = *name
			}
			cs = append(cs, c)
		}
		return rows.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("read changes: %w", s.classify(err))
	}
	if floor > cursor {
		return nil, ErrCursorGone
	}
	return cs, nil
}

// Snapshot is what a feed needs to go on from the rows it read: the feed's
// state as of the read, and which transactions the read saw, so that the
// changes recorded after Head that it already holds are not delivered twice.
type Snapshot struct {
	Head FeedState // the feed's state in the read's snapshot
	// exact is false where the database gives no snapshot to compare
	// (YugabyteDB): then Seen is always false.
	exact      bool
	xmin, xmax uint64          // the snapshot's bounds (64-bit xids)
	xip        map[uint64]bool // transactions in progress at the snapshot
	lsn        uint64          // WAL insert position after the snapshot was taken
}

// Exact reports whether Seen tells the transactions the read saw; without
// it a change committed while the read began may be delivered after a row
// that already shows it.
func (sn Snapshot) Exact() bool { return sn.exact }

// Seen reports whether the snapshot's read already saw c's transaction. A
// transaction is visible to the snapshot if it committed before it: an xid
// below xmin, or below xmax and not in progress. Only transactions whose
// commit record precedes the snapshot's WAL position can be; for any later
// one (and every change after it in seq order) Seen is false.
func (sn Snapshot) Seen(c Change) bool {
	if !sn.exact || c.CommitLSN >= sn.lsn {
		return false
	}
	// Widen the 32-bit xid of the replication stream to the snapshot's
	// 64-bit xids: it lies within 2^31 of xmax.
	x := uint64(int64(sn.xmax) + int64(int32(c.Xid-uint32(sn.xmax))))
	switch {
	case x < sn.xmin:
		return true
	case x >= sn.xmax:
		return false
	}
	return !sn.xip[x]
}

// Past reports whether c committed after everything the snapshot saw, so
// that from c on no change needs Seen: its seq is then a cursor that
// resumes exactly.
func (sn Snapshot) Past(c Change) bool { return !sn.exact || c.CommitLSN >= sn.lsn }

// FeedSnapshot reads the rows of table test with an id above after, in
// id order, calling fn for each, in one REPEATABLE READ transaction, and
// returns the feed's state and the snapshot of that read. It answers
// ErrFeedNotReady while no slot records the changes: a feed started then
// could miss those committed before the slot exists.
func (s *Store) FeedSnapshot(ctx context.Context, after int64, fn func(Test) error) (Snapshot, error) {
	if !s.ready.Load() {
		return Snapshot{}, errNotMigrated
	}
	var sn Snapshot
	var fnErr error
	err := retry(ctx, func() error {
		conn, err := s.pool.Acquire(ctx)
		if err != nil {
			return err
		}
		defer conn.Release()
		exact := s.dialectOf(conn.Conn()) != YugabyteDB
		tx, err := conn.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
		if err != nil {
			return err
		}
		defer tx.Rollback(context.WithoutCancel(ctx))
		sn = Snapshot{exact: exact}
		// The first statement takes the transaction's snapshot; the WAL
		// position is read after it, so every transaction the snapshot
		// sees has its commit record before that position.
		if exact {
			const q = `
SELECT pg_current_snapshot()::text, pg_current_wal_insert_lsn()::text, last_seq, floor, slot_ready
FROM test_changes_state
WHERE id = 1`
			var snap, lsn string
			if err := tx.QueryRow(ctx, q).Scan(&snap, &lsn, &sn.Head.LastSeq, &sn.Head.Floor, &sn.Head.SlotReady); err != nil {
				return err
			}
			if err := sn.parse(snap, lsn); err != nil {
				return final{err}
			}
		} else if err := tx.QueryRow(ctx, feedStateSQL).Scan(&sn.Head.LastSeq, &sn.Head.Floor, &sn.Head.SlotReady); err != nil {
			return err
		}
		if !sn.Head.SlotReady {
			return final{ErrFeedNotReady}
		}
		const q = `
SELECT ` + testColumns + `
FROM test
WHERE id > $1
ORDER BY id`
		rows, err := tx.Query(ctx, q, min(max(after, 0), math.MaxInt32))
		if err != nil {
			return err
		}
		if fnErr, err = deliver(rows, fn); fnErr != nil {
			return final{fnErr}
		}
		return err
	})
	if fnErr != nil && errors.Is(err, fnErr) || errors.Is(err, ErrFeedNotReady) {
		return sn, errors.Unwrap(err)
	}
	if err != nil {
		return sn, fmt.Errorf("feed snapshot: %w", s.classify(err))
	}
	return sn, nil
}

// parse reads pg_current_snapshot's text ("xmin:xmax:xip,...") and a
// pg_lsn ("16/B374D848").
func (sn *Snapshot) parse(snap, lsn string) error {
	parts := strings.Split(snap, ":")
	if len(parts) != 3 {
		return fmt.Errorf("snapshot %q is not xmin:xmax:xip", snap)
	}
	var err error
	if sn.xmin, err = strconv.ParseUint(parts[0], 10, 64); err != nil {
		return fmt.Errorf("snapshot %q: %w", snap, err)
	}
	if sn.xmax, err = strconv.ParseUint(parts[1], 10, 64); err != nil {
		return fmt.Errorf("snapshot %q: %w", snap, err)
	}
	sn.xip = map[uint64]bool{}
	for _, x := range strings.Split(parts[2], ",") {
		if x == "" {
			continue
		}
		n, err := strconv.ParseUint(x, 10, 64)
		if err != nil {
			return fmt.Errorf("snapshot %q: %w", snap, err)
		}
		sn.xip[n] = true
	}
	sn.lsn, err = parseLSN(lsn)
	return err
}

// parseLSN reads a pg_lsn's text, two hexadecimal halves.
func parseLSN(s string) (uint64, error) {
	hi, lo, ok := strings.Cut(s, "/")
	h, err1 := strconv.ParseUint(hi, 16, 32)
	l, err2 := strconv.ParseUint(lo, 16, 32)
	if !ok || err1 != nil || err2 != nil {
		return 0, fmt.Errorf("LSN %q is not hi/lo in hexadecimal", s)
	}
	return h<<32 | l, nil
}

// purgeChangesBatch is how many changes PurgeChanges deletes per statement.
const purgeChangesBatch = 1000

// PurgeChanges deletes the changes committed more than retention ago,
// oldest first, purgeChangesBatch per statement (as PurgeKeys, so that no
// transaction spans the table), and returns how many it deleted. Each
// statement raises the floor to the highest seq it deleted, in the same
// transaction: a reader sees either the changes or a floor that says they
// are gone, never a hole.
func (s *Store) PurgeChanges(ctx context.Context, retention time.Duration) (int64, error) {
	if !s.ready.Load() {
		return 0, errNotMigrated
	}
	const q = `
WITH gone AS (
    DELETE FROM test_changes
    WHERE seq IN (
        SELECT seq
        FROM test_changes
        WHERE committed_at < now() - make_interval(secs => $1)
        ORDER BY seq
        LIMIT $2)
    RETURNING seq),
raised AS (
    UPDATE test_changes_state
    SET floor = greatest(floor, (SELECT max(seq) FROM gone))
    WHERE id = 1
      AND EXISTS (SELECT 1 FROM gone))
SELECT count(*) FROM gone`
	var deleted int64
	for {
		var n int64
		if err := s.pool.QueryRow(ctx, q, retention.Seconds(), purgeChangesBatch).Scan(&n); err != nil {
			return deleted, fmt.Errorf("purge changes: %w", s.classify(err))
		}
		deleted += n
		if n < purgeChangesBatch {
			return deleted, nil
		}
	}
}

// SlotStatus is what the database says of the feed's replication slot.
type SlotStatus struct {
	Exists   bool
	Active   bool   // a consumer is streaming it
	WALState string // pg_replication_slots.wal_status: reserved, extended, unreserved, lost ("" where unknown)
	// LagBytes is how much WAL the slot holds back: from the slot's
	// confirmed position to the current one (-1 where unknown).
	LagBytes int64
}

// Slot reads the status of replication slot name. The lag is read by a
// statement of its own, and left -1 when it fails: YugabyteDB's slots
// have no WAL position to subtract (its pg_current_wal_lsn is not
// PostgreSQL's), and the consumer must not depend on it.
func (s *Store) Slot(ctx context.Context, name string) (SlotStatus, error) {
	// to_jsonb: wal_status is PostgreSQL 13+, and YugabyteDB's view has
	// columns of its own; a missing one reads as null instead of failing.
	const q = `
SELECT active,
       coalesce(to_jsonb(s) ->> 'wal_status', '')
FROM pg_replication_slots s
WHERE slot_name = $1`
	st := SlotStatus{LagBytes: -1}
	err := s.pool.QueryRow(ctx, q, name).Scan(&st.Active, &st.WALState)
	if errors.Is(err, pgx.ErrNoRows) {
		return st, nil
	}
	if err != nil {
		return st, fmt.Errorf("replication slot status: %w", s.classify(err))
	}
	st.Exists = true
	const lag = `
SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint
FROM pg_replication_slots
WHERE slot_name = $1
  AND confirmed_flush_lsn IS NOT NULL`
	var n int64
	if err := s.pool.QueryRow(ctx, lag, name).Scan(&n); err == nil {
		st.LagBytes = n
	}
	return st, nil
}

// LogicalWAL reports whether the database can feed changes: wal_level is
// logical on PostgreSQL. YugabyteDB has no wal_level that says it; there
// the feed is turned on by FEED=on.
func (s *Store) LogicalWAL(ctx context.Context) (bool, error) {
	var level string
	if err := s.pool.QueryRow(ctx, `SELECT current_setting('wal_level', true)`).Scan(&level); err != nil {
		return false, fmt.Errorf("read wal_level: %w", s.classify(err))
	}
	return level == "logical", nil
}
