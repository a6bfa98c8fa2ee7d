// Package dbtest gives tests a real PostgreSQL: a fresh schema on a shared database for ordinary tests, and a
// dedicated server that a single test can crash and restart for fault tests.
//
// The shared database is TEST_DATABASE_URL when set; otherwise one throwaway server per test process, started
// from the PostgreSQL server binaries found on the machine or, on a machine with Docker but no binaries, in a
// disposable container (TEST_DATABASE_BACKEND=binaries|docker forces one). Tests never skip: without a database they fail
// and say how to get one, because a skipped database test looks like a passing one.
package dbtest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// envURL names the variable that points the tests at an existing database instead of a throwaway one.
const envURL = "TEST_DATABASE_URL"

// howTo ends every "no database" failure so that the reader knows the two ways to fix it.
const howTo = "set " + envURL + "=postgres://user:password@127.0.0.1:5432/dbname?sslmode=disable, " +
	"or install the PostgreSQL server binaries (e.g. `apt-get install postgresql`) or Docker, so the tests can start a throwaway server"

// mainCalled records whether the package's TestMain went through Main; without it nothing would stop the
// shared throwaway server, which would then outlive the test process.
var mainCalled atomic.Bool

// shared is the lazily started database that NewSchema carves schemas out of.
var shared struct {
	once sync.Once
	url  string
	err  error
	inst backend // nil when TEST_DATABASE_URL is used or the start failed
}

// Main runs the package's tests and then stops the shared throwaway server if one was started. Call it from
// TestMain: func TestMain(m *testing.M) { dbtest.Main(m) }. It calls os.Exit itself, because the exit code
// must account for a failure to stop the server.
func Main(m *testing.M) {
	mainCalled.Store(true)
	code := m.Run()
	if err := errors.Join(stopShared(), stopLogical()); err != nil {
		fmt.Fprintln(os.Stderr, "dbtest:", err)
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}

// stopShared stops the throwaway server, if any, and removes its files.
func stopShared() error {
	// Running the Once with a no-op both waits for a start still in flight and makes any later NewSchema
	// see "no server" instead of starting a new one that nobody would stop.
	shared.once.Do(func() { shared.err = errors.New("dbtest.Main has already stopped the shared server") })
	if shared.inst == nil {
		return nil
	}
	return shared.inst.destroy("fast")
}

// sharedURL returns the URL of the shared database, starting the throwaway server on first use.
func sharedURL(t testing.TB) string {
	t.Helper()
	if u := os.Getenv(envURL); u != "" {
		return u
	}
	if !mainCalled.Load() {
		t.Fatalf("dbtest: %s is not set and the package has no TestMain calling dbtest.Main, "+
			"which must stop the throwaway server; add: func TestMain(m *testing.M) { dbtest.Main(m) }", envURL)
	}
	shared.once.Do(func() {
		// The shared server only holds data that dies with the test process, so durability is traded for speed.
		inst, err := newBackend(false)
		if err != nil {
			shared.err = err
			return
		}
		shared.inst = inst
		shared.url = inst.url()
	})
	if shared.err != nil {
		t.Fatalf("dbtest: no database: %v\nTo fix: %s", shared.err, howTo)
	}
	return shared.url
}

// NewSchema creates a fresh, uniquely named schema on the shared database and returns a connection URL whose
// search_path is that schema, so parallel tests can use the same table names without seeing each other's
// rows. The schema is dropped with CASCADE in t.Cleanup.
func NewSchema(t testing.TB) string {
	t.Helper()
	base := sharedURL(t)

	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		t.Fatalf("dbtest: random schema name: %v", err)
	}
	name := "t_" + hex.EncodeToString(b)
	ident := pgx.Identifier{name}.Sanitize()

	if err := exec1(base, "CREATE SCHEMA "+ident); err != nil {
		fix := howTo
		if os.Getenv(envURL) != "" {
			fix = "check that " + envURL + " points at a running PostgreSQL where its user may create schemas, or " +
				"unset it to have the tests start a throwaway server from the PostgreSQL server binaries " +
				"(e.g. `apt-get install postgresql`)"
		}
		t.Fatalf("dbtest: create schema %s: %v\nTo fix: %s", name, err, fix)
	}
	t.Cleanup(func() {
		// Cleanups run last-in first-out, so pools the test opened after NewSchema are closed by now and
		// DROP does not wait on their locks; the timeout turns a leaked transaction into an error, not a hang.
		if err := exec1(base, "DROP SCHEMA IF EXISTS "+ident+" CASCADE"); err != nil {
			t.Errorf("dbtest: drop schema %s: %v", name, err)
		}
	})

	u, err := withSearchPath(base, name)
	if err != nil {
		t.Fatalf("dbtest: %v", err)
	}
	return u
}

