package main_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ybrest/testsapi/internal/dbtest"
)

// The README's examples are a transcript: each `$ command` line in a fenced block is followed by what it
// printed. TestReadmeExamples runs them all, in the README's order, against the real binary on a fresh
// database and compares what they print with what the README shows, so an example cannot drift from the
// server. The rules, which the README's API section states:
//   - localhost:8080 in a command is the test server's address;
//   - the Date, X-Request-Id and X-Content-Type-Options headers, and the line Vary: Accept-Encoding, are
//     left out of the README, so they are dropped from what curl prints before comparing; every other
//     header must be there, in the order the server sent it;
//   - a line "..." in the README stands for any number of lines (zero included);
//   - a comment line just before a block, `<!-- readme-test: env NAME=VALUE ... -->`, runs that block's
//     commands against a server started with those variables (same database), and `<!-- readme-test:
//     database stopped -->` against one whose database is unreachable.

// readmePath is the README, from this package's directory.
const readmePath = "../../README.md"

// readmeExample is one command of the README and the output it shows.
type readmeExample struct {
	line    int      // 1-based line of the command in README.md
	command string   // without the "$ "
	want    []string // the lines shown after it, trailing blank lines dropped
	server  string   // the directive of its block: "" (the default server), "env ...", "database stopped"
}

// parseReadme returns every `$ ` command of the fenced blocks of the README, in order.
func parseReadme(text string) ([]readmeExample, error) {
	var (
		out       []readmeExample
		inBlock   bool
		directive string // of the block being read, or of the next one
		cur       *readmeExample
	)
	flush := func() {
		if cur != nil {
			for len(cur.want) > 0 && strings.TrimSpace(cur.want[len(cur.want)-1]) == "" {
				cur.want = cur.want[:len(cur.want)-1]
			}
			out = append(out, *cur)
			cur = nil
		}
	}
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(nil, 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "```"):
			if inBlock {
				flush()
				directive = ""
			}
			inBlock = !inBlock
		case !inBlock:
			if d, ok := strings.CutPrefix(strings.TrimSpace(line), "<!-- readme-test:"); ok {
				d, ok = strings.CutSuffix(d, "-->")
				if !ok {
					return nil, fmt.Errorf("README.md:%d: readme-test directive without -->", n)
				}
				directive = strings.TrimSpace(d)
				if directive != "database stopped" && !strings.HasPrefix(directive, "env ") {
					return nil, fmt.Errorf("README.md:%d: unknown readme-test directive %q", n, directive)
				}
			} else if strings.TrimSpace(line) != "" {
				directive = "" // a directive applies to the block right after it
			}
		case strings.HasPrefix(line, "$ "):
			flush()
			cur = &readmeExample{line: n, command: strings.TrimPrefix(line, "$ "), server: directive}
		case cur != nil:
			cur.want = append(cur.want, line)
		}
	}
	if inBlock {
		return nil, fmt.Errorf("README.md: a fenced block is not closed")
	}
	return out, sc.Err()
}

// leftOut are the headers the README does not show; leftOutLines are header lines it does not show,
// whole (every response varies on Accept-Encoding, but a Vary naming anything else is shown).
var (
	leftOut      = []string{"date:", "x-request-id:", "x-content-type-options:"}
	leftOutLines = []string{"vary: accept-encoding"}
)

// normalize turns what a command printed into the README's form: LF line ends, the left-out headers
// dropped (from an HTTP head only), trailing blank lines dropped.
func normalize(out []byte) []string {
	lines := strings.Split(strings.ReplaceAll(string(out), "\r\n", "\n"), "\n")
	if len(lines) > 0 && strings.HasPrefix(lines[0], "HTTP/") {
		kept := lines[:1]
		i := 1
		for ; i < len(lines) && lines[i] != ""; i++ {
			lower := strings.ToLower(lines[i])
			drop := false
			for _, h := range leftOut {
				drop = drop || strings.HasPrefix(lower, h)
			}
			drop = drop || slices.Contains(leftOutLines, lower)
			if !drop {
				kept = append(kept, lines[i])
			}
		}
		lines = append(kept, lines[i:]...)
	}
	for len(lines) > 0 && strings.TrimSpace(lines[len(lines)-1]) == "" {
		lines = lines[:len(lines)-1]
	}
	return lines
}

// matches reports whether got is want, where a want line "..." stands for any number of got lines.
func matches(want, got []string) bool {
	if len(want) == 0 {
		return len(got) == 0
	}
	if want[0] == "..." {
		for skip := 0; skip <= len(got); skip++ {
			if matches(want[1:], got[skip:]) {
				return true
			}
		}
		return false
	}
	return len(got) > 0 && got[0] == want[0] && matches(want[1:], got[1:])
}

