package dbtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// LogicalSettings are the server settings logical replication (the change feed) needs: wal_level=logical and room
// for the slots and WAL senders of tests that run in parallel, each with a slot of its own.
var LogicalSettings = []string{"wal_level=logical", "max_replication_slots=64", "max_wal_senders=64"}

// logical is the lazily started shared server with LogicalSettings. It is a server of its own, so the rest of
// the suite keeps the cheaper wal_level of the shared one.
var logical struct {
	once sync.Once
	inst *instance
	err  error
}

// envLogicalURL points the feed's tests at an existing database with wal_level=logical instead.
const envLogicalURL = "TEST_LOGICAL_DATABASE_URL"

// NewLogicalSchema is NewSchema on a server with wal_level=logical: it returns the connection URL (search_path
// set to a fresh schema) and a name for the test's replication slot and publication, unique like the schema.
// In t.Cleanup the slot (waiting up to 10 s for its consumer to let go), the publication and the schema are
// dropped, so that no test leaves a slot behind holding WAL.
func NewLogicalSchema(t testing.TB) (url, slot string) {
	t.Helper()
	base := os.Getenv(envLogicalURL)
	if base == "" {
		if !mainCalled.Load() {
			t.Fatalf("dbtest: the package has no TestMain calling dbtest.Main, which must stop the logical server")
		}
		logical.once.Do(func() { logical.inst, logical.err = newInstance(false, LogicalSettings...) })
		if logical.err != nil {
			t.Fatalf("dbtest: no logical-replication server: %v\nTo fix: install the PostgreSQL server binaries "+
				"(e.g. `apt-get install postgresql`), or set %s to a database with wal_level=logical", logical.err, envLogicalURL)
		}
		base = logical.inst.url()
	}
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		t.Fatalf("dbtest: random schema name: %v", err)
	}
	name := "f_" + hex.EncodeToString(b)
	ident := pgx.Identifier{name}.Sanitize()
	if err := exec1(base, "CREATE SCHEMA "+ident); err != nil {
		t.Fatalf("dbtest: create schema %s: %v", name, err)
	}
	t.Cleanup(func() {
		if err := dropSlot(base, name); err != nil {
			t.Errorf("dbtest: %v", err)
		}
		if err := exec1(base, "DROP PUBLICATION IF EXISTS "+ident); err != nil {
			t.Errorf("dbtest: drop publication %s: %v", name, err)
		}
		if err := exec1(base, "DROP SCHEMA IF EXISTS "+ident+" CASCADE"); err != nil {
			t.Errorf("dbtest: drop schema %s: %v", name, err)
		}
	})
	u, err := withSearchPath(base, name)
	if err != nil {
		t.Fatalf("dbtest: %v", err)
	}
	return u, name
}

// dropSlot drops replication slot name if it exists, waiting for it to be inactive.
func dropSlot(connURL, name string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, connURL)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	for {
		var active *bool
		err := conn.QueryRow(ctx, `SELECT active FROM pg_replication_slots WHERE slot_name = $1`, name).Scan(&active)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("look up slot %s: %w", name, err)
		}
		if !*active {
			_, err = conn.Exec(ctx, `SELECT pg_drop_replication_slot($1)`, name)
			if err == nil {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("replication slot %s still in use after 10 s: a consumer was not stopped (%v)", name, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// stopLogical stops the logical server, if one was started, and removes its files.
func stopLogical() error {
	logical.once.Do(func() { logical.err = errors.New("dbtest.Main has already stopped the logical server") })
	if logical.inst == nil {
		return nil
	}
	return logical.inst.destroy("fast")
}
