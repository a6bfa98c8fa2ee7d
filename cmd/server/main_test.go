package main_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/ybrest/testsapi/internal/dbtest"
)

// These tests run the server binary as a separate process, the way it is
// deployed: configured by the environment, logging JSON to stdout, stopped
// by signals. They check what only the whole process can get right: start-up
// against a missing or shared database, graceful shutdown, and the exit code.

func TestMain(m *testing.M) { dbtest.Main(m) }

// Generous deadlines: the machine may be small and busy with -race builds.
const (
	startWithin = 60 * time.Second // until the process logs "listening" or "database ready"
	exitWithin  = 30 * time.Second // for a process that should exit on its own
)

// defaultEnv is every process's environment before the test's own
// variables, which override it (exec.Cmd keeps the last of duplicate keys).
// Nothing is inherited, so neither the developer's shell (DATABASE_URL,
// PGPASSWORD, ...) nor the defaults' port 8080 can leak in.
var defaultEnv = []string{
	"HTTP_ADDR=127.0.0.1:0",
	"STARTUP_TIMEOUT=30s",
	"SHUTDOWN_TIMEOUT=15s",
	"REQUEST_TIMEOUT=5s",
	"DB_CONNECT_TIMEOUT=2s",
}

// binary is the server, built once per test process.
var binary = sync.OnceValues(buildBinary)

// mustBinary returns the path of the server binary, building it on first use.
func mustBinary(t *testing.T) string {
	t.Helper()
	path, err := binary()
	if err != nil {
		t.Fatalf("build the server: %v", err)
	}
	return path
}

// buildBinary runs go build on this package. dbtest.Main ends the process
// with os.Exit, so nothing could remove a fresh temporary directory after
// the tests; instead the binary goes to one place per checkout in the
// user's cache, replaced (atomically, so a concurrent run never executes a
// half-written file) by every run.
func buildBinary() (string, error) {
	wd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("no cache directory for the server binary: %w", err)
	}
	sum := sha256.Sum256([]byte(wd))
	dir := filepath.Join(cache, "testsapi-servertest", fmt.Sprintf("%x", sum[:8]))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	tmp := filepath.Join(dir, fmt.Sprintf("server.%d.tmp", os.Getpid()))
	cmd := exec.Command("go", "build", "-o", tmp, ".")
	if out, err := cmd.CombinedOutput(); err != nil {
		os.Remove(tmp)
		return "", fmt.Errorf("go build -o %s .: %w\n%s", tmp, err, out)
	}
	path := filepath.Join(dir, "server")
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return "", err
	}
	return path, nil
}

// proc is one server process and what it has written.
type proc struct {
	cmd    *exec.Cmd
	stdout *output
	stderr *output
	exited chan struct{} // closed once the process has exited and all its output is in
	url    string        // "http://127.0.0.1:PORT", once it listens
	client *http.Client
}

// start starts the server with env added to defaultEnv and kills it in
// t.Cleanup if it is still running. It does not wait for anything.
func start(t *testing.T, env ...string) *proc {
	t.Helper()
	cmd := exec.Command(mustBinary(t))
	cmd.Env = append(append([]string{}, defaultEnv...), env...)
	p := &proc{
		cmd:    cmd,
		stdout: newOutput(),
		stderr: newOutput(),
		exited: make(chan struct{}),
		client: &http.Client{
			Timeout:   30 * time.Second,
			Transport: &http.Transport{MaxIdleConnsPerHost: 64},
		},
	}
	cmd.Stdout, cmd.Stderr = p.stdout, p.stderr
	cmd.WaitDelay = 10 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", cmd.Path, err)
	}
	go func() {
		_ = cmd.Wait() // the exit status is read from cmd.ProcessState
		p.stdout.close()
		p.stderr.close()
		close(p.exited)
	}()
	t.Cleanup(func() {
		p.client.CloseIdleConnections()
		if !p.hasExited() {
			_ = cmd.Process.Kill()
			<-p.exited
		}
		if t.Failed() {
			t.Logf("server pid %d (%s)\nstdout, without request lines:\n%s\nstderr:\n%s",
				cmd.Process.Pid, cmd.ProcessState, p.stdout.summary(), p.stderr.text())
		}
	})
	return p
}

// startServer starts the server and waits until it listens.
func startServer(t *testing.T, env ...string) *proc {
	t.Helper()
	p := start(t, env...)
	p.waitListening(t)
	return p
}

// waitListening waits for the "listening" log line and takes the address
// from it.
func (p *proc) waitListening(t *testing.T) {
	t.Helper()
	e := p.waitLog(t, "listening", 1, startWithin)[0]
	addr, _ := e["addr"].(string)
	if addr == "" {
		t.Fatalf(`"listening" log line without addr: %v`, e)
	}
	p.url = "http://" + addr
}

