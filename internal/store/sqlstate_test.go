package store_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/ybrest/testsapi/internal/store"
)

// TestClassification checks what the store makes of each error the server
// can answer: 503 or not, and whether it runs the statement again (for a
// statement that does not commit, and for one that does). The messages
// are the ones YugabyteDB's issue tracker and docs show (sqlstate.go names
// the source of each).
func TestClassification(t *testing.T) {
	t.Parallel()
	tests := []struct {
		code, message string
		transient     bool
		retry         bool // a read, or a statement inside a transaction
		retryCommit   bool // COMMIT, or a write outside a transaction block
	}{
		{pgerrcode.SerializationFailure, "could not serialize access due to concurrent update", true, true, true},
		{pgerrcode.SerializationFailure, "Restart read required at: { read: { physical: 1656351408684482 } local_limit: { physical: 1656351408684482 } global_limit: <min> in_txn_limit: <max> serial_no: 0 }", true, true, true},
		{pgerrcode.SerializationFailure, "Operation expired: Heartbeat: Transaction 6db5bfbe-0061-4c2a-aa60-329cd69b0e39 expired or aborted by a conflict", true, true, true},
		{pgerrcode.SerializationFailure, "The catalog snapshot used for this transaction has been invalidated", true, true, true},
		// yugabyte-db#29573: a commit RPC timeout reported as a catalog
		// version mismatch, for a transaction that did commit.
		{pgerrcode.SerializationFailure, "UpdateTransaction RPC (request call id 19635) to 192.168.122.15:9100 timed out after 5.000s", true, true, false},
		{pgerrcode.DeadlockDetected, "deadlock detected", true, true, true},
		{pgerrcode.UniqueViolation, `duplicate key value violates unique constraint "test_pkey"`, false, true, true},
		{pgerrcode.InternalError, "Timed out: Read(tablet: 107240348669432882a9d04703b8f796, num_ops: 1, num_attempts: 277, txn: 00000000-0000-0000-0000-000000000000, subtxn: [none]) passed its deadline 1021324.783s (passed: 60.325s): Illegal state (yb/tserver/service_util.h:137): Tablet not RUNNING: FAILED (tablet server error 12) (raft group state error 2)", true, true, false},
		{pgerrcode.InternalError, "Read RPC (request call id 1032805) to 172.151.26.80:9100 timed out after 21.827s", true, true, false},
		{pgerrcode.InternalError, "Timed out: Read(tablet: f286b7fb39dc4cfea4bb4e685b615463, num_ops: 1, num_attempts: 344, txn: 00000000-0000-0000-0000-000000000000) passed its deadline 41127.471s (now: 41127.564s): Leader not ready to serve requests. (yb/consensus/consensus.cc:137): Leader not yet replicated NoOp to be ready to serve requests (error 24)", true, true, false},
		{pgerrcode.InternalError, "Leader not ready to serve requests.", true, true, false},
		{pgerrcode.InternalError, "Illegal state (yb/consensus/consensus.cc:152): Not the leader (tablet server error 15)", true, true, false},
		{pgerrcode.InternalError, "Network error: recvmsg error: Connection refused", true, true, false},
		{pgerrcode.InternalError, "Service unavailable (yb/rpc/reactor.cc:100): Shutdown connection (system error 108)", true, true, false},
		{pgerrcode.InternalError, "Operation failed. Try again.: Unknown transaction, could be recently aborted: 90f2db2a-3ca0", true, true, false},
		{pgerrcode.InternalError, "Timed out: UpdateTransaction RPC (request call id 321) to 127.0.0.1:9100 timed out after 0.001s", true, true, false},
		{pgerrcode.InternalError, "Query error: Restart read required at: { read: { physical: 1623814763006278 } }", true, true, true},
		{pgerrcode.InternalError, "Operation expired: Transaction 3d3e1cb8 expired or aborted by a conflict", true, true, true},
		{pgerrcode.InternalError, "Catalog Version Mismatch: A DDL occurred while processing this query. Try again.", true, true, true},
		// Genuine internal errors stay 500s.
		{pgerrcode.InternalError, "cache lookup failed for relation 16384", false, false, false},
		{pgerrcode.InternalError, "unexpected data beyond EOF in block 0 of relation base/5/16384", false, false, false},
		{"YB001", "current transaction is expired or aborted", true, true, false},
		{pgerrcode.AdminShutdown, "terminating connection due to administrator command", true, true, false},
		{pgerrcode.SnapshotTooOld, "snapshot too old", true, true, false},
		{pgerrcode.QueryCanceled, "canceling statement due to statement timeout", true, false, false},
		{pgerrcode.LockNotAvailable, "could not obtain lock on row in relation \"test\"", true, false, false},
		{pgerrcode.ReadOnlySQLTransaction, "cannot execute INSERT in a read-only transaction", true, false, false},
		{pgerrcode.ConnectionFailure, "connection failure", true, false, false},
		{pgerrcode.TooManyConnections, "sorry, too many clients already", true, false, false},
		{pgerrcode.CannotConnectNow, "the database system is starting up", true, false, false},
		{pgerrcode.UndefinedTable, `relation "test" does not exist`, false, false, false},
	}
	for _, tc := range tests {
		t.Run(tc.code+" "+tc.message[:min(len(tc.message), 40)], func(t *testing.T) {
			err := fmt.Errorf("query: %w", &pgconn.PgError{Severity: "ERROR", Code: tc.code, Message: tc.message})
			if got := store.Transient(err); got != tc.transient {
				t.Errorf("transient (503) = %v, want %v", got, tc.transient)
			}
			if got := store.Retryable(err); got != tc.retry {
				t.Errorf("retried = %v, want %v", got, tc.retry)
			}
			if got := store.RetryableCommit(err); got != tc.retryCommit {
				t.Errorf("retried after a statement that commits = %v, want %v", got, tc.retryCommit)
			}
		})
	}
	// Every XX000 substring the store knows has a case above.
	for _, sub := range store.FailoverMessages() {
		found := false
		for _, tc := range tests {
			found = found || tc.code == pgerrcode.InternalError && strings.Contains(strings.ToLower(tc.message), sub)
		}
		if !found {
			t.Errorf("no case for the failover message %q", sub)
		}
	}
}