// withSearchPath adds search_path to a connection string; pgx sends parameters it does not know as run-time
// parameters, so every connection made from the result starts in the schema.
func withSearchPath(base, schema string) (string, error) {
	if !strings.HasPrefix(base, "postgres://") && !strings.HasPrefix(base, "postgresql://") {
		// A keyword/value DSN: pgx lets a later keyword override an earlier one.
		return base + " search_path=" + schema, nil
	}
	u, err := url.Parse(base)
	if err != nil {
		return "", fmt.Errorf("parse %s: %w", envURL, err)
	}
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	return u.String(), nil
}

// exec1 runs one statement on a connection of its own. A connection per call (rather than a shared pool)
// keeps the helper free of state that parallel tests would have to share.
func exec1(connURL, sql string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, connURL)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	_, err = conn.Exec(ctx, sql)
	return err
}

// Server is a dedicated throwaway PostgreSQL instance that a single test owns and can stop and start, for
// tests of what the code under test does when its database crashes and comes back.
type Server struct {
	inst backend

	mu      sync.Mutex // serialises Stop, Start and the cleanup, which may come from different goroutines
	running bool
}

// NewServer initdb's and starts a dedicated instance on a free 127.0.0.1 port; it is stopped and removed in
// t.Cleanup. It needs the server binaries or Docker even when TEST_DATABASE_URL is set, since it must own the
// process. Unlike the shared server it keeps fsync on, because fault tests check that acknowledged writes
// survive.
func NewServer(t testing.TB) *Server {
	t.Helper()
	inst, err := newBackend(true)
	if err != nil {
		t.Fatalf("dbtest: NewServer: %v\nTo fix: install the PostgreSQL server binaries (e.g. `apt-get install "+
			"postgresql`) or Docker; NewServer needs one of them even when %s is set", err, envURL)
	}
	s := &Server{inst: inst, running: true}
	t.Cleanup(func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		mode := "immediate" // the data is thrown away, so there is nothing to shut down cleanly
		if !s.running {
			mode = ""
		}
		if err := inst.destroy(mode); err != nil {
			t.Errorf("dbtest: %v", err)
		}
		s.running = false
	})
	return s
}

// URL returns the server's connection URL; it stays the same across Stop and Start.
func (s *Server) URL() string { return s.inst.url() }

// Stop kills the server with pg_ctl stop -m immediate: a crash, not a clean shutdown, so that recovery from
// the write-ahead log is what Start exercises.
func (s *Server) Stop(t testing.TB) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.running {
		t.Fatalf("dbtest: Stop: %s is not running", s.inst)
	}
	if err := s.inst.stop("immediate"); err != nil {
		t.Fatalf("dbtest: Stop: %v", err)
	}
	s.running = false
}

// Start starts the server again on the same port and data directory, so the URL clients hold becomes valid
// again, and returns once it accepts connections.
func (s *Server) Start(t testing.TB) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.running {
		t.Fatalf("dbtest: Start: %s is already running", s.inst)
	}
	if err := s.inst.start(); err != nil {
		t.Fatalf("dbtest: Start: %v", err)
	}
	s.running = true
	if err := s.inst.waitReady(60 * time.Second); err != nil {
		t.Fatalf("dbtest: Start: %v", err)
	}
}

