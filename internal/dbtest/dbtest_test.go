package dbtest_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/ybrest/testsapi/internal/dbtest"
)

func TestMain(m *testing.M) {
	if os.Getenv("DBTEST_ORPHAN") == "1" {
		// TestWatchdog's child: start a server, then exit without stopping it, as a killed test would.
		s, err := dbtest.StartStandalone()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		fmt.Println(s.URL())
		os.Exit(0)
	}
	dbtest.Main(m)
}

// TestWatchdog: a test process that dies without stopping its server (killed, timed out) leaves no
// PostgreSQL running: the server's watchdog stops it.
func TestWatchdog(t *testing.T) {
	t.Parallel()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "DBTEST_ORPHAN=1")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("child: %v", err)
	}
	url := strings.TrimSpace(string(out))
	deadline := time.Now().Add(20 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		conn, err := pgx.Connect(ctx, url)
		cancel()
		if err != nil {
			return // stopped
		}
		conn.Close(context.Background())
		if time.Now().After(deadline) {
			t.Fatalf("the server of a test process that exited still answers at %s after 20 s", url)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// mustConnect opens a connection that is closed when the test ends.
func mustConnect(t *testing.T, connURL string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, connURL)
	if err != nil {
		t.Fatalf("connect %s: %v", connURL, err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// schemaOf reads back the schema NewSchema put into the connection string (a URL, or a keyword/value DSN
// when TEST_DATABASE_URL is one).
func schemaOf(t *testing.T, connString string) string {
	t.Helper()
	cfg, err := pgx.ParseConfig(connString)
	if err != nil {
		t.Fatalf("parse %q: %v", connString, err)
	}
	s := cfg.RuntimeParams["search_path"]
	if s == "" {
		t.Fatalf("no search_path in %q", connString)
	}
	return s
}

func TestNewSchema(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("CurrentSchema", func(t *testing.T) {
		t.Parallel()
		u := dbtest.NewSchema(t)
		var got string
		if err := mustConnect(t, u).QueryRow(ctx, "SELECT current_schema()").Scan(&got); err != nil {
			t.Fatal(err)
		}
		if want := schemaOf(t, u); got != want {
			t.Errorf("current_schema() = %q, want %q", got, want)
		}
	})

	t.Run("Isolated", func(t *testing.T) {
		t.Parallel()
		a := mustConnect(t, dbtest.NewSchema(t))
		b := mustConnect(t, dbtest.NewSchema(t))
		if _, err := a.Exec(ctx, "CREATE TABLE widgets (id int PRIMARY KEY)"); err != nil {
			t.Fatal(err)
		}
		var got *string
		if err := b.QueryRow(ctx, "SELECT to_regclass('widgets')::text").Scan(&got); err != nil {
			t.Fatal(err)
		}
		if got != nil {
			t.Errorf("table created in one schema is visible from another as %q", *got)
		}
		// The same name is free in the other schema.
		if _, err := b.Exec(ctx, "CREATE TABLE widgets (id int PRIMARY KEY)"); err != nil {
			t.Errorf("create same table in second schema: %v", err)
		}
	})

	t.Run("DroppedAfterCleanup", func(t *testing.T) {
		t.Parallel()
		var name string
		t.Run("Owner", func(t *testing.T) {
			u := dbtest.NewSchema(t)
			name = schemaOf(t, u)
			if _, err := mustConnect(t, u).Exec(ctx, "CREATE TABLE widgets (id int)"); err != nil {
				t.Fatal(err)
			}
		})
		var n int
		err := mustConnect(t, dbtest.NewSchema(t)).
			QueryRow(ctx, "SELECT count(*) FROM pg_namespace WHERE nspname = $1", name).Scan(&n)
		if err != nil {
			t.Fatal(err)
		}
		if n != 0 {
			t.Errorf("schema %q still exists after its test's cleanup", name)
		}
	})

	t.Run("ManyInParallel", func(t *testing.T) {
		t.Parallel()
		for range 8 {
			t.Run("Schema", func(t *testing.T) {
				t.Parallel()
				if _, err := mustConnect(t, dbtest.NewSchema(t)).Exec(ctx, "CREATE TABLE widgets (id int)"); err != nil {
					t.Fatal(err)
				}
			})
		}
	})
}

func TestNewServer(t *testing.T) {
	t.Parallel()
	checkCrashAndRestart(t, dbtest.NewServer(t))
}

// TestNewServerInContainer runs NewServer's container backend, which machines with Docker but no PostgreSQL
// binaries use, against testdata/fakedocker/docker: a docker CLI stand-in that runs the local binaries. It
// checks what dbtest asks of docker and that the server behaves like the binaries' one.
func TestNewServerInContainer(t *testing.T) {
	state, err := os.MkdirTemp("", "fakedocker-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(state) })
	if err := os.Chmod(state, 0o755); err != nil { // the fake runs the server as postgres when we are root
		t.Fatal(err)
	}
	fake, err := filepath.Abs("testdata/fakedocker")
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", fake+string(os.PathListSeparator)+os.Getenv("PATH"))
	t.Setenv("FAKE_DOCKER_STATE", state)
	t.Setenv("FAKE_DOCKER_PGBIN", dbtest.BinDir())
	t.Setenv("TEST_DATABASE_BACKEND", "docker")

	srv := dbtest.NewServer(t)
	checkCrashAndRestart(t, srv)

	calls, err := os.ReadFile(filepath.Join(state, "calls"))
	if err != nil {
		t.Fatal(err)
	}
	port := strings.TrimSuffix(strings.TrimPrefix(srv.URL(), "postgres://postgres@127.0.0.1:"), "/postgres?sslmode=disable")
	wants := []string{
		"run --detach --name dbtest-",
		" --publish 127.0.0.1:" + port + ":5432 --env POSTGRES_HOST_AUTH_METHOD=trust postgres:15-bookworm -c max_connections=300\n",
		"kill --signal SIGQUIT dbtest-",
		"wait dbtest-",
		"start dbtest-",
	}
	for _, w := range wants {
		if !strings.Contains(string(calls), w) {
			t.Errorf("docker calls lack %q; calls:\n%s", w, calls)
		}
	}
}

// checkCrashAndRestart writes a row, crashes the server, checks it refuses connections, starts it again and
// reads the row back.
func checkCrashAndRestart(t *testing.T, srv *dbtest.Server) {
	t.Helper()
	ctx := context.Background()
	conn := mustConnect(t, srv.URL())
	if _, err := conn.Exec(ctx, "CREATE TABLE widgets (name text)"); err != nil {
		t.Fatal(err)
	}
	// Acknowledged before the crash, so it must be there after it.
	if _, err := conn.Exec(ctx, "INSERT INTO widgets VALUES ('acked')"); err != nil {
		t.Fatal(err)
	}

	srv.Stop(t)
	if err := conn.Ping(ctx); err == nil {
		t.Error("Ping on a connection opened before Stop succeeded")
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if c, err := pgx.Connect(cctx, srv.URL()); err == nil {
		c.Close(ctx)
		t.Fatal("Connect after Stop succeeded")
	}

	srv.Start(t)
	var got string
	if err := mustConnect(t, srv.URL()).QueryRow(ctx, "SELECT name FROM widgets").Scan(&got); err != nil {
		t.Fatalf("read after Start: %v", err)
	}
	if got != "acked" {
		t.Errorf("row after Stop+Start = %q, want %q", got, "acked")
	}
}

func TestStartStandalone(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("Settings", func(t *testing.T) {
		t.Parallel()
		srv, err := dbtest.StartStandalone("work_mem=7MB", "max_wal_size=2GB")
		if err != nil {
			t.Fatal(err)
		}
		conn := mustConnect(t, srv.URL())
		for setting, want := range map[string]string{"work_mem": "7MB", "max_wal_size": "2GB", "fsync": "on"} {
			var got string
			if err := conn.QueryRow(ctx, "SELECT current_setting($1)", setting).Scan(&got); err != nil {
				t.Fatal(err)
			}
			if got != want {
				t.Errorf("%s = %q, want %q", setting, got, want)
			}
		}
		if want := fmt.Sprintf(":%d/", srv.Port()); !strings.Contains(srv.URL(), want) {
			t.Errorf("URL %q does not hold Port %d", srv.URL(), srv.Port())
		}
		conn.Close(ctx)
		if err := srv.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		if c, err := pgx.Connect(cctx, srv.URL()); err == nil {
			c.Close(ctx)
			t.Error("Connect after Close succeeded")
		}
	})

	t.Run("BadSetting", func(t *testing.T) {
		t.Parallel()
		for _, s := range []string{"work_mem", "=1", "work_mem=1 -c fsync=off", "x='y'"} {
			if srv, err := dbtest.StartStandalone(s); err == nil {
				srv.Close()
				t.Errorf("StartStandalone(%q) succeeded", s)
			}
		}
	})
}
