package store

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// The consumer: it reads the database's logical replication stream
// (pgoutput, through github.com/jackc/pglogrepl, the pgx author's library
// for the replication protocol, rather than hand-decoding its messages) of
// publication and slot Slot, and records each transaction's changes to
// table test in test_changes. The slot is the lock between instances: the
// database lets one connection stream a slot at a time, and the others
// get ErrSlotBusy and try again later, so when the consumer's instance
// stops another takes over.
//
// Exactly once: a transaction's changes and its commit LSN (last_lsn) are
// written in one database transaction, under the lock of the state row,
// and only then is the slot told (the standby status update) that the
// transaction may be forgotten. A consumer that restarts is sent again
// what the slot was not told of, and skips each transaction whose commit
// LSN is not above last_lsn.

// ErrSlotBusy means another connection streams the feed's replication
// slot: another instance is the consumer.
var ErrSlotBusy = errors.New("replication slot in use by another consumer")

// ErrSlotLost means the database invalidated the slot (on PostgreSQL, it
// held more WAL than max_slot_wal_keep_size allows; on YugabyteDB, nobody
// read it for longer than cdc_intent_retention_ms): the changes it kept
// are gone. The consumer drops it and makes a new one, recording a gap.
var ErrSlotLost = errors.New("replication slot lost")

// slotExpiredMessages are what YugabyteDB answers, starting or reading a
// slot's stream, once the slot has expired: nobody read it for longer than
// cdc_intent_retention_ms (4 hours by default) and the history kept for it
// is gone. The slot must be dropped and made again (yugabyte-db#17925,
// #23310, #28840). Its row in pg_replication_slots does not say so
// (#24804), so the store remembers it for ensureSlot.
var slotExpiredMessages = []string{
	"is expired for Tablet ID",             // "Stream ID <id> is expired for Tablet ID <id>"
	"Trying to fetch already GCed intents", // "CDCSDK Trying to fetch already GCed intents for transaction <id>"
}

// slotExpired reports whether err is YugabyteDB's answer for an expired
// slot.
func slotExpired(err error) bool {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return false
	}
	for _, m := range slotExpiredMessages {
		if strings.Contains(pgErr.Message, m) {
			return true
		}
	}
	return false
}

// streamEnded returns err, the end of slot's stream (or of its start), as
// ErrSlotLost if it says the slot expired, and then marks the slot for
// ensureSlot to drop and make again.
func (s *Store) streamEnded(slot string, err error) error {
	if !slotExpired(err) {
		return err
	}
	s.expiredSlots.Store(slot, true)
	return fmt.Errorf("%w: %w", ErrSlotLost, err)
}

// Consumer settings.
const (
	// statusInterval is how often the consumer tells the database how far
	// it has recorded, besides after every transaction; well within
	// wal_sender_timeout (60 s by default), after which the database
	// would drop a consumer that says nothing.
	statusInterval = 10 * time.Second
	// changeBatch is how many changes of one transaction are buffered
	// before they are written: memory stays bounded for any transaction.
	changeBatch = 500
	// groupDelay and groupTransactions bound how long, and over how many
	// transactions, the recordings of consecutive transactions share one
	// database transaction: under load (group commit sends a transaction
	// every few milliseconds) five round trips per transaction would let
	// the recording fall behind the writes (BenchmarkFeedKeepsUp).
	groupDelay        = 20 * time.Millisecond
	groupTransactions = 1000
)