func TestReadmeExamples(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("curl"); err != nil {
		t.Fatal("the README's examples are curl commands: install curl (apt-get install curl)")
	}
	text, err := os.ReadFile(readmePath)
	if err != nil {
		t.Fatal(err)
	}
	examples, err := parseReadme(string(text))
	if err != nil {
		t.Fatal(err)
	}
	if len(examples) < 20 {
		t.Fatalf("found %d examples in README.md; the parser is broken or the examples are gone", len(examples))
	}
	// A database with logical replication, for the change feed's examples; its slot is the test's.
	db, slot := dbtest.NewLogicalSchema(t)
	// The servers the blocks ask for, started before the steps so that they outlive each step. The first
	// records the changes from before the first write on: the feed's examples show them all.
	servers := map[string]*proc{"": startReady(t, db, "FEED_SLOT="+slot)}
	servers[""].waitLog(t, "change feed: recording changes (this instance holds the slot)", 1, startWithin)
	for _, ex := range examples {
		if _, ok := servers[ex.server]; ok {
			continue
		}
		switch d := ex.server; {
		case d == "database stopped":
			// Nothing listens on port 1: every connection is refused, as with a stopped database.
			servers[d] = startServer(t, "DATABASE_URL=postgres://postgres@127.0.0.1:1/postgres?sslmode=disable")
		default:
			servers[d] = startReady(t, db, append(strings.Fields(strings.TrimPrefix(d, "env ")), "FEED_SLOT="+slot)...)
		}
	}
	for _, ex := range examples {
		// Steps in the README's order, each named by its line: they share the database, so each one
		// sees what the ones above it did, as a reader trying them in turn would.
		t.Run("line"+strconv.Itoa(ex.line), func(t *testing.T) {
			addr := strings.TrimPrefix(servers[ex.server].url, "http://")
			cmd := strings.ReplaceAll(ex.command, "localhost:8080", addr)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			// Not pipefail: `curl ... | head -3` ends curl with SIGPIPE, and the output is what counts.
			c := exec.CommandContext(ctx, "bash", "-c", cmd)
			c.Env = append(os.Environ(), "LC_ALL=C")
			out, _ := c.Output()
			got := normalize(out)
			if !matches(ex.want, got) {
				t.Errorf("README.md:%d: $ %s\n--- the README shows:\n%s\n--- the server printed:\n%s",
					ex.line, ex.command, strings.Join(ex.want, "\n"), strings.Join(got, "\n"))
			}
		})
	}
}

// TestReadmeMatcher checks the comparison itself, so that a passing TestReadmeExamples means the examples
// are right and not that the matcher accepts anything: an edited line, a missing or extra line and a
// reordered header all fail, and "..." skips only what it stands for.
func TestReadmeMatcher(t *testing.T) {
	t.Parallel()
	got := normalize([]byte("HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nDate: Tue, 01 Dec 2026 20:00:00 GMT\r\n" +
		"Location: /tests/1\r\nX-Content-Type-Options: nosniff\r\nX-Request-Id: abc\r\nContent-Length: 22\r\n\r\n{\"id\":1,\"name\":\"Bob\"}\n"))
	want := []string{"HTTP/1.1 201 Created", "Content-Type: application/json", "Location: /tests/1", "Content-Length: 22", "", `{"id":1,"name":"Bob"}`}
	if !matches(want, got) {
		t.Fatalf("normalize gave %q, want %q", got, want)
	}
	bad := map[string][]string{
		"edited":    {"HTTP/1.1 201 Created", "Content-Type: application/json", "Location: /tests/2", "Content-Length: 22", "", `{"id":1,"name":"Bob"}`},
		"missing":   {"HTTP/1.1 201 Created", "Content-Type: application/json", "Content-Length: 22", "", `{"id":1,"name":"Bob"}`},
		"extra":     append(append([]string{}, want...), "more"),
		"reordered": {"HTTP/1.1 201 Created", "Location: /tests/1", "Content-Type: application/json", "Content-Length: 22", "", `{"id":1,"name":"Bob"}`},
		"elided":    {"HTTP/1.1 201 Created", "...", `{"id":2,"name":"Bob"}`},
	}
	for name, w := range bad {
		if matches(w, got) {
			t.Errorf("%s: %q matched %q", name, w, got)
		}
	}
	for _, w := range [][]string{
		{"HTTP/1.1 201 Created", "...", `{"id":1,"name":"Bob"}`},
		{"...", "Content-Length: 22", "...", `{"id":1,"name":"Bob"}`, "..."},
		{"HTTP/1.1 201 Created", "Content-Type: application/json", "...", "Location: /tests/1", "...", `{"id":1,"name":"Bob"}`},
	} {
		if !matches(w, got) {
			t.Errorf("%q did not match %q", w, got)
		}
	}
	// The parser: commands, their outputs, a directive for the block right after it only.
	exs, err := parseReadme("text\n<!-- readme-test: env API_TOKEN=x -->\n```\n$ curl a\nout a\n\n$ curl b\nout b\n```\n\n```\n$ curl c\n```\n")
	if err != nil {
		t.Fatal(err)
	}
	if len(exs) != 3 || exs[0].command != "curl a" || !bytes.Equal([]byte(strings.Join(exs[0].want, "|")), []byte("out a")) ||
		exs[1].server != "env API_TOKEN=x" || exs[2].server != "" || exs[2].line != 12 {
		t.Errorf("parseReadme gave %+v", exs)
	}
}
