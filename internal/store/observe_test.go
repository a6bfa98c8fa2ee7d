package store_test

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"

	"github.com/ybrest/testsapi/internal/dbtest"
	"github.com/ybrest/testsapi/internal/store"
)

// codes records what a store reports to ObserveErrors.
type codes struct {
	mu  sync.Mutex
	got []string
}

func (c *codes) observe(code string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.got = append(c.got, code)
}

func (c *codes) list() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.got)
}

// TestObserveErrors: a server error is reported with its SQLSTATE, success
// and a client that went away are not reported at all.
func TestObserveErrors(t *testing.T) {
	t.Parallel()
	var c codes
	st, pool := mustStore(t, dbtest.NewSchema(t), store.ObserveErrors(c.observe))
	if _, _, err := st.Migrate(t.Context()); err != nil {
		t.Fatal(err)
	}
	mustCreate(t, st, "Bob")
	if got := c.list(); len(got) != 0 {
		t.Fatalf("after successful calls: reported %q, want nothing", got)
	}

	cancelled, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := st.Get(cancelled, 1); !errors.Is(err, context.Canceled) {
		t.Fatalf("Get with a cancelled context: %v", err)
	}
	if got := c.list(); len(got) != 0 {
		t.Fatalf("after a cancelled request: reported %q, want nothing", got)
	}

	// A missing table is a real server error: 42P01, undefined_table.
	if _, err := pool.Exec(t.Context(), `DROP TABLE test`); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Get(t.Context(), 1); err == nil {
		t.Fatal("Get without the table: no error")
	}
	if got, want := c.list(), []string{"42P01"}; !slices.Equal(got, want) {
		t.Fatalf("reported %q, want %q", got, want)
	}
}

// TestObserveErrorsDatabaseDown: an unreachable server has no SQLSTATE and
// is reported as "".
func TestObserveErrorsDatabaseDown(t *testing.T) {
	t.Parallel()
	srv := dbtest.NewServer(t)
	var c codes
	st, _ := mustStore(t, srv.URL(), store.ObserveErrors(c.observe))
	if _, _, err := st.Migrate(t.Context()); err != nil {
		t.Fatal(err)
	}
	srv.Stop(t)
	if _, err := st.List(t.Context(), 0, 10); !errors.Is(err, store.ErrUnavailable) {
		t.Fatalf("List with the database down: %v, want ErrUnavailable", err)
	}
	got := c.list()
	if len(got) != 1 {
		t.Fatalf("reported %q, want one error", got)
	}
	// The pool's idle connection may still read the server's goodbye
	// (57P01 admin_shutdown, class 57) before it notices the socket is gone.
	if got[0] != "" && got[0][:2] != "57" && got[0][:2] != "08" {
		t.Fatalf("reported %q, want \"\" or a connection/shutdown SQLSTATE", got[0])
	}
}
