package store

import (
	"errors"
	"strings"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5/pgconn"
)

// What an error the server answered says about the request is decided here
// and nowhere else: classify (store.go) makes ErrUnavailable (503) of the
// transient ones, and retryable (retry.go) runs a statement again only
// where this file says that is safe. concurrentDDL (schema.go) keeps its
// own list of the errors concurrent DDL gives; sqlstate can give it the code.

// fault is what the server's error says, for the store's two decisions.
type fault struct {
	// transient: the request may well succeed later (a conflict, a leader
	// moving, a node restarting), so the client gets 503 + Retry-After,
	// not a 500.
	transient bool
	// again: the failure is a passing one that running the statement (or
	// its transaction) again at once, with backoff, is likely to cure.
	again bool
	// rolledBack: the error itself says the transaction did not commit,
	// so it is safe to run again even when the statement that failed was
	// one that commits (see commitErr). A timeout says no such thing.
	rolledBack bool
}

// faultOf reads the SQLSTATE and, where YugabyteDB reuses XX000
// (internal_error) for failover, the message. YSQL gives XX000 to every
// error of its storage layer that has no SQLSTATE of its own, RPC timeouts
// and network errors included (FetchErrorCode in
// src/yb/yql/pggate/util/ybc_util.cc), and reports conflicts, read
// restarts and aborted transactions as 40001, deadlocks as 40P01.
func faultOf(e *pgconn.PgError) fault {
	if commitInDoubt(e.Message) {
		// A commit RPC that timed out: the transaction may have committed,
		// whatever the SQLSTATE says.
		return fault{transient: true, again: true}
	}
	switch e.Code {
	case pgerrcode.SerializationFailure, // YugabyteDB: also read restarts, aborted transactions, catalog version mismatch
		pgerrcode.DeadlockDetected:
		return fault{transient: true, again: true, rolledBack: true}
	case pgerrcode.UniqueViolation:
		// Not transient: a taken name is a 409, and the callers tell it
		// from the other case, a primary-key collision with a row inserted
		// with an explicit id ahead of the sequence. The failed insert
		// consumed that sequence value, so running it again takes the next.
		return fault{again: true, rolledBack: true}
	case pgerrcode.AdminShutdown:
		// PostgreSQL stopping, or a YugabyteDB tserver restarting (its
		// postgres ends every backend this way, yugabyte-db#15455). The
		// connection is gone; another one can run the statement. It may
		// come during a COMMIT that had already committed.
		return fault{transient: true, again: true}
	case pgerrcode.SnapshotTooOld:
		// YugabyteDB: a read older than the history it keeps; a fresh
		// read takes a new snapshot.
		return fault{transient: true, again: true}
	case pgerrcode.QueryCanceled, // statement_timeout, or our own cancel: running it again would not be quicker
		pgerrcode.LockNotAvailable,
		pgerrcode.ReadOnlySQLTransaction: // reached a standby or a read-only node
		return fault{transient: true}
	case pgerrcode.InternalError:
		if rolledBack, ok := failover(e.Message); ok {
			return fault{transient: true, again: true, rolledBack: rolledBack}
		}
		return fault{} // a genuine internal error: a 500
	}
	if strings.HasPrefix(e.Code, "YB") {
		// YugabyteDB's own class: newer builds give aborted transactions
		// YB001 inside the server ("current transaction is expired or
		// aborted", yugabyte-db#4538); which of these codes reach clients,
		// and what each means, is not documented (#3587 asks for the
		// list). Transient, and worth running again where nothing
		// committed; not taken as proof of a rollback.
		return fault{transient: true, again: true}
	}
	if pgerrcode.IsConnectionException(e.Code) ||
		pgerrcode.IsInsufficientResources(e.Code) || // e.g. too many connections
		pgerrcode.IsOperatorIntervention(e.Code) { // shutdown, cannot connect now
		return fault{transient: true}
	}
	return fault{}
}

// failoverMessages are the XX000 messages YSQL answers while tablet leaders
// move, a node is lost or a tserver restarts, matched case-insensitively
// as substrings of the message in this order, each with the report it
// comes from. Each says the failure is passing; only those that say the
// transaction was aborted say it did not commit. Any other XX000 stays an
// internal error.
var failoverMessages = []struct {
	substring  string
	rolledBack bool
}{
	// First, as the first match wins and these also say "Try again":
	// current versions report these as 40001; matched here for the ones
	// that answered XX000. "Transaction ... expired or aborted by a
	// conflict" (docs: develop/learn/architecting-high-availability),
	// "Restart read required" (docs: architecture/transactions/
	// read-restart-error), "Catalog Version Mismatch" (#8597).
	{"expired or aborted by a conflict", true},
	{"restart read required", true},
	{"catalog version mismatch", true},
	// An RPC retried until its deadline against a tablet whose leader
	// moved, was not ready or is gone: "Timed out: Read(tablet: ...)
	// passed its deadline ...: Tablet not RUNNING" (yugabyte-db#10517),
	// "... Leader not ready to serve requests" (#1197), "GetTransactionStatus
	// ... passed its deadline ...: Not the leader" (#7960), "... Network
	// error ... Connection refused" (#16084).
	{"passed its deadline", false},
	// RPC timeouts as later versions word them: "Read RPC (request call
	// id 1032805) to 172.151.26.80:9100 timed out after 21.827s" (#22096),
	// "Perform RPC ... timed out after" (#18520, #14000).
	{"timed out", false},
	{"leader not ready", false}, // #1197
	{"not the leader", false},   // #7960
	// "Network error: recvmsg error: Connection refused" during a rolling
	// upgrade (#12628).
	{"network error", false},
	// "Service unavailable (yb/rpc/reactor.cc:100): Shutdown connection"
	// (#13866), "master is no longer the leader" (#4423).
	{"service unavailable", false},
	// "Operation failed. Try again.: Unknown transaction, could be
	// recently aborted" (#8992).
	{"try again", false},
}

// failover looks msg up in failoverMessages.
func failover(msg string) (rolledBack, ok bool) {
	msg = strings.ToLower(msg)
	for _, m := range failoverMessages {
		if strings.Contains(msg, m.substring) {
			return m.rolledBack, true
		}
	}
	return false, false
}

// commitInDoubt reports whether msg is about the RPCs that commit a
// YugabyteDB transaction (FinishTransaction from postgres to its tserver,
// UpdateTransaction to the transaction's status tablet): when one of
// those times out, the commit may have been applied. A Jepsen run found
// such a timeout reported as 40001 "Catalog Version Mismatch" for a
// transaction that did commit (yugabyte-db#29573, open); a COMMIT answered
// "Timed out: UpdateTransaction RPC ..." in yugabyte-db#6139.
func commitInDoubt(msg string) bool {
	msg = strings.ToLower(msg)
	return strings.Contains(msg, "updatetransaction") || strings.Contains(msg, "finishtransaction")
}

// isUniqueViolation reports whether err is the server's unique_violation (a
// taken name, or an id taken by a row inserted with an explicit one).
func isUniqueViolation(err error) bool {
	return sqlstate(err) == pgerrcode.UniqueViolation
}

// sqlstate returns the SQLSTATE of the server's error in err's chain, or
// "" when the server did not answer.
func sqlstate(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code
	}
	return ""
}
