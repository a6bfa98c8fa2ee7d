package main_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptrace"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ybrest/testsapi/internal/dbtest"
)

// TestSIGTERMUnderLoad sends SIGTERM while clients keep creating rows. The
// process must finish what it has begun (a request it is in the middle of
// reading completes with 201), lose no acknowledged row, answer nothing but
// complete responses, and exit 0 within SHUTDOWN_TIMEOUT.
func TestSIGTERMUnderLoad(t *testing.T) {
	t.Parallel()
	const (
		workers         = 16
		shutdownTimeout = 15 * time.Second
	)
	dbURL := dbtest.NewSchema(t)
	p := startReady(t, dbURL, "SHUTDOWN_TIMEOUT="+shutdownTimeout.String())

	var (
		mu      sync.Mutex
		created = map[string]int32{} // every 201: name to the id it was given
		refused int                  // requests after SIGTERM that got no response
		late503 int                  // 503s: allowed, though none are expected
	)
	var termSent atomic.Bool
	stopLoad := startLoad(t, workers, func(name string) bool {
		r, err := p.do(context.Background(), http.MethodPost, "/tests", nameBody(name))
		switch {
		case errors.Is(err, errIncomplete):
			t.Errorf("POST %q: %v", name, err)
			return false
		case err != nil && !termSent.Load():
			t.Errorf("POST %q before SIGTERM: %v", name, err)
			return false
		case err != nil:
			// Shutdown has begun: the listener is closed and idle
			// connections are closed, so no response is right.
			mu.Lock()
			refused++
			mu.Unlock()
			time.Sleep(5 * time.Millisecond) // do not spin on refused connections
		case r.status == http.StatusCreated:
			var got test
			if err := json.Unmarshal(r.body, &got); err != nil || got.Name != name || got.ID < 1 {
				t.Errorf("POST %q: 201 with body %q (%v)", name, r.body, err)
				return false
			}
			mu.Lock()
			created[name] = got.ID
			mu.Unlock()
		case r.status == http.StatusServiceUnavailable:
			mu.Lock()
			late503++
			mu.Unlock()
		default:
			t.Errorf("POST %q: %d %s, want 201 (or 503, or no response once shutdown begins)", name, r.status, r.body)
			return false
		}
		return true
	})

	// About a second of load, and enough rows that SIGTERM lands mid-stream.
	time.Sleep(time.Second)
	dbtest.WaitFor(t, "32 rows created", startWithin, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(created) >= 32
	})

	// One request the server is in the middle of when SIGTERM arrives: it
	// asks for 100-continue, so once the 100 comes back the handler is
	// running and blocked reading the body, which is only sent after the
	// server says it is shutting down.
	slow := startSlowCreate(t, p, "in-flight-at-sigterm")
	select {
	case <-slow.continued:
	case res := <-slow.done:
		t.Fatalf("in-flight POST ended before its body was sent: %d %s %v", res.status, res.body, res.err)
	case <-time.After(startWithin):
		t.Fatal("no 100 Continue for the in-flight POST")
	}

	termSent.Store(true)
	sentAt := time.Now()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("SIGTERM: %v", err)
	}
	p.waitLog(t, "shutting down", 1, exitWithin)
	slow.finish()
	res := <-slow.done
	if res.err != nil || res.status != http.StatusCreated {
		t.Errorf("POST in flight at SIGTERM: %d %s %v, want 201", res.status, res.body, res.err)
	} else {
		var got test
		if err := json.Unmarshal(res.body, &got); err != nil {
			t.Errorf("in-flight POST: 201 body %q: %v", res.body, err)
		}
		mu.Lock()
		created[got.Name] = got.ID
		mu.Unlock()
	}

	code := p.waitExit(t, shutdownTimeout+exitWithin)
	took := time.Since(sentAt)
	stopLoad()
	if code != 0 {
		t.Errorf("exit code %d after SIGTERM, want 0; stderr:\n%s", code, p.stderr.text())
	}
	if took > shutdownTimeout {
		t.Errorf("exited %s after SIGTERM, longer than SHUTDOWN_TIMEOUT %s", took, shutdownTimeout)
	}
	p.waitLog(t, "stopped", 1, time.Second) // the process has exited: the log is complete

	rows := checkAcknowledged(t, dbURL, created)
	t.Logf("%d rows acknowledged, %d in the table; after SIGTERM: %d without response, %d answered 503; exit after %s",
		len(created), len(rows), refused, late503, took.Round(time.Millisecond))
}

// slowCreate is a POST /tests whose body the test sends when it chooses.
type slowCreate struct {
	continued chan struct{} // closed when the server has asked for the body
	done      chan slowResult
	body      *io.PipeWriter
	payload   string
}

type slowResult struct {
	status int
	body   []byte
	err    error
}

// startSlowCreate sends the headers of a POST /tests creating name, with
// Expect: 100-continue, on a connection of its own (an idle pooled one
// would rightly be closed by a shutting-down server).
func startSlowCreate(t *testing.T, p *proc, name string) *slowCreate {
	t.Helper()
	pr, pw := io.Pipe()
	s := &slowCreate{
		continued: make(chan struct{}),
		done:      make(chan slowResult, 1),
		body:      pw,
		payload:   nameBody(name),
	}
	t.Cleanup(func() { pw.CloseWithError(errors.New("test over")) })
	var once sync.Once
	trace := &httptrace.ClientTrace{Got100Continue: func() { once.Do(func() { close(s.continued) }) }}
	req, err := http.NewRequestWithContext(httptrace.WithClientTrace(t.Context(), trace),
		http.MethodPost, p.url+"/tests", pr)
	if err != nil {
		t.Fatal(err)
	}
	req.ContentLength = int64(len(s.payload))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Expect", "100-continue")
	client := &http.Client{Transport: &http.Transport{
		DisableKeepAlives:     true,
		ExpectContinueTimeout: startWithin, // wait for the 100, however long
	}}
	go func() {
		res, err := client.Do(req)
		if err != nil {
			s.done <- slowResult{err: err}
			return
		}
		defer res.Body.Close()
		b, err := io.ReadAll(res.Body)
		s.done <- slowResult{status: res.StatusCode, body: b, err: err}
	}()
	return s
}

// finish sends the body.
func (s *slowCreate) finish() {
	go func() {
		_, _ = io.WriteString(s.body, s.payload)
		s.body.Close()
	}()
}
