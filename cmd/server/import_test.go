package main_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/ybrest/testsapi/internal/dbtest"
)

// importRows is the size of the import whose memory TestImportMemory
// measures: the million rows.
const importRows = 1_000_000

// maxImportGrowth is the most the server's resident set may grow over an
// import of importRows rows.
const maxImportGrowth = 32 << 20

// TestImportMemory streams a 1,000,000-row NDJSON import into the real
// binary and checks that its peak resident set (VmHWM, reset before) ends
// no more than 32 MiB above its resident set (VmRSS) before the import: the body is
// read one row at a time, never held. Twice: answered with the summary,
// and with the created rows as NDJSON (streamed back, never held either).
func TestImportMemory(t *testing.T) {
	url := dbtest.NewSchema(t)
	p := startReady(t, url)
	p.client.Timeout = 5 * time.Minute
	// A small import first, so that what every import allocates once
	// (buffers, the COPY's statement) is in the baseline.
	if r := p.mustDo(t, "POST", "/tests", "{\"name\":\"warm-up\"}\n", "Content-Type", "application/x-ndjson"); r.status != http.StatusCreated {
		t.Fatalf("warm-up import: %d %s", r.status, r.body)
	}
	for run, accept := range []string{"application/json", "application/x-ndjson"} {
		// Reset VmHWM to the current RSS ("5", proc(5)), so that each run's
		// peak is its own.
		if err := os.WriteFile("/proc/"+strconv.Itoa(p.cmd.Process.Pid)+"/clear_refs", []byte("5"), 0); err != nil {
			t.Fatal(err)
		}
		before := procStatus(t, p.cmd.Process.Pid, "VmRSS")
		pr, pw := io.Pipe()
		go func() {
			bw := bufio.NewWriterSize(pw, 64<<10)
			for i := range importRows {
				fmt.Fprintf(bw, "{\"name\":\"row %d %07d\"}\n", run, i)
			}
			_ = pw.CloseWithError(bw.Flush())
		}()
		req, err := http.NewRequestWithContext(t.Context(), "POST", p.url+"/tests", pr)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/x-ndjson")
		req.Header.Set("Accept", accept)
		start := time.Now()
		res, err := p.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		// Counted as it comes, not kept.
		var lines int
		sc := bufio.NewScanner(res.Body)
		var last string
		for sc.Scan() {
			lines++
			last = sc.Text()
		}
		res.Body.Close()
		elapsed := time.Since(start)
		if err := sc.Err(); err != nil || res.StatusCode != http.StatusCreated {
			t.Fatalf("import answered as %s: %d %s, %v", accept, res.StatusCode, last, err)
		}
		switch want := fmt.Sprintf("{\"created\":%d}", importRows); {
		case accept == "application/json" && (lines != 1 || last != want):
			t.Fatalf("summary %q, want %s", last, want)
		case accept != "application/json" && (lines != importRows || !strings.Contains(last, fmt.Sprintf("row %d %07d", run, importRows-1))):
			t.Fatalf("%d rows answered, the last %s", lines, last)
		}
		peak := procStatus(t, p.cmd.Process.Pid, "VmHWM")
		t.Logf("answered as %s: %d rows in %v; VmRSS before %d KiB, VmHWM after %d KiB: +%.1f MiB",
			accept, importRows, elapsed.Round(time.Millisecond), before>>10, peak>>10, float64(peak-before)/(1<<20))
		if peak-before > maxImportGrowth {
			t.Errorf("the resident set grew by %.1f MiB over the import; the most is %d MiB",
				float64(peak-before)/(1<<20), maxImportGrowth>>20)
		}
	}

	conn, err := pgx.Connect(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var n int
	if err := conn.QueryRow(context.Background(), "SELECT count(*) FROM test").Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 2*importRows+1 {
		t.Fatalf("%d rows stored, want %d", n, 2*importRows+1)
	}
}

// procStatus reads a size field ("VmRSS", "VmHWM") of /proc/PID/status, in
// bytes.
func procStatus(t *testing.T, pid int, field string) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}
