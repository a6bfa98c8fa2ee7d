package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// buildFlags are the Dockerfile's release flags, plus the pprof tag when
// profiling.
func buildFlags(pprof bool) []string {
	f := []string{"-trimpath", "-ldflags=-s -w"}
	if pprof {
		f = append(f, "-tags=pprof")
	}
	return f
}

// server is the service under test, running as a process of its own.
type server struct {
	cmd   *exec.Cmd
	base  string // http://127.0.0.1:port
	pprof string // the same for net/http/pprof, "" unless profiling
	log   string // the server's stdout and stderr
	done  chan struct{}
	err   error // Wait's result, once done is closed
}

// buildServer builds the server as the Dockerfile does, into dir, and
// returns the binary's path.
func buildServer(ctx context.Context, dir string, pprof bool) (string, error) {
	root, err := moduleRoot(ctx)
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "server")
	args := append([]string{"build"}, buildFlags(pprof)...)
	build := exec.CommandContext(ctx, "go", append(args, "-o", bin, "./cmd/server")...)
	build.Dir = root
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build: %w\n%s", err, out)
	}
	return bin, nil
}

// serverSeq numbers the servers of one run, so that each has a log of its own.
var serverSeq int

// startServer starts bin (from buildServer) on a free loopback port against
// databaseURL, with the defaults of its configuration but for env, and its
// log in dir. It returns once /readyz answers 200, that is once the server
// has created its table.
func startServer(ctx context.Context, bin, dir, databaseURL string, pprof bool, env []string) (*server, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	serverSeq++
	s := &server{
		base: "http://127.0.0.1:" + port,
		log:  filepath.Join(dir, fmt.Sprintf("server-%d.log", serverSeq)),
		done: make(chan struct{}),
	}
	logFile, err := os.Create(s.log)
	if err != nil {
		return nil, err
	}
	defer logFile.Close()
	// Only what the server needs, so that a DATABASE_URL or DB_MAX_CONNS in
	// the caller's shell does not change what is measured unnoticed.
	s.cmd = exec.Command(bin)
	// zstd is offered, which the service's defaults do not, for the
	// export-ndjson-zstd workload; no other workload asks for a coding.
	s.cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "DATABASE_URL=" + databaseURL, "HTTP_ADDR=127.0.0.1:" + port,
		"COMPRESSION=gzip,zstd"}
	if pprof {
		pport, err := freePort()
		if err != nil {
			return nil, err
		}
		s.pprof = "http://127.0.0.1:" + pport
		s.cmd.Env = append(s.cmd.Env, "PPROF_ADDR=127.0.0.1:"+pport)
	}
	s.cmd.Env = append(s.cmd.Env, env...)
	// The access log goes to a file, as it would to a container's log: the
	// server pays for writing it, nobody here for reading it.
	s.cmd.Stdout, s.cmd.Stderr = logFile, logFile
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // never outlive the harness
	if err := s.cmd.Start(); err != nil {
		return nil, err
	}
	go func() {
		s.err = s.cmd.Wait()
		close(s.done)
	}()
	if err := s.waitReady(ctx, time.Minute); err != nil {
		_ = s.stop()
		return nil, err
	}
	return s, nil
}

func moduleRoot(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("not inside the module: run the benchmark from the repository (make bench)")
	}
	return filepath.Dir(gomod), nil
}

func freePort() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return strconv.Itoa(l.Addr().(*net.TCPAddr).Port), nil
}

func (s *server) pid() int { return s.cmd.Process.Pid }

func (s *server) waitReady(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, s.base+"/readyz", nil)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-s.done:
			return fmt.Errorf("server exited before it was ready (%v); its log:\n%s", s.err, s.logTail(20))
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("server not ready within %s; its log:\n%s", timeout, s.logTail(20))
		}
	}
}

// stop sends SIGTERM (a graceful shutdown, as in production) and waits;
// it kills the server if it takes longer than its shutdown timeout. Calling
// it again does nothing.
func (s *server) stop() error {
	select {
	case <-s.done:
		return nil
	default:
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(30 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.done
		return errors.New("server did not stop within 30s of SIGTERM; killed")
	}
	if s.err != nil {
		return fmt.Errorf("server exited with %v; its log:\n%s", s.err, s.logTail(20))
	}
	return nil
}

// alive reports an error if the server has exited.
func (s *server) alive() error {
	select {
	case <-s.done:
		return fmt.Errorf("server exited (%v); its log:\n%s", s.err, s.logTail(20))
	default:
		return nil
	}
}

func (s *server) logTail(n int) string {
	b, err := os.ReadFile(s.log)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// memory reads the server's resident set size and its peak (VmHWM) since
// the last resetPeak, in bytes.
func (s *server) memory() (rss, peak int64, err error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", s.pid()))
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var kb int64
		if _, err := fmt.Sscanf(sc.Text(), "VmRSS: %d kB", &kb); err == nil {
			rss = kb << 10
		}
		if _, err := fmt.Sscanf(sc.Text(), "VmHWM: %d kB", &kb); err == nil {
			peak = kb << 10
		}
	}
	if rss == 0 || peak == 0 {
		return 0, 0, fmt.Errorf("no VmRSS or VmHWM in /proc/%d/status", s.pid())
	}
	return rss, peak, sc.Err()
}

// resetPeak sets VmHWM back to the current RSS (Linux 4.0+, proc(5)
// clear_refs "5"), so the next peak is the peak of what follows.
func (s *server) resetPeak() error {
	return os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", s.pid()), []byte("5"), 0)
}
