package testsapi_test

import (
	"bytes"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestDevScript runs `make dev`'s script as a terminal would: it must build
// and start the server against a throwaway PostgreSQL that answers
// requests, and a Ctrl-C (SIGINT to the whole foreground process group)
// must stop the server gracefully, stop PostgreSQL and delete its files.
func TestDevScript(t *testing.T) {
	t.Parallel()
	cmd := exec.Command("bash", "scripts/dev.sh")
	for _, kv := range os.Environ() {
		// The developer's own database settings must not leak in.
		if !strings.HasPrefix(kv, "DATABASE_URL=") && !strings.HasPrefix(kv, "PG") && !strings.HasPrefix(kv, "METRICS_ADDR=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, "HTTP_ADDR=127.0.0.1:0")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // a job of its own, as in a shell
	cmd.WaitDelay = 10 * time.Second
	addr := make(chan string, 1)
	var stderr lockedBuffer
	logs := &lineWriter{line: func(l []byte) {
		var e struct{ Msg, Addr string }
		if json.Unmarshal(l, &e) == nil && e.Msg == "listening" {
			addr <- e.Addr
		}
	}}
	cmd.Stdout, cmd.Stderr = logs, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{}) // closed once the script has exited; then waitErr is its error
	var waitErr error
	go func() {
		waitErr = cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("stderr:\n%s\nstdout:\n%s", stderr.String(), logs.String())
		}
		select {
		case <-exited:
		default:
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM) // the script cleans up on TERM too
			<-exited
		}
	})

	var base string
	select {
	case a := <-addr:
		base = "http://" + a
	case <-exited:
		t.Fatalf("the script exited before the server listened: %v", waitErr)
	case <-time.After(5 * time.Minute): // it builds the server first, on a busy machine
		t.Fatal("no \"listening\" log line within 5 minutes")
	}
	m := regexp.MustCompile(`on 127\.0\.0\.1:(\d+), data in (\S+) `).FindStringSubmatch(stderr.String())
	if m == nil {
		t.Fatalf("the script did not say where PostgreSQL runs")
	}
	pgAddr, dir := "127.0.0.1:"+m[1], m[2]

	deadline := time.Now().Add(time.Minute)
	for {
		res, err := http.Get(base + "/readyz")
		if err == nil {
			res.Body.Close()
			if res.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET /readyz not 200 within a minute: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	res, err := http.Post(base+"/tests", "application/json", strings.NewReader(`{"name":"dev"}`))
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusCreated {
		t.Fatalf("POST /tests: %d, want 201", res.StatusCode)
	}

	if err := syscall.Kill(-cmd.Process.Pid, syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case <-exited:
		if waitErr != nil {
			t.Errorf("the script exited with %v after Ctrl-C, want 0", waitErr)
		}
	case <-time.After(time.Minute):
		t.Fatal("the script still runs a minute after Ctrl-C")
	}
	if !strings.Contains(logs.String(), `"msg":"stopped"`) {
		t.Error("the server did not log \"stopped\": it was not shut down gracefully")
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("%s is still there after Ctrl-C (%v)", dir, err)
	}
	if c, err := net.DialTimeout("tcp", pgAddr, time.Second); err == nil {
		c.Close()
		t.Errorf("PostgreSQL still answers on %s after Ctrl-C", pgAddr)
	}
}

// lineWriter keeps what is written and calls line with each complete line.
type lineWriter struct {
	lockedBuffer
	part []byte
	line func([]byte)
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.lockedBuffer.Write(p)
	w.part = append(w.part, p...)
	for {
		i := bytes.IndexByte(w.part, '\n')
		if i < 0 {
			return len(p), nil
		}
		w.line(w.part[:i])
		w.part = w.part[i+1:]
	}
}

// lockedBuffer is a strings.Builder safe for a writer and a reader at once.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