// ConsumeChanges streams slot (and the publication of the same name) over
// a replication connection made from cfg, recording changes, until ctx is
// done or the stream fails; it returns ErrSlotBusy at once when another
// consumer holds the slot. It creates the publication and the slot when
// they are missing, and calls started (if not nil) once it streams. Call
// it again after an error.
func (s *Store) ConsumeChanges(ctx context.Context, cfg *pgconn.Config, slot string, started func()) error {
	if !s.ready.Load() {
		return errNotMigrated
	}
	if err := s.ensureReplicaIdentity(ctx); err != nil {
		return err
	}
	if err := s.ensurePublication(ctx, slot); err != nil {
		return err
	}
	cfg = cfg.Copy()
	cfg.RuntimeParams["replication"] = "database"
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return fmt.Errorf("replication connection: %w", s.classify(err))
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if err := s.ensureSlot(ctx, conn, slot); err != nil {
		return err
	}
	replyWait := s.consumeTimeout + s.walSenderTimeout(ctx, conn)/2 // asked before the stream starts
	startCtx, cancel := s.roundTrip(ctx)
	err = pglogrepl.StartReplication(startCtx, conn, slot, 0, pglogrepl.StartReplicationOptions{
		Mode:       pglogrepl.LogicalReplication,
		PluginArgs: []string{"proto_version '1'", "publication_names '" + slot + "'"},
	})
	cancel()
	if sqlstate(err) == pgerrcode.ObjectInUse {
		return ErrSlotBusy
	}
	if sqlstate(err) == pgerrcode.ObjectNotInPrerequisiteState {
		// "can no longer get changes from replication slot": lost
		// between ensureSlot's look and the start.
		return fmt.Errorf("%w: %w", ErrSlotLost, err)
	}
	if err != nil {
		return s.streamEnded(slot, fmt.Errorf("start replication: %w", s.classify(err)))
	}
	if started != nil {
		started()
	}
	c := &consumer{s: s, conn: conn, relations: map[uint32]*pglogrepl.RelationMessage{}, heard: time.Now(), replyWait: replyWait}
	return s.streamEnded(slot, c.run(ctx))
}

// defaultWALSenderTimeout is PostgreSQL's default wal_sender_timeout,
// assumed where the server does not say.
const defaultWALSenderTimeout = time.Minute

// walSenderTimeout returns the wal_sender_timeout of conn's session (0:
// none), or defaultWALSenderTimeout when it cannot be read. The server
// reads the consumer's messages at least every half of it, even while it
// decodes a long transaction of which it sends nothing (changes to
// tables outside the publication): the consumer waits that long, and
// ConsumeTimeout more, for the answer to a request before it takes the
// connection for dead (see silent).
func (s *Store) walSenderTimeout(ctx context.Context, conn *pgconn.PgConn) time.Duration {
	if s.consumeTimeout <= 0 {
		return 0 // the silence is not bounded
	}
	ctx, cancel := s.roundTrip(ctx)
	defer cancel()
	// pg_settings gives it in milliseconds; a replication=database
	// connection takes plain SQL.
	res, err := conn.Exec(ctx, `SELECT setting FROM pg_settings WHERE name = 'wal_sender_timeout'`).ReadAll()
	if err != nil || len(res) != 1 || len(res[0].Rows) != 1 {
		return defaultWALSenderTimeout
	}
	ms, err := strconv.ParseInt(string(res[0].Rows[0][0]), 10, 64)
	if err != nil || ms < 0 {
		return defaultWALSenderTimeout
	}
	return time.Duration(ms) * time.Millisecond
}

// ConsumeTimeout bounds how long the consumer waits for the database.
// Each of its round trips on the pool (its recording transaction's
// statements and commit, its rollback, the look-ups before it streams)
// and on the replication connection before the stream gets d. Once the
// stream has been silent for d/2 the consumer asks the server for a
// reply, which must come within d and half the server's
// wal_sender_timeout (see silent). Past a bound the consumer rolls back
// and ConsumeChanges returns ErrUnavailable, for the caller to call it
// again. Without it a connection that hangs (a blackhole: data
// swallowed, the connection left open) stalls the consumer for ever,
// holding the slot, so that no instance records changes. Creating the
// slot waits for as long as the database takes, but not for a connection
// that hangs (see createSlot). The recording
// transaction is also ended by the database once idle for twice d (see
// recordingIdleTimeout). Zero, the default, means no bound.
func ConsumeTimeout(d time.Duration) Option {
	return func(s *Store) { s.consumeTimeout = d }
}

// recordingIdleTimeout is the recording transaction's
// idle_in_transaction_session_timeout for a ConsumeTimeout of d (0:
// none), and recordingKeepAlive how long the consumer leaves it idle
// before it runs a statement on it to say it lives (see keepAlive). A
// statement sent after d/2 reaches the server within d, or the consumer
// gives up on the connection: a live consumer's transaction is idle at
// most 1.5 d, and 2 d leaves d/2 for its own pauses.
//
// Why the database must end the transaction itself: a connection that
// hangs after the state row's lock is taken (a blackhole, the client's
// FIN lost) leaves the server's session, and the lock, until the server's
// TCP keepalive notices, two hours by default; every consumer started
// again meanwhile waits on the lock and gives up. The server's keepalive
// cannot be relied on instead: a proxy or balancer in between (a
// connection pooler, toxiproxy in the tests) answers its probes itself.
func recordingIdleTimeout(d time.Duration) time.Duration {
	return 2 * d
}

