package store_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/ybrest/testsapi/internal/dbtest"
	"github.com/ybrest/testsapi/internal/store"
)

// feedEnv is a store on a schema of the logical-replication server, its
// pool, and the consumer's replication settings and slot.
type feedEnv struct {
	st   *store.Store
	pool *pgxpool.Pool
	repl *pgconn.Config
	slot string
}

func mustFeedEnv(t *testing.T) *feedEnv {
	t.Helper()
	url, slot := dbtest.NewLogicalSchema(t)
	st, pool := mustStore(t, url)
	if _, _, err := st.Migrate(t.Context()); err != nil {
		t.Fatalf("migrate: %v", err)
	}
	cfg, err := pgconn.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	return &feedEnv{st: st, pool: pool, repl: cfg, slot: slot}
}

// consume runs a consumer of slot (retrying while another holds it)
// until the returned stop is called, or the test ends. It returns once
// the slot is streamed: changes committed from then on are recorded.
func (e *feedEnv) consume(t *testing.T, slot string) (stop func()) {
	t.Helper()
	started, stop := runConsumer(t, e.st, e.repl, slot, func(err error) { t.Logf("consumer: %v", err) })
	waitStreaming(t, started, slot)
	return stop
}

// runConsumer calls st.ConsumeChanges again 100 ms after each return
// until stop is called, or the test ends; stopped (if not nil) gets each
// error but ErrSlotBusy. started gets a value each time the slot is
// streamed.
func runConsumer(t *testing.T, st *store.Store, repl *pgconn.Config, slot string, stopped func(error)) (started <-chan struct{}, stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	streaming := make(chan struct{}, 1)
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			err := st.ConsumeChanges(ctx, repl, slot, func() {
				select {
				case streaming <- struct{}{}:
				default:
				}
			})
			if ctx.Err() == nil && !errors.Is(err, store.ErrSlotBusy) && stopped != nil {
				stopped(err)
			}
			select {
			case <-ctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	stop = func() {
		cancel()
		<-done
	}
	t.Cleanup(stop)
	return streaming, stop
}

// waitStreaming waits for a value of runConsumer's started.
func waitStreaming(t *testing.T, started <-chan struct{}, slot string) {
	t.Helper()
	select {
	case <-started:
	case <-time.After(20 * time.Second):
		t.Fatalf("consumer of %s not streaming within 20s", slot)
	}
}

// exec runs statements on e's pool, failing the test on an error.
func (e *feedEnv) exec(t *testing.T, sqls ...string) {
	t.Helper()
	for _, q := range sqls {
		if _, err := e.pool.Exec(t.Context(), q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
}

// mustChanges waits until at least n changes are recorded after cursor and
// returns the first 1000 recorded after it.
func (e *feedEnv) mustChanges(t *testing.T, cursor int64, n int) []store.Change {
	t.Helper()
	dbtest.WaitFor(t, "changes recorded", 20*time.Second, func() bool {
		st, err := e.st.FeedState(t.Context())
		return err == nil && st.LastSeq >= cursor+int64(n)
	})
	cs, err := e.st.ChangesAfter(t.Context(), cursor, 1000)
	if err != nil {
		t.Fatalf("ChangesAfter: %v", err)
	}
	return cs
}

type kindRow struct {
	Kind string
	Row  store.Test
}

func kindRows(cs []store.Change) []kindRow {
	var out []kindRow
	for _, c := range cs {
		out = append(out, kindRow{c.Kind, c.Row})
	}
	return out
}

// TestConsumeRecordsInCommitOrder: changes made by plain SQL are recorded
// in commit order (a row whose transaction took the lower id but committed
// last comes last), rolled-back work never, each kind with its row.
func TestConsumeRecordsInCommitOrder(t *testing.T) {
	e := mustFeedEnv(t)
	e.consume(t, e.slot)

	low, err := e.pool.Begin(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer low.Rollback(context.Background())
	if _, err := low.Exec(t.Context(), `INSERT INTO test (id, name) VALUES (1, 'low')`); err != nil {
		t.Fatal(err)
	}
	e.exec(t, `INSERT INTO test (id, name) VALUES (2, 'high')`)
	rolled, err := e.pool.Begin(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rolled.Exec(t.Context(), `INSERT INTO test (id, name) VALUES (3, 'never')`); err != nil {
		t.Fatal(err)
	}
	if err := rolled.Rollback(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := low.Commit(t.Context()); err != nil {
		t.Fatal(err)
	}
	e.exec(t,
		`UPDATE test SET name = 'higher' WHERE id = 2`,
		`UPDATE test SET id = 4 WHERE id = 1`,
		`DELETE FROM test WHERE id = 2`,
		`TRUNCATE test`)

	cs := e.mustChanges(t, 0, 7)
	want := []kindRow{
		{store.KindCreate, store.Test{ID: 2, Name: "high"}},
		{store.KindCreate, store.Test{ID: 1, Name: "low"}},
		{store.KindRename, store.Test{ID: 2, Name: "higher"}},
		{store.KindDelete, store.Test{ID: 1}},
		{store.KindCreate, store.Test{ID: 4, Name: "low"}},
		{store.KindDelete, store.Test{ID: 2}},
		{store.KindTruncate, store.Test{}},
	}
	mustRecorded(t, cs, want)
}

// mustRecorded fails unless cs are want, each once, in order, seqs 1..n.
func mustRecorded(t *testing.T, cs []store.Change, want []kindRow) {
	t.Helper()
	got := kindRows(cs)
	if len(got) != len(want) {
		t.Fatalf("recorded %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] || cs[i].Seq != int64(i+1) {
			t.Fatalf("change %d: seq %d %+v, want seq %d %+v (all: %+v)", i, cs[i].Seq, got[i], i+1, want[i], got)
		}
	}
}

// TestConsumeExactlyOnce: a consumer sent transactions it already recorded
// (a slot that was never told of them: a copy made before) skips them, and
// one that stops and starts again records what was committed meanwhile
// once.
func TestConsumeExactlyOnce(t *testing.T) {
	e := mustFeedEnv(t)
	stale := e.slot + "_copy"
	// pgoutput reads the publication as of the WAL it decodes: it must
	// exist before the copy's position.
	e.exec(t, `CREATE PUBLICATION `+stale+` FOR TABLE test`)
	stop := e.consume(t, e.slot)
	e.exec(t, `SELECT pg_copy_logical_replication_slot('`+e.slot+`', '`+stale+`')`)
	t.Cleanup(func() {
		_, _ = e.pool.Exec(context.Background(), `SELECT pg_drop_replication_slot($1)`, stale)
		_, _ = e.pool.Exec(context.Background(), `DROP PUBLICATION IF EXISTS `+stale)
	})
	e.exec(t, `INSERT INTO test (name) VALUES ('a')`, `INSERT INTO test (name) VALUES ('b')`)
	e.mustChanges(t, 0, 2)
	stop()

	e.exec(t, `INSERT INTO test (name) VALUES ('c')`) // while no consumer runs
	stop = e.consume(t, stale)                        // resends a and b, then c
	if cs := e.mustChanges(t, 0, 3); len(cs) != 3 {
		t.Fatalf("after the stale slot: %+v, want a, b and c once", cs)
	}
	stop()
	e.consume(t, e.slot) // resends c
	e.exec(t, `INSERT INTO test (name) VALUES ('d')`)
	e.mustChanges(t, 0, 4)
	time.Sleep(300 * time.Millisecond) // room for a wrong repeat to land
	cs := e.mustChanges(t, 0, 4)
	var names []string
	for i, c := range cs {
		names = append(names, c.Row.Name)
		if c.Seq != int64(i+1) {
			t.Fatalf("seqs %+v are not 1..n", cs)
		}
	}
	if got := len(names); got != 4 || names[0] != "a" || names[1] != "b" || names[2] != "c" || names[3] != "d" {
		t.Fatalf("recorded %v, want [a b c d] once each", names)
	}
}

// TestConsumeGapAfterLostSlot: a slot that is gone (dropped, or lost to
// max_slot_wal_keep_size) is made anew, and the changes it could not keep
// show as a gap: cursors before it are ErrCursorGone, never a silent skip.
func TestConsumeGapAfterLostSlot(t *testing.T) {
	e := mustFeedEnv(t)
	e.recordOne(t)
	dbtest.WaitFor(t, "slot released", 20*time.Second, func() bool {
		_, err := e.pool.Exec(t.Context(), `SELECT pg_drop_replication_slot($1)`, e.slot)
		return err == nil
	})
	e.wantGapAfterMissed(t)
}

// TestConsumeGapAfterExpiredSlot: a slot YugabyteDB says expired (its
// stream ends with "Stream ID ... is expired for Tablet ID ...", while
// pg_replication_slots still lists it as it was) is dropped and made
// anew, with a gap, as a lost one is. PostgreSQL cannot end a stream with
// that message: the test hands the consumer's handling of a stream's end
// the error YugabyteDB sends (yugabyte-db#19437 has one), then lets the
// next ConsumeChanges find the slot, still whole on PostgreSQL.
func TestConsumeGapAfterExpiredSlot(t *testing.T) {
	e := mustFeedEnv(t)
	e.recordOne(t)
	expired := &pgconn.PgError{Severity: "ERROR", Code: "XX000",
		Message: "Stream ID 82fe69ba816747e397e452c7fe029531 is expired for Tablet ID bb33b1d632d143428c95097eca91926e"}
	if err := e.st.StreamEnded(e.slot, fmt.Errorf("stream: %w", expired)); !errors.Is(err, store.ErrSlotLost) {
		t.Fatalf("a stream ended by YugabyteDB's expiry: %v, want ErrSlotLost", err)
	}
	e.wantGapAfterMissed(t)
}

// TestStreamEndedOnlyExpiry: only YugabyteDB's expiry messages make a
// stream's end ErrSlotLost; any other error is returned as it is.
func TestStreamEndedOnlyExpiry(t *testing.T) {
	st := store.New(mustPool(t, dbtest.NewSchema(t), nil))
	for _, tc := range []struct {
		err  error
		lost bool
	}{
		{&pgconn.PgError{Code: "XX000", Message: "Stream ID 1 is expired for Tablet ID 2"}, true},
		{&pgconn.PgError{Code: "XX000", Message: "CDCSDK Trying to fetch already GCed intents for transaction 4db46e4b"}, true},
		{&pgconn.PgError{Code: "XX000", Message: "Query error: Restart read required"}, false},
		{&pgconn.PgError{Code: "55006", Message: "replication slot \"s\" is active for PID 7"}, false},
		{errors.New("Stream ID 1 is expired for Tablet ID 2"), false}, // not the database's answer
		{nil, false},
	} {
		got := st.StreamEnded("s", tc.err)
		if errors.Is(got, store.ErrSlotLost) != tc.lost || (!tc.lost && got != tc.err) {
			t.Errorf("StreamEnded(%v) = %v, want lost %v", tc.err, got, tc.lost)
		}
	}
}

// recordOne has a consumer record one change, seq 1, and stops it.
func (e *feedEnv) recordOne(t *testing.T) {
	t.Helper()
	stop := e.consume(t, e.slot)
	e.exec(t, `INSERT INTO test (name) VALUES ('a')`)
	e.mustChanges(t, 0, 1)
	stop()
}

// wantGapAfterMissed commits a change while no consumer runs and the slot
// is gone or marked for making again, starts a consumer, and checks that
// the changes before are behind a gap: cursors 0 and 1 get ErrCursorGone,
// and the next change is seq 3.
func (e *feedEnv) wantGapAfterMissed(t *testing.T) {
	t.Helper()
	e.exec(t, `INSERT INTO test (name) VALUES ('missed')`)
	e.consume(t, e.slot)
	e.exec(t, `INSERT INTO test (name) VALUES ('b')`)
	st, err := e.st.FeedState(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if st.Floor != 2 {
		t.Fatalf("floor %d after the gap, want 2 (last seq 1, one step over); state %+v", st.Floor, st)
	}
	for _, cursor := range []int64{0, 1} {
		if _, err := e.st.ChangesAfter(t.Context(), cursor, 10); !errors.Is(err, store.ErrCursorGone) {
			t.Fatalf("ChangesAfter(%d) after the gap: %v, want ErrCursorGone", cursor, err)
		}
		if err := st.Check(cursor); !errors.Is(err, store.ErrCursorGone) {
			t.Fatalf("Check(%d): %v, want ErrCursorGone", cursor, err)
		}
	}
	cs := e.mustChanges(t, 2, 1)
	if len(cs) != 1 || cs[0].Row.Name != "b" || cs[0].Seq != 3 {
		t.Fatalf("after the gap: %+v, want b as seq 3", cs)
	}
}

// TestPurgeChanges: changes older than the retention go, oldest first and
// in batches, and the floor rises with them, so a cursor among them is
// ErrCursorGone; a younger change and its cursor stay.
func TestPurgeChanges(t *testing.T) {
	e := mustFeedEnv(t)
	e.consume(t, e.slot)
	const old = store.PurgeChangesBatch + 5
	e.exec(t, `INSERT INTO test (name) SELECT 'n' || g FROM generate_series(1, `+strconv.Itoa(old)+`) g`)
	e.mustChanges(t, 0, old)
	e.exec(t, `UPDATE test_changes SET committed_at = now() - interval '2 hours'`,
		`INSERT INTO test (name) VALUES ('young')`)
	e.mustChanges(t, old, 1)
	n, err := e.st.PurgeChanges(t.Context(), time.Hour)
	if err != nil || n != old {
		t.Fatalf("PurgeChanges: %d, %v; want %d", n, err, old)
	}
	if _, err := e.st.ChangesAfter(t.Context(), old-1, 10); !errors.Is(err, store.ErrCursorGone) {
		t.Fatalf("a purged cursor: %v, want ErrCursorGone", err)
	}
	cs, err := e.st.ChangesAfter(t.Context(), old, 10)
	if err != nil || len(cs) != 1 || cs[0].Row.Name != "young" {
		t.Fatalf("after the purge: %+v, %v; want young", cs, err)
	}
}

// TestSnapshotSeen: a change is seen by the snapshot if its transaction
// committed before it (below xmin, or below xmax and not in progress),
// with the replication stream's 32-bit xid widened across an epoch, and
// never once it committed at or past the snapshot's WAL position.
func TestSnapshotSeen(t *testing.T) {
	const epoch = 1 << 32
	sn, err := store.ParseSnapshot(strconv.Itoa(epoch+100)+":"+strconv.Itoa(epoch+110)+":"+strconv.Itoa(epoch+105), "1/00000100")
	if err != nil {
		t.Fatal(err)
	}
	before := uint64(1<<32 | 0x50) // a commit LSN below the snapshot's
	for _, tc := range []struct {
		xid  uint32
		lsn  uint64
		seen bool
	}{
		{100 - 1, before, true},   // below xmin
		{102, before, true},       // between, committed
		{105, before, false},      // in progress at the snapshot
		{110, before, false},      // at xmax: began after
		{1<<32 - 5, before, true}, // the previous epoch, far below xmin
		{102, 1<<32 | 0x100, false},
	} {
		c := store.Change{Xid: tc.xid, CommitLSN: tc.lsn}
		if got := sn.Seen(c); got != tc.seen {
			t.Errorf("xid %d at LSN %x: Seen %v, want %v", tc.xid, tc.lsn, got, tc.seen)
		}
		if past := sn.Past(c); past != (tc.lsn >= 1<<32|0x100) {
			t.Errorf("xid %d at LSN %x: Past %v", tc.xid, tc.lsn, past)
		}
	}
	if _, err := store.ParseSnapshot("1:2", "0/0"); err == nil {
		t.Error("a snapshot without xip parsed")
	}
}

// TestSlotStatus: the slot's status and lag as /metrics shows them: none
// before the consumer, then streamed, with a lag that is a WAL distance.
func TestSlotStatus(t *testing.T) {
	e := mustFeedEnv(t)
	st, err := e.st.Slot(t.Context(), e.slot)
	if err != nil || st.Exists || st.LagBytes != -1 {
		t.Fatalf("before the consumer: %+v, %v; want no slot, lag -1", st, err)
	}
	e.consume(t, e.slot)
	e.exec(t, `INSERT INTO test (name) VALUES ('a')`)
	e.mustChanges(t, 0, 1)
	st, err = e.st.Slot(t.Context(), e.slot)
	if err != nil || !st.Exists || !st.Active || st.WALState != "reserved" || st.LagBytes < 0 {
		t.Fatalf("streamed: %+v, %v; want active, reserved, a lag of 0 or more", st, err)
	}
}

// TestConsumeSlotMadeByAnother: a slot that exists before the consumer
// first runs (its maker stopped before it recorded that) is taken as
// recording: feeds may start.
func TestConsumeSlotMadeByAnother(t *testing.T) {
	e := mustFeedEnv(t)
	e.exec(t, `CREATE PUBLICATION `+e.slot+` FOR TABLE test`,
		`SELECT pg_create_logical_replication_slot('`+e.slot+`', 'pgoutput')`)
	e.consume(t, e.slot)
	st, err := e.st.FeedState(t.Context())
	if err != nil || !st.SlotReady || st.Floor != 0 {
		t.Fatalf("state %+v, %v; want the slot ready and no gap", st, err)
	}
	e.exec(t, `INSERT INTO test (name) VALUES ('a')`)
	if cs := e.mustChanges(t, 0, 1); cs[0].Row.Name != "a" {
		t.Fatalf("recorded %+v", cs)
	}
}

// TestConsumeSetsReplicaIdentity: a table test whose replica identity
// gives the stream no id of a deleted row (YugabyteDB's CHANGE, which
// pgoutput does not support; on PostgreSQL NOTHING, with which a published
// table refuses every UPDATE and DELETE) gets REPLICA IDENTITY DEFAULT
// before the slot is made, and its renames and deletes are recorded.
func TestConsumeSetsReplicaIdentity(t *testing.T) {
	e := mustFeedEnv(t)
	e.exec(t, `ALTER TABLE test REPLICA IDENTITY NOTHING`)
	e.consume(t, e.slot)
	e.exec(t,
		`INSERT INTO test (id, name) VALUES (1, 'a')`,
		`UPDATE test SET name = 'b' WHERE id = 1`,
		`DELETE FROM test WHERE id = 1`)
	mustRecorded(t, e.mustChanges(t, 0, 3), []kindRow{
		{store.KindCreate, store.Test{ID: 1, Name: "a"}},
		{store.KindRename, store.Test{ID: 1, Name: "b"}},
		{store.KindDelete, store.Test{ID: 1}},
	})
	var ident string
	if err := e.pool.QueryRow(t.Context(), `SELECT relreplident::text FROM pg_class WHERE oid = 'test'::regclass`).Scan(&ident); err != nil {
		t.Fatal(err)
	}
	if ident != "d" {
		t.Errorf("replica identity %q, want d (DEFAULT)", ident)
	}
}