// startReady starts the server on databaseURL and waits until GET /readyz
// answers 200.
func startReady(t *testing.T, databaseURL string, env ...string) *proc {
	t.Helper()
	p := startServer(t, append([]string{"DATABASE_URL=" + databaseURL}, env...)...)
	p.waitReady(t, startWithin)
	return p
}

func (p *proc) hasExited() bool {
	select {
	case <-p.exited:
		return true
	default:
		return false
	}
}

// waitExit waits for the process to exit on its own and returns its exit
// code, failing the test if it is still running after within.
func (p *proc) waitExit(t *testing.T, within time.Duration) int {
	t.Helper()
	select {
	case <-p.exited:
		return p.cmd.ProcessState.ExitCode()
	case <-time.After(within):
		t.Fatalf("server pid %d has not exited within %s", p.cmd.Process.Pid, within)
		return 0
	}
}

// waitReady polls GET /readyz until it answers 200.
func (p *proc) waitReady(t *testing.T, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		r, err := p.do(t.Context(), http.MethodGet, "/readyz", "")
		if err == nil && r.status == http.StatusOK {
			return
		}
		if p.hasExited() {
			t.Fatalf("server exited (%s) before it was ready", p.cmd.ProcessState)
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET /readyz not 200 within %s; last answer %d %s, error %v", within, r.status, r.body, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// logEntry is one JSON line of the server's log.
type logEntry map[string]any

// waitLog waits until stdout holds at least n log entries whose msg is msg
// and returns them. It fails if the process exits or within passes first.
func (p *proc) waitLog(t *testing.T, msg string, n int, within time.Duration) []logEntry {
	t.Helper()
	timeout := time.NewTimer(within)
	defer timeout.Stop()
	var found []logEntry
	next := 0
	for {
		lines, changed := p.stdout.linesFrom(next)
		next += len(lines)
		for _, l := range lines {
			if e, ok := parseEntry(l); ok && e["msg"] == msg {
				found = append(found, e)
			}
		}
		if len(found) >= n {
			return found
		}
		select {
		case <-changed:
		case <-p.exited:
			if lines, _ := p.stdout.linesFrom(next); len(lines) > 0 {
				continue // output that came with the exit
			}
			t.Fatalf("server exited (%s) after logging %q %d times, want %d", p.cmd.ProcessState, msg, len(found), n)
		case <-timeout.C:
			t.Fatalf("server logged %q %d times in %s, want %d", msg, len(found), within, n)
		}
	}
}

// logEntries returns every JSON line the process has written to stdout.
func (p *proc) logEntries() []logEntry {
	lines, _ := p.stdout.linesFrom(0)
	var out []logEntry
	for _, l := range lines {
		if e, ok := parseEntry(l); ok {
			out = append(out, e)
		}
	}
	return out
}

func parseEntry(line string) (logEntry, bool) {
	var e logEntry
	if err := json.Unmarshal([]byte(line), &e); err != nil {
		return nil, false
	}
	return e, true
}

// reply is a complete response.
type reply struct {
	status int
	header http.Header
	body   []byte
}

// errIncomplete marks a response whose status arrived but whose body did not
// arrive whole.
var errIncomplete = errors.New("incomplete response")

// do sends one request. An error means no complete response: either none
// at all, or (errIncomplete) a cut-off body. header holds name, value pairs.
func (p *proc) do(ctx context.Context, method, path, body string, header ...string) (reply, error) {
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, p.url+path, rd)
	if err != nil {
		return reply{}, err
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	res, err := p.client.Do(req)
	if err != nil {
		return reply{}, err
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		return reply{}, fmt.Errorf("%w: %s %s: %d with body cut after %d bytes: %w",
			errIncomplete, method, path, res.StatusCode, len(b), err)
	}
	return reply{status: res.StatusCode, header: res.Header, body: b}, nil
}

// mustDo is do that fails the test when no complete response comes back.
func (p *proc) mustDo(t *testing.T, method, path, body string, header ...string) reply {
	t.Helper()
	r, err := p.do(t.Context(), method, path, body, header...)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	return r
}

// test is a row as the API returns it.
type test struct {
	ID   int32  `json:"id"`
	Name string `json:"name"`
}

// nameBody is the POST /tests body that creates name.
func nameBody(name string) string {
	b, _ := json.Marshal(map[string]string{"name": name})
	return string(b)
}

// mustCreate creates name through p and returns the row.
func mustCreate(t *testing.T, p *proc, name string) test {
	t.Helper()
	r := p.mustDo(t, http.MethodPost, "/tests", nameBody(name))
	if r.status != http.StatusCreated {
		t.Fatalf("POST /tests %q: %d %s, want 201", name, r.status, r.body)
	}
	return decodeTest(t, r)
}

func decodeTest(t *testing.T, r reply) test {
	t.Helper()
	var got test
	if err := json.Unmarshal(r.body, &got); err != nil || got.ID < 1 {
		t.Fatalf("201 body %q: not a row (%v)", r.body, err)
	}
	return got
}

// checkUnavailable checks that r is a 503 problem with Retry-After.
func checkUnavailable(t *testing.T, what string, r reply) {
	t.Helper()
	if r.status != http.StatusServiceUnavailable {
		t.Errorf("%s: %d %s, want 503", what, r.status, r.body)
		return
	}
	if r.header.Get("Retry-After") == "" {
		t.Errorf("%s: 503 without Retry-After", what)
	}
	if ct := r.header.Get("Content-Type"); ct != "application/problem+json" {
		t.Errorf("%s: 503 with Content-Type %q, want application/problem+json", what, ct)
	}
	var pr struct {
		Status int `json:"status"`
	}
	if err := json.Unmarshal(r.body, &pr); err != nil || pr.Status != http.StatusServiceUnavailable {
		t.Errorf("%s: 503 body %q is not a problem with status 503 (%v)", what, r.body, err)
	}
}

// mustRows reads table test directly, bypassing the service: name to id.
func mustRows(t *testing.T, databaseURL string) map[string]int32 {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, databaseURL)
	if err != nil {
		t.Fatalf("connect to check the table: %v", err)
	}
	defer conn.Close(context.Background())
	rows, _ := conn.Query(ctx, `SELECT id, name FROM test`)
	got := map[string]int32{}
	var id int32
	var name string
	_, err = pgx.ForEachRow(rows, []any{&id, &name}, func() error {
		got[name] = id
		return nil
	})
	if err != nil {
		t.Fatalf("read table test: %v", err)
	}
	return got
}

// checkAcknowledged reads table test directly and fails for every name in
// acked (name to the id a 201 gave) that is missing or has another id. It
// returns the table, name to id.
func checkAcknowledged(t *testing.T, databaseURL string, acked map[string]int32) map[string]int32 {
	t.Helper()
	rows := mustRows(t, databaseURL)
	for name, id := range acked {
		if got, ok := rows[name]; !ok {
			t.Errorf("%q was acknowledged with id %d but is not in the table", name, id)
		} else if got != id {
			t.Errorf("%q was acknowledged with id %d but has id %d in the table", name, id, got)
		}
	}
	return rows
}

// closedPort returns a 127.0.0.1 port on which connections are refused. It
// binds a socket without listening: nothing answers there, and, unlike a
// port that was listened on and closed, no parallel test (or dbtest's
// servers) can take it while the test runs.
func closedPort(t *testing.T) int {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatalf("socket: %v", err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatalf("bind: %v", err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatalf("getsockname: %v", err)
	}
	return sa.(*syscall.SockaddrInet4).Port
}

// output collects what a process writes to one stream, split into lines,
// and lets tests wait for more.
type output struct {
	mu      sync.Mutex
	partial []byte
	lines   []string
	changed chan struct{} // closed and replaced on every complete line
}

func newOutput() *output { return &output{changed: make(chan struct{})} }

func (o *output) Write(b []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.partial = append(o.partial, b...)
	added := false
	for {
		i := bytes.IndexByte(o.partial, '\n')
		if i < 0 {
			break
		}
		o.lines = append(o.lines, string(o.partial[:i]))
		o.partial = o.partial[i+1:]
		added = true
	}
	if added {
		close(o.changed)
		o.changed = make(chan struct{})
	}
	return len(b), nil
}

// close keeps a last line that has no newline.
func (o *output) close() {
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.partial) > 0 {
		o.lines = append(o.lines, string(o.partial))
		o.partial = nil
	}
}

// linesFrom returns the complete lines from index i on, and a channel that
// is closed when more arrive.
func (o *output) linesFrom(i int) ([]string, <-chan struct{}) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]string(nil), o.lines[min(i, len(o.lines)):]...), o.changed
}

func (o *output) text() string {
	lines, _ := o.linesFrom(0)
	return strings.Join(lines, "\n")
}

// summary is the output without access log lines, for failure messages.
func (o *output) summary() string {
	lines, _ := o.linesFrom(0)
	var keep []string
	skipped := 0
	for _, l := range lines {
		if e, ok := parseEntry(l); ok && e["msg"] == "request" {
			skipped++
			continue
		}
		keep = append(keep, l)
	}
	return strings.Join(keep, "\n") + fmt.Sprintf("\n(%d request lines left out)", skipped)
}

// startLoad runs workers goroutines that each call create with fresh names
// ("load-<worker>-<n>") until create returns false or the returned stop is
// called. stop waits for the workers; it also runs in t.Cleanup, so that a
// failing test does not leave them running into the other cleanups.
func startLoad(t *testing.T, workers int, create func(name string) bool) (stop func()) {
	t.Helper()
	done := make(chan struct{})
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-done:
					return
				default:
				}
				if !create(fmt.Sprintf("load-%d-%d", w, i)) {
					return
				}
			}
		})
	}
	var once sync.Once
	stop = func() { once.Do(func() { close(done); wg.Wait() }) }
	t.Cleanup(stop)
	return stop
}
