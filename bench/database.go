package main

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/ybrest/testsapi/internal/dbtest"
)

// pgSettings tune the throwaway server; both sides use the same server, so
// they are tuned identically. Durability stays on (fsync, synchronous
// commit: the defaults), as a create is only acknowledged once durable. The
// table fits in shared_buffers, and checkpoints happen only where the
// harness asks for them (between workloads), not in the middle of a round.
var pgSettings = []string{
	"shared_buffers=1GB",
	"max_wal_size=8GB",
	"checkpoint_timeout=1h",
	"max_connections=300",
}

// database is the throwaway PostgreSQL both sides run against.
type database struct {
	srv        *dbtest.Standalone
	url        string
	port       string
	postmaster int // pid of the server's main process, whose children are the backends
	// conn is the harness's own connection, open from start to end: a
	// backend that exits in the middle of a run would move its CPU time
	// into the postmaster's children times and blur the accounting.
	conn *pgx.Conn
}

func startDatabase(ctx context.Context) (*database, error) {
	srv, err := dbtest.StartStandalone(pgSettings...)
	if err != nil {
		return nil, err
	}
	d := &database{srv: srv, url: srv.URL(), port: strconv.Itoa(srv.Port())}
	if err := d.connect(ctx); err != nil {
		d.close()
		return nil, err
	}
	return d, nil
}

func (d *database) connect(ctx context.Context) error {
	var err error
	if d.conn, err = pgx.Connect(ctx, d.url); err != nil {
		return err
	}
	var backend int
	if err := d.conn.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&backend); err != nil {
		return err
	}
	f, err := statFields(backend)
	if err != nil {
		return fmt.Errorf("find the postmaster: %w", err)
	}
	d.postmaster, err = strconv.Atoi(f[1])
	return err
}

func (d *database) close() {
	if d.conn != nil {
		d.conn.Close(context.Background())
	}
	if err := d.srv.Close(); err != nil {
		fmt.Println("bench: stopping PostgreSQL:", err)
	}
}

// clientArgs are the connection arguments of pgbench and psql: TCP on
// loopback as user postgres, like the server's pool, to port (the
// database's own, or the proxy's in front of it).
func clientArgs(port string) []string {
	return []string{"-h", "127.0.0.1", "-p", port, "-U", "postgres"}
}

// reload empties test (ids start at 1 again) and fills it with n rows named
// seed-0000001 and so on, then vacuums, analyzes and checkpoints, so every
// workload starts from a table of a known size with fresh statistics and no
// dirty pages waiting to be written.
func (d *database) reload(ctx context.Context, n int) error {
	if _, err := d.conn.Exec(ctx, "TRUNCATE test RESTART IDENTITY"); err != nil {
		return err
	}
	i := 0
	src := pgx.CopyFromFunc(func() ([]any, error) {
		if i == n {
			return nil, nil
		}
		i++
		return []any{fmt.Sprintf("seed-%07d", i)}, nil
	})
	if _, err := d.conn.CopyFrom(ctx, pgx.Identifier{"test"}, []string{"name"}, src); err != nil {
		return fmt.Errorf("load %d rows: %w", n, err)
	}
	for _, q := range []string{"VACUUM ANALYZE test", "CHECKPOINT"} {
		if _, err := d.conn.Exec(ctx, q); err != nil {
			return fmt.Errorf("%s: %w", q, err)
		}
	}
	return nil
}

// quiesce waits until the backends of the last pgbench or psql run have
// exited, so that their CPU time is not counted in the next run.
func (d *database) quiesce(ctx context.Context) error {
	const q = `
SELECT count(*)
FROM pg_stat_activity
WHERE application_name IN ('pgbench', 'psql')`
	deadline := time.Now().Add(30 * time.Second)
	for {
		var n int
		if err := d.conn.QueryRow(ctx, q).Scan(&n); err != nil {
			return err
		}
		if n == 0 {
			// Gone from pg_stat_activity; give the postmaster a moment to reap them.
			time.Sleep(50 * time.Millisecond)
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d pgbench or psql backends still there after 30s", n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