func recordingKeepAlive(d time.Duration) time.Duration {
	return d / 2
}

// roundTrip returns ctx bounded by ConsumeTimeout, for one round trip of
// the consumer.
func (s *Store) roundTrip(ctx context.Context) (context.Context, context.CancelFunc) {
	if s.consumeTimeout <= 0 {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, s.consumeTimeout)
}

// bounded runs fn, one database round trip of the consumer, under
// ConsumeTimeout, and returns its error classified and prefixed with what
// (saying so when the bound cut it).
func (s *Store) bounded(ctx context.Context, what string, fn func(ctx context.Context) error) error {
	rtCtx, cancel := s.roundTrip(ctx)
	defer cancel()
	err := fn(rtCtx)
	if err == nil {
		return nil
	}
	if ctx.Err() == nil && errors.Is(rtCtx.Err(), context.DeadlineExceeded) {
		return fmt.Errorf("%s: no answer within %s: %w", what, s.consumeTimeout, s.classify(err))
	}
	return fmt.Errorf("%s: %w", what, s.classify(err))
}

// OnChanges has fn called each time this Store's consumer has committed
// the changes of a transaction, so that feeds served by the same instance
// need not wait for their next poll. fn must be quick.
func OnChanges(fn func()) Option {
	return func(s *Store) { s.onChanges = fn }
}

// ensureReplicaIdentity gives table test REPLICA IDENTITY DEFAULT unless
// it has DEFAULT or FULL, the identities under which the stream carries
// each new row whole and the id of each row updated or deleted, as row
// reads them. YSQL gives a table it creates its own identity, CHANGE
// (only the columns that changed), unless the yb-tserver flag
// ysql_yb_default_replica_identity said otherwise when the table was
// made: a table made before the compose files set the flag, or by
// SQLAlchemy on a cluster without it, has CHANGE, which pgoutput does not
// support (docs: change-data-capture/using-logical-replication/
// key-concepts, "Output plugin", "Replica identity"). YugabyteDB fixes a
// slot's identities when the slot is made, so this runs before ensureSlot.
// On PostgreSQL, NOTHING (or an index on name) would leave the consumer no
// id for a delete, and once the table is published NOTHING fails every
// UPDATE and DELETE of it (55000).
func (s *Store) ensureReplicaIdentity(ctx context.Context) error {
	var ident string
	err := s.bounded(ctx, "look up replica identity", func(ctx context.Context) error {
		return s.pool.QueryRow(ctx, `SELECT relreplident::text FROM pg_class WHERE oid = 'test'::regclass`).Scan(&ident)
	})
	if err != nil || ident == "d" || ident == "f" {
		return err
	}
	return s.bounded(ctx, "set replica identity", func(ctx context.Context) error {
		_, err := s.pool.Exec(ctx, `ALTER TABLE test REPLICA IDENTITY DEFAULT`)
		return err
	})
}

// ensurePublication creates the publication of table test named name, if
// there is none. Two instances creating it at once: one gets
// duplicate_object, which is fine.
func (s *Store) ensurePublication(ctx context.Context, name string) error {
	var n int
	err := s.bounded(ctx, "look up publication", func(ctx context.Context) error {
		return s.pool.QueryRow(ctx, `SELECT count(*) FROM pg_publication WHERE pubname = $1`, name).Scan(&n)
	})
	if err != nil || n > 0 {
		return err
	}
	return s.bounded(ctx, "create publication", func(ctx context.Context) error {
		_, err := s.pool.Exec(ctx, `CREATE PUBLICATION `+pgx.Identifier{name}.Sanitize()+` FOR TABLE test`)
		if sqlstate(err) == pgerrcode.DuplicateObject {
			return nil
		}
		return err
	})
}