// Standalone is a throwaway server that no test owns, for tools such as the benchmark harness (bench/): the
// same initdb and pg_ctl steps as the tests' servers, with fsync on and the caller's settings on top.
type Standalone struct{ inst *instance }

// StartStandalone initdb's and starts a server on a free 127.0.0.1 port. Each setting is "name=value" without
// spaces or quotes, passed to the server as -c name=value. Close stops the server and removes its files.
func StartStandalone(settings ...string) (*Standalone, error) {
	for _, kv := range settings {
		if name, _, ok := strings.Cut(kv, "="); !ok || name == "" || strings.ContainsAny(kv, " '\"\t\n\\") {
			return nil, fmt.Errorf("dbtest: setting %q is not name=value without spaces or quotes", kv)
		}
	}
	inst, err := newInstance(true, settings...)
	if err != nil {
		return nil, fmt.Errorf("dbtest: %w", err)
	}
	return &Standalone{inst: inst}, nil
}

// URL returns the server's connection URL (user postgres, database postgres, trust authentication).
func (s *Standalone) URL() string { return s.inst.url() }

// Port returns the server's 127.0.0.1 port, for clients that take host and port apart (pgbench, psql).
func (s *Standalone) Port() int { return s.inst.port }

// Close stops the server and removes its files.
func (s *Standalone) Close() error { return s.inst.destroy("fast") }

// BinDir returns the directory with initdb and pg_ctl, or "" if none is found. Debian keeps them off PATH in
// /usr/lib/postgresql/<version>/bin, hence the search beyond PATH.
func BinDir() string { return binDir() }

var binDir = sync.OnceValue(func() string {
	if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
		// Debian's libpq-dev ships a pg_config that names the server's bindir even without the server.
		if d := strings.TrimSpace(string(out)); hasServerBinaries(d) {
			return d
		}
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool { return versionOf(dirs[i]) > versionOf(dirs[j]) })
	for _, d := range dirs {
		if hasServerBinaries(d) {
			return d
		}
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		// PATH often holds a symlink; pg_ctl and postgres sit beside the real file.
		if real, err := filepath.EvalSymlinks(p); err == nil && hasServerBinaries(filepath.Dir(real)) {
			return filepath.Dir(real)
		}
		if hasServerBinaries(filepath.Dir(p)) {
			return filepath.Dir(p)
		}
	}
	return ""
})

// versionOf orders /usr/lib/postgresql/<version>/bin numerically, so that 15 beats 9.6.
func versionOf(dir string) float64 {
	v, _ := strconv.ParseFloat(filepath.Base(filepath.Dir(dir)), 64)
	return v
}

func hasServerBinaries(dir string) bool {
	for _, name := range []string{"initdb", "pg_ctl", "postgres"} {
		if fi, err := os.Stat(filepath.Join(dir, name)); err != nil || fi.IsDir() {
			return false
		}
	}
	return dir != ""
}

// instance is one throwaway server: its files live under dir, which is removed when it is destroyed.
type instance struct {
	bin   string
	dir   string // root of everything below; chowned to postgres when running as root
	data  string
	sock  string
	log   string
	port  int
	fsync bool
	extra []string            // more server settings, each "name=value"
	cred  *syscall.Credential // who runs the binaries: postgres refuses to run as root
}

