package main

import (
	"context"
	"fmt"
	"strconv"

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
}

func startDatabase(ctx context.Context) (*database, error) {
	srv, err := dbtest.StartStandalone(pgSettings...)
	if err != nil {
		return nil, err
	}
	d := &database{srv: srv, url: srv.URL(), port: strconv.Itoa(srv.Port())}
	conn, err := pgx.Connect(ctx, d.url)
	if err == nil {
		var backend int
		if err = conn.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&backend); err == nil {
			var f []string
			if f, err = statFields(backend); err == nil {
				d.postmaster, err = strconv.Atoi(f[1])
			}
		}
		conn.Close(ctx)
	}
	if err != nil {
		d.close()
		return nil, fmt.Errorf("find the postmaster: %w", err)
	}
	return d, nil
}

func (d *database) close() {
	if err := d.srv.Close(); err != nil {
		fmt.Println("bench: stopping PostgreSQL:", err)
	}
}

// clientArgs are the connection arguments of pgbench and psql: TCP on
// loopback as user postgres, like the server's pool.
func (d *database) clientArgs() []string {
	return []string{"-h", "127.0.0.1", "-p", d.port, "-U", "postgres"}
}

// exec runs statements on a connection of their own.
func (d *database) exec(ctx context.Context, sqls ...string) error {
	conn, err := pgx.Connect(ctx, d.url)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	for _, q := range sqls {
		if _, err := conn.Exec(ctx, q); err != nil {
			return fmt.Errorf("%s: %w", q, err)
		}
	}
	return nil
}

// count returns the number of rows in test.
func (d *database) count(ctx context.Context) (int, error) {
	conn, err := pgx.Connect(ctx, d.url)
	if err != nil {
		return 0, err
	}
	defer conn.Close(context.Background())
	var n int
	err = conn.QueryRow(ctx, "SELECT count(*) FROM test").Scan(&n)
	return n, err
}

// reload empties test (ids start at 1 again) and fills it with n rows named
// seed-0000001 and so on, then vacuums, analyzes and checkpoints, so every
// workload starts from a table of a known size with fresh statistics and no
// dirty pages waiting.
func (d *database) reload(ctx context.Context, n int) error {
	conn, err := pgx.Connect(ctx, d.url)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "TRUNCATE test RESTART IDENTITY"); err != nil {
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
	if _, err := conn.CopyFrom(ctx, pgx.Identifier{"test"}, []string{"name"}, src); err != nil {
		return fmt.Errorf("load %d rows: %w", n, err)
	}
	return d.settle(ctx)
}

// settle vacuums, analyzes and checkpoints, so that a workload starts with
// fresh statistics and no dirty pages waiting to be written.
func (d *database) settle(ctx context.Context) error {
	return d.exec(ctx, "VACUUM ANALYZE test", "CHECKPOINT")
}