// ensureSlot makes sure slot exists and can stream: it creates a missing
// one, and drops and recreates a lost one. A slot made anew starts at
// the present: what was committed between the old slot's end and now is
// not in the feed, so when there was an old one (slot_ready) a gap is
// recorded: last_seq steps over one number and the floor rises to it, so
// every older cursor gets ErrCursorGone instead of a silent skip. last_lsn
// is reset, since a new slot's LSNs need not be above the old one's (on
// YugabyteDB they are the slot's own).
func (s *Store) ensureSlot(ctx context.Context, conn *pgconn.PgConn, slot string) error {
	slotCtx, cancel := s.roundTrip(ctx) // Slot classifies its errors itself
	st, err := s.Slot(slotCtx, slot)
	cancel()
	if err != nil {
		return err
	}
	_, expired := s.expiredSlots.Load(slot)
	if st.Exists && st.WALState != "lost" && !expired {
		// A consumer that made the slot and stopped before recording so
		// leaves slot_ready false; the slot has recorded since it was made.
		return s.bounded(ctx, "record replication slot", func(ctx context.Context) error {
			_, err := s.pool.Exec(ctx, `UPDATE test_changes_state SET slot_ready = true WHERE id = 1 AND NOT slot_ready`)
			return err
		})
	}
	if st.Exists {
		if err := pglogrepl.DropReplicationSlot(ctx, conn, slot, pglogrepl.DropReplicationSlotOptions{}); err != nil {
			if sqlstate(err) == pgerrcode.ObjectInUse {
				return ErrSlotBusy
			}
			return fmt.Errorf("drop lost replication slot: %w", s.classify(err))
		}
	}
	err = s.createSlot(ctx, conn, slot)
	if sqlstate(err) == pgerrcode.DuplicateObject {
		return ErrSlotBusy // another instance made it just now, and streams it
	}
	if err != nil {
		// A command whose answer was lost may have made the slot: drop it
		// if no one streams it, so that the next attempt makes it again
		// and records the gap after a lost one (a slot found would be
		// taken as recorded). If this fails too, that attempt finds it.
		_ = s.bounded(context.WithoutCancel(ctx), "drop unrecorded replication slot", func(ctx context.Context) error {
			_, err := s.pool.Exec(ctx, `
SELECT pg_drop_replication_slot(slot_name)
FROM pg_replication_slots
WHERE slot_name = $1 AND NOT active`, slot)
			return err
		})
		return fmt.Errorf("create replication slot: %w", s.classify(err))
	}
	const q = `
UPDATE test_changes_state
SET last_seq = CASE WHEN slot_ready THEN last_seq + 1 ELSE last_seq END,
    floor = CASE WHEN slot_ready THEN last_seq + 1 ELSE floor END,
    last_lsn = 0,
    slot_ready = true
WHERE id = 1`
	err = s.bounded(ctx, "record new replication slot", func(ctx context.Context) error {
		_, err := s.pool.Exec(ctx, q)
		return err
	})
	if err != nil {
		// The slot exists and the state does not say so: drop it, so that
		// the next attempt does both again.
		_ = pglogrepl.DropReplicationSlot(context.WithoutCancel(ctx), conn, slot, pglogrepl.DropReplicationSlotOptions{})
		return err
	}
	s.expiredSlots.Delete(slot) // made again: the new slot has not expired
	return nil
}

// createSlot runs CREATE_REPLICATION_SLOT for slot on conn. The command
// has no time bound: the database makes a logical slot once every
// transaction that was running when it began has ended, which may rightly
// take as long as the longest of them. What is bounded is a connection
// that hangs: every ConsumeTimeout the consumer looks, on its pool, at
// conn's session, and once the database has been done with the command
// (the session no longer runs it, or is gone) for a look with no answer
// come, it gives up. On YugabyteDB a session that is not listed is taken
// to be still at work, since its walsenders need not show there.
func (s *Store) createSlot(ctx context.Context, conn *pgconn.PgConn, slot string) error {
	create := func(ctx context.Context) error {
		_, err := pglogrepl.CreateReplicationSlot(ctx, conn, slot, "pgoutput", pglogrepl.CreateReplicationSlotOptions{
			Mode:           pglogrepl.LogicalReplication,
			SnapshotAction: "NOEXPORT_SNAPSHOT",
		})
		return err
	}
	if s.consumeTimeout <= 0 {
		return create(ctx)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- create(ctx) }()
	// stop cuts the command (pgconn then closes conn) and waits for it.
	stop := func(err error) error {
		cancel()
		<-done
		return err
	}
	yb := DetectDialect(conn.ParameterStatus("server_version")) == YugabyteDB
	tick := time.NewTicker(s.consumeTimeout)
	defer tick.Stop()
	var finished time.Time // when the session was first seen done with it
	for {
		select {
		case err := <-done:
			return err
		case <-tick.C:
		}
		select {
		case err := <-done: // come with the tick
			return err
		default:
		}
		lookCtx, cancelLook := s.roundTrip(ctx)
		rows, _ := s.pool.Query(lookCtx, `SELECT state = 'active' FROM pg_stat_activity WHERE pid = $1`, conn.PID())
		active, err := pgx.CollectRows(rows, pgx.RowTo[bool])
		cancelLook()
		switch {
		case err != nil:
			return stop(fmt.Errorf("look up the replication session: %w", err))
		case len(active) == 1 && active[0], len(active) == 0 && yb:
			finished = time.Time{}
		case finished.IsZero():
			finished = time.Now()
		default:
			return stop(fmt.Errorf("the database was done with it %s ago and no answer came: %w",
				time.Since(finished).Round(time.Millisecond), context.DeadlineExceeded))
		}
	}
}