// newInstance initdb's and starts a server. fsync=false is for the shared server only; settings are more
// "name=value" server settings.
func newInstance(fsync bool, settings ...string) (*instance, error) {
	bin := BinDir()
	if bin == "" {
		return nil, errors.New("no PostgreSQL server binaries (initdb, pg_ctl, postgres) found via pg_config, " +
			"/usr/lib/postgresql/*/bin or PATH")
	}
	dir, err := os.MkdirTemp("", "dbtest-")
	if err != nil {
		return nil, err
	}
	in := &instance{
		bin:   bin,
		dir:   dir,
		data:  filepath.Join(dir, "data"),
		sock:  filepath.Join(dir, "sock"),
		log:   filepath.Join(dir, "server.log"),
		fsync: fsync,
		extra: settings,
	}
	if err := in.setup(); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	// Another process may take the port between choosing it and the server binding it; try a fresh one.
	for attempt := 1; ; attempt++ {
		if in.port, err = freePort(); err != nil {
			break
		}
		if err = in.start(); err == nil || attempt == 3 || !strings.Contains(err.Error(), "already in use") {
			break
		}
		releasePort(in.port)
	}
	if err == nil {
		err = in.waitReady(60 * time.Second)
	}
	if err != nil {
		in.destroy("immediate") // a server pg_ctl gave up waiting for may still be running
		return nil, err
	}
	if err := in.watch(); err != nil {
		in.destroy("immediate")
		return nil, err
	}
	return in, nil
}

// watch starts a watchdog that outlives this process: once the process is gone without having destroyed the
// server (killed by a signal, a `go test -timeout` panic, os.Exit before cleanup), it stops the server and
// removes its files, so that no orphaned PostgreSQL keeps running. After a normal destroy it finds nothing to
// stop. It runs as the server's user, in a process group of its own so that a Ctrl-C to the tests does not
// stop it, and without our stdout and stderr, so that `go test` does not wait for it.
func (in *instance) watch() error {
	script := fmt.Sprintf(`while [ -d /proc/%d ]; do sleep 1; done
'%s' stop -m immediate -D '%s' >/dev/null 2>&1
rm -rf '%s'`, os.Getpid(), filepath.Join(in.bin, "pg_ctl"), in.data, in.dir)
	cmd := exec.Command("/bin/sh", "-c", script)
	cmd.Dir = in.dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: in.cred}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start the watchdog of the %s: %w", in, err)
	}
	// It exits only after this process has: nothing here waits for it.
	return cmd.Process.Release()
}