// DropSlot drops replication slot name and its publication if they exist
// (FEED=off: a slot that nobody reads would keep WAL for ever). A later
// consumer then records a gap. It fails with ErrSlotBusy if a consumer
// streams it.
func (s *Store) DropSlot(ctx context.Context, name string) error {
	_, err := s.pool.Exec(ctx, `
SELECT pg_drop_replication_slot(slot_name)
FROM pg_replication_slots
WHERE slot_name = $1`, name)
	if sqlstate(err) == pgerrcode.ObjectInUse {
		return ErrSlotBusy
	}
	if err != nil {
		return fmt.Errorf("drop replication slot: %w", s.classify(err))
	}
	if _, err := s.pool.Exec(ctx, `DROP PUBLICATION IF EXISTS `+pgx.Identifier{name}.Sanitize()); err != nil {
		return fmt.Errorf("drop publication: %w", s.classify(err))
	}
	return nil
}

// consumer is one replication session.
type consumer struct {
	s         *Store
	conn      *pgconn.PgConn
	relations map[uint32]*pglogrepl.RelationMessage

	flushed pglogrepl.LSN // what the slot has been told is recorded
	heard   time.Time     // when the last message came from the server
	pinged  time.Time     // when a reply was asked for since (zero: not asked)
	// replyWait is how long a reply may take: ConsumeTimeout and half
	// the server's wal_sender_timeout (walSenderTimeout).
	replyWait time.Duration
	inTx      bool // between a BEGIN and its COMMIT
	begin     *pglogrepl.BeginMessage
	tx        pgx.Tx    // the recording transaction, from the first change on
	txUsed    time.Time // when tx's last statement ended
	skip      bool      // this transaction was recorded before
	seq       int64     // the last seq written in tx
	batch     []Change

	// Transactions whose COMMIT has come and whose changes are written in
	// tx, which is not yet committed (see groupDelay).
	pending      int           // how many
	pendingSince time.Time     // when the first of them committed
	pendingLSN   pglogrepl.LSN // the last one's commit LSN
	pendingEnd   pglogrepl.LSN // the last one's end LSN
}

func (c *consumer) run(ctx context.Context) error {
	defer func() { _ = c.rollback(ctx) }()
	nextStatus := time.Now().Add(statusInterval)
	for {
		if time.Now().After(nextStatus) {
			if err := c.status(ctx); err != nil {
				return err
			}
			nextStatus = time.Now().Add(statusInterval)
		}
		if err := c.keepAlive(ctx); err != nil {
			return err
		}
		deadline := nextStatus
		if keep, ok := c.keepAliveCheck(); ok && keep.Before(deadline) {
			deadline = keep
		}
		if c.pending > 0 && !c.inTx {
			deadline = c.pendingSince.Add(groupDelay)
		}
		if check, ok := c.silenceCheck(); ok && check.Before(deadline) {
			deadline = check
		}
		recvCtx, cancel := context.WithDeadline(ctx, deadline)
		raw, err := c.conn.ReceiveMessage(recvCtx)
		cancel()
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if pgconn.Timeout(err) {
			if c.pending > 0 && !c.inTx && !time.Now().Before(c.pendingSince.Add(groupDelay)) {
				if err := c.flush(ctx); err != nil {
					return err
				}
			}
			if err := c.silent(ctx); err != nil {
				return err
			}
			continue
		}
		if err != nil {
			return fmt.Errorf("receive replication message: %w", c.s.classify(err))
		}
		c.heard, c.pinged = time.Now(), time.Time{}
		switch msg := raw.(type) {
		case *pgproto3.ErrorResponse:
			return fmt.Errorf("replication stream: %w", c.s.classify(pgconn.ErrorResponseToPgError(msg)))
		case *pgproto3.CopyData:
			if err := c.copyData(ctx, msg.Data); err != nil {
				return err
			}
		}
	}
}

// silenceCheck returns when silent has next something to do, and false
// when the silence is not bounded (no ConsumeTimeout).
func (c *consumer) silenceCheck() (time.Time, bool) {
	half := c.s.consumeTimeout / 2
	if half <= 0 {
		return time.Time{}, false
	}
	if c.pinged.IsZero() {
		return c.heard.Add(half), true
	}
	return c.pinged.Add(c.replyWait), true
}

// silent bounds the replication connection's silence, as PostgreSQL's own
// standby does (wal_receiver_timeout): a server with nothing to send may
// say nothing for long (the status updates keep it from pinging us), so
// after half of ConsumeTimeout without a message the consumer asks for a
// reply, which the server sends as soon as it reads the request, and when
// replyWait passes without any message it gives up on the connection.
// Waiting for the reply to a request, never for traffic alone, neither a
// consumer that was itself busy nor a server decoding a long transaction
// it sends nothing of is taken for a dead connection.
func (c *consumer) silent(ctx context.Context) error {
	check, ok := c.silenceCheck()
	if !ok || time.Now().Before(check) {
		return nil
	}
	if c.pinged.IsZero() {
		c.pinged = time.Now()
		return c.sendStatus(ctx, true)
	}
	err := fmt.Errorf("replication connection silent: no message for %s, nor an answer %s after asking for one (ConsumeTimeout %s and half of wal_sender_timeout): %w",
		time.Since(c.heard).Round(time.Millisecond), time.Since(c.pinged).Round(time.Millisecond), c.s.consumeTimeout, context.DeadlineExceeded)
	return c.s.classify(err)
}

func (c *consumer) copyData(ctx context.Context, data []byte) error {
	if len(data) == 0 {
		return nil
	}
	switch data[0] {
	case pglogrepl.PrimaryKeepaliveMessageByteID:
		k, err := pglogrepl.ParsePrimaryKeepaliveMessage(data[1:])
		if err != nil {
			return err
		}
		// Between transactions everything sent so far is recorded (or
		// was of no interest): the slot may forget up to the server's
		// position, so WAL of other tables' work is not kept for us.
		if !c.inTx && c.pending == 0 && k.ServerWALEnd > c.flushed {
			c.flushed = k.ServerWALEnd
		}
		if k.ReplyRequested {
			return c.status(ctx)
		}
		return nil
	case pglogrepl.XLogDataByteID:
		x, err := pglogrepl.ParseXLogData(data[1:])
		if err != nil {
			return err
		}
		m, err := pglogrepl.Parse(x.WALData)
		if err != nil {
			return fmt.Errorf("decode pgoutput message: %w", err)
		}
		return c.message(ctx, m)
	}
	return nil
}

func (c *consumer) message(ctx context.Context, m pglogrepl.Message) error {
	switch m := m.(type) {
	case *pglogrepl.RelationMessage:
		c.relations[m.RelationID] = m
	case *pglogrepl.BeginMessage:
		c.inTx, c.begin, c.skip = true, m, false
	case *pglogrepl.InsertMessage:
		row, err := c.row(m.RelationID, m.Tuple)
		if err != nil {
			return err
		}
		return c.add(ctx, KindCreate, row)
	case *pglogrepl.UpdateMessage:
		row, err := c.row(m.RelationID, m.NewTuple)
		if err != nil {
			return err
		}
		if m.OldTuple != nil {
			// The key changed (plain SQL can change an id): to a reader
			// that is the old row gone and a new one.
			old, err := c.row(m.RelationID, m.OldTuple)
			if err != nil {
				return err
			}
			if old.ID != row.ID {
				if err := c.add(ctx, KindDelete, Test{ID: old.ID}); err != nil {
					return err
				}
				return c.add(ctx, KindCreate, row)
			}
		}
		return c.add(ctx, KindRename, row)
	case *pglogrepl.DeleteMessage:
		old, err := c.row(m.RelationID, m.OldTuple)
		if err != nil {
			return err
		}
		return c.add(ctx, KindDelete, Test{ID: old.ID})
	case *pglogrepl.TruncateMessage:
		return c.add(ctx, KindTruncate, Test{})
	case *pglogrepl.CommitMessage:
		c.inTx = false
		if c.tx == nil {
			// No change to test, or recorded before: nothing to wait for.
			if c.pending == 0 && m.TransactionEndLSN > c.flushed {
				c.flushed = m.TransactionEndLSN
			}
			return nil
		}
		if err := c.write(ctx); err != nil {
			return err
		}
		if c.pending == 0 {
			c.pendingSince = time.Now()
		}
		c.pending++
		c.pendingLSN, c.pendingEnd = m.CommitLSN, m.TransactionEndLSN
		if c.pending >= groupTransactions || !time.Now().Before(c.pendingSince.Add(groupDelay)) {
			return c.flush(ctx)
		}
	}
	return nil
}