// setup creates the directories and the cluster.
func (in *instance) setup() error {
	if err := os.Mkdir(in.sock, 0o700); err != nil {
		return err
	}
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			return fmt.Errorf("running as root, and PostgreSQL refuses to; need a postgres user to run it as: %w", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		in.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		err = filepath.WalkDir(in.dir, func(p string, _ fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			return os.Lchown(p, uid, gid)
		})
		if err != nil {
			return err
		}
	}
	// --no-sync skips flushing the fresh cluster to disk: the tests simulate process crashes, not power
	// loss, so the page cache is as good as the disk here. Not every machine has the C.UTF-8 locale.
	args := []string{"-D", in.data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"}
	out, err := in.run("initdb", append(args, "--locale=C.UTF-8")...)
	if err != nil {
		os.RemoveAll(in.data)
		var out2 []byte
		if out2, err = in.run("initdb", append(args, "--locale=C")...); err != nil {
			return fmt.Errorf("initdb: %w\n%s\n%s", err, out, out2)
		}
	}
	return nil
}

// start runs the server on in.port and waits for pg_ctl to see it ready.
func (in *instance) start() error {
	opts := fmt.Sprintf("-p %d -k '%s' -c listen_addresses=127.0.0.1 -c max_connections=300", in.port, in.sock)
	if !in.fsync {
		opts += " -c fsync=off"
	}
	for _, kv := range in.extra {
		opts += " -c " + kv
	}
	// -l sends the server's output to a file: if it inherited our pipes, collecting pg_ctl's output would
	// wait for the server to exit.
	out, err := in.run("pg_ctl", "start", "-w", "-t", "60", "-D", in.data, "-l", in.log, "-o", opts)
	if err != nil {
		return fmt.Errorf("pg_ctl start on port %d: %w\n%s\nserver log (%s), last lines:\n%s",
			in.port, err, out, in.log, tail(in.log, 30))
	}
	return nil
}

// waitReady returns once a client can connect, which pg_ctl -w does not promise after crash recovery.
func (in *instance) waitReady(timeout time.Duration) error {
	return waitForConnection(in, timeout, func() string { return tail(in.log, 30) })
}

// waitForConnection polls b with a query until it answers or timeout passes; the error then ends with the
// last lines of the server's log.
func waitForConnection(b backend, timeout time.Duration, logTail func() string) error {
	deadline := time.Now().Add(timeout)
	for {
		err := exec1(b.url(), "SELECT 1")
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s does not accept connections: %w\nserver log, last lines:\n%s", b, err, logTail())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop shuts the server down; mode is a pg_ctl -m mode.
func (in *instance) stop(mode string) error {
	out, err := in.run("pg_ctl", "stop", "-w", "-t", "60", "-m", mode, "-D", in.data)
	if err != nil {
		return fmt.Errorf("pg_ctl stop -m %s: %w\n%s", mode, err, out)
	}
	return nil
}

// destroy stops the server unless mode is "" and removes its files.
func (in *instance) destroy(mode string) error {
	var err error
	if mode != "" {
		err = in.stop(mode)
	}
	releasePort(in.port)
	if rmErr := os.RemoveAll(in.dir); err == nil {
		err = rmErr
	}
	return err
}

func (in *instance) String() string { return fmt.Sprintf("server on port %d", in.port) }

func (in *instance) url() string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", in.port)
}

// run runs one of the server binaries, as postgres when we are root, and returns its combined output.
func (in *instance) run(name string, args ...string) ([]byte, error) {
	cmd := exec.Command(filepath.Join(in.bin, name), args...)
	cmd.Dir = in.dir // the postgres user may not be allowed into the test's working directory
	for _, kv := range os.Environ() {
		// PGPORT, PGOPTIONS and friends from the caller's shell must not leak into our private server.
		if !strings.HasPrefix(kv, "PG") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	if in.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: in.cred}
	}
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	err := cmd.Run()
	return out.Bytes(), err
}

// tail returns the last n lines of a file, for failure messages.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "(" + err.Error() + ")"
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// ports holds the ports of servers this process runs, including stopped ones, so that a fresh server never
// takes the port a stopped Server will come back on.
var ports struct {
	mu    sync.Mutex
	inUse map[int]bool
}

// freePort picks a port nothing listens on by letting the kernel choose one.
func freePort() (int, error) {
	ports.mu.Lock()
	defer ports.mu.Unlock()
	for range 20 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if !ports.inUse[port] {
			if ports.inUse == nil {
				ports.inUse = map[int]bool{}
			}
			ports.inUse[port] = true
			return port, nil
		}
	}
	return 0, errors.New("no free 127.0.0.1 port")
}

func releasePort(port int) {
	ports.mu.Lock()
	defer ports.mu.Unlock()
	delete(ports.inUse, port)
}

// WaitFor polls cond until it holds, and fails the test if it does not hold within the given time; what says
// what was awaited, for the failure message.
func WaitFor(t testing.TB, what string, within time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("no %s within %s", what, within)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Querier is what LockWaits runs its query on: a pgx connection, pool or transaction.
type Querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// LockWaits returns how many statements wait for a lock on table in the current schema (the test's own,
// with NewSchema), so that a test can wait until its statements are blocked, or no longer are.
func LockWaits(ctx context.Context, q Querier, table string) (int, error) {
	const sql = `
SELECT count(*)
FROM pg_locks l
JOIN pg_class c ON c.oid = l.relation
WHERE c.relname = $1
  AND c.relnamespace = current_schema()::regnamespace
  AND NOT l.granted`
	var n int
	err := q.QueryRow(ctx, sql, table).Scan(&n)
	return n, err
}