// row reads a tuple of table test (the publication has no other table).
func (c *consumer) row(rel uint32, tuple *pglogrepl.TupleData) (Test, error) {
	r, ok := c.relations[rel]
	if !ok {
		return Test{}, fmt.Errorf("pgoutput: change to relation %d before its description", rel)
	}
	var t Test
	if tuple == nil {
		return t, fmt.Errorf("pgoutput: change to %s.%s without a tuple", r.Namespace, r.RelationName)
	}
	for i, col := range tuple.Columns {
		if i >= len(r.Columns) || col.DataType != pglogrepl.TupleDataTypeText {
			continue // null, or unchanged TOAST: a name of 255 characters never is
		}
		switch r.Columns[i].Name {
		case "id":
			id, err := strconv.ParseInt(string(col.Data), 10, 32)
			if err != nil {
				return t, fmt.Errorf("pgoutput: id %q: %w", col.Data, err)
			}
			t.ID = int32(id)
		case "name":
			t.Name = string(col.Data)
		}
	}
	return t, nil
}

// add buffers one change of the current transaction, writing the buffer
// when it is full.
func (c *consumer) add(ctx context.Context, kind string, row Test) error {
	if c.skip {
		return nil
	}
	if c.tx == nil {
		if err := c.open(ctx); err != nil || c.skip {
			return err
		}
	}
	c.batch = append(c.batch, Change{Kind: kind, Row: row})
	if len(c.batch) >= changeBatch {
		return c.write(ctx)
	}
	return nil
}

// open starts the recording transaction: it locks the state row (a second
// consumer, say one whose connection hung holding the lock, waits here
// until the database ends that one's transaction: see
// recordingIdleTimeout) and decides whether the transaction is new.
func (c *consumer) open(ctx context.Context) error {
	opts := pgx.TxOptions{}
	if idle := recordingIdleTimeout(c.s.consumeTimeout); idle > 0 {
		// In BEGIN's own round trip (pgx sends it as one simple query);
		// SET LOCAL: the pool's other transactions keep the server's
		// setting.
		opts.BeginQuery = fmt.Sprintf("BEGIN; SET LOCAL idle_in_transaction_session_timeout = %d", idle.Milliseconds())
	}
	var tx pgx.Tx
	err := c.s.bounded(ctx, "begin recording", func(ctx context.Context) (err error) {
		tx, err = c.s.pool.BeginTx(ctx, opts)
		return err
	})
	if err != nil {
		return err
	}
	c.tx = tx // rolled back by run's rollback on any error
	var lastLSN int64
	const q = `
SELECT last_seq, last_lsn
FROM test_changes_state
WHERE id = 1
FOR UPDATE`
	err = c.s.bounded(ctx, "lock feed state", func(ctx context.Context) error {
		return tx.QueryRow(ctx, q).Scan(&c.seq, &lastLSN)
	})
	if err != nil {
		return err
	}
	c.txUsed = time.Now()
	if uint64(c.begin.FinalLSN) <= uint64(lastLSN) {
		// Recorded before this session: sent again because the slot had
		// not been told.
		c.skip = true
		return c.rollback(ctx)
	}
	return nil
}

// write inserts the buffered changes into the recording transaction.
func (c *consumer) write(ctx context.Context) error {
	if len(c.batch) == 0 {
		return nil
	}
	kinds := make([]string, len(c.batch))
	ids := make([]*int32, len(c.batch))
	names := make([]*string, len(c.batch))
	for i, ch := range c.batch {
		kinds[i] = ch.Kind
		switch ch.Kind {
		case KindCreate, KindRename:
			ids[i], names[i] = &c.batch[i].Row.ID, &c.batch[i].Row.Name
		case KindDelete:
			ids[i] = &c.batch[i].Row.ID
		}
	}
	// One statement per batch, the arrays as three parameters: no limit
	// on parameters, one round trip.
	const q = `
INSERT INTO test_changes (seq, commit_lsn, xid, kind, id, name, committed_at)
SELECT $1 + n, $2, $3, kind, id, name, $4
FROM unnest($5::text[], $6::integer[], $7::text[]) WITH ORDINALITY AS c(kind, id, name, n)`
	err := c.s.bounded(ctx, "record changes", func(ctx context.Context) error {
		_, err := c.tx.Exec(ctx, q, c.seq, int64(c.begin.FinalLSN), int64(c.begin.Xid), c.begin.CommitTime, kinds, ids, names)
		return err
	})
	if err != nil {
		return err
	}
	c.txUsed = time.Now()
	c.seq += int64(len(c.batch))
	c.batch = c.batch[:0]
	return nil
}

// flush commits the recording of the pending transactions: their
// changes and the last one's commit LSN, together; then tells the slot.
func (c *consumer) flush(ctx context.Context) error {
	const q = `
UPDATE test_changes_state
SET last_seq = $1,
    last_lsn = $2
WHERE id = 1`
	err := c.s.bounded(ctx, "record commit", func(ctx context.Context) error {
		_, err := c.tx.Exec(ctx, q, c.seq, int64(c.pendingLSN))
		return err
	})
	if err != nil {
		return err
	}
	err = c.s.bounded(ctx, "commit recording", c.tx.Commit)
	c.tx, c.pending = nil, 0
	if err != nil {
		// Whether it committed is unknown (a commit cut by the bound
		// too): the stream ends here, the slot not told, and the next
		// session finds out from last_lsn.
		return err
	}
	if c.pendingEnd > c.flushed {
		c.flushed = c.pendingEnd
	}
	if c.s.onChanges != nil {
		c.s.onChanges()
	}
	return c.status(ctx)
}

// keepAliveCheck returns when keepAlive has next something to do, and
// false when nothing (no recording transaction, or no ConsumeTimeout).
func (c *consumer) keepAliveCheck() (time.Time, bool) {
	keep := recordingKeepAlive(c.s.consumeTimeout)
	if c.tx == nil || keep <= 0 {
		return time.Time{}, false
	}
	return c.txUsed.Add(keep), true
}

// keepAlive runs a statement on the recording transaction once it has
// been idle for recordingKeepAlive, so that a live consumer's transaction
// outlives recordingIdleTimeout while it waits for the stream: the rest
// of a transaction may take long to come (the server decodes a large
// one, changes to other tables included, before its COMMIT), and a
// transaction ended there would be sent, and ended, again.
func (c *consumer) keepAlive(ctx context.Context) error {
	check, ok := c.keepAliveCheck()
	if !ok || time.Now().Before(check) {
		return nil
	}
	err := c.s.bounded(ctx, "keep recording open", func(ctx context.Context) error {
		_, err := c.tx.Exec(ctx, `SELECT 1`)
		return err
	})
	c.txUsed = time.Now()
	return err
}

// rollback ends the recording transaction, if any, without recording:
// on a connection that hangs, pgx's rollback is cut by ConsumeTimeout
// (and the connection closed), and the database rolls back when it
// notices.
func (c *consumer) rollback(ctx context.Context) error {
	if c.tx == nil {
		return nil
	}
	tx := c.tx
	c.tx = nil
	return c.s.bounded(context.WithoutCancel(ctx), "roll back recording", tx.Rollback)
}

// status tells the database how far the changes are recorded: the slot
// keeps only WAL after it.
func (c *consumer) status(ctx context.Context) error {
	return c.sendStatus(ctx, false)
}

// sendStatus sends the standby status update, asking the server for an
// immediate reply when reply is true.
func (c *consumer) sendStatus(ctx context.Context, reply bool) error {
	err := pglogrepl.SendStandbyStatusUpdate(ctx, c.conn, pglogrepl.StandbyStatusUpdate{WALWritePosition: c.flushed, ReplyRequested: reply})
	if err != nil {
		return fmt.Errorf("standby status update: %w", c.s.classify(err))
	}
	return nil
}
