package dbtest_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/ybrest/testsapi/internal/dbtest"
)

// TestProxy checks each fault of the proxy on a real connection: latency adds its delay to a round trip, a
// blackhole stalls an open connection until cleared, a reset peer fails it, and Disable refuses connections
// until Enable.
func TestProxy(t *testing.T) {
	t.Parallel()
	u := dbtest.NewSchema(t)
	p := dbtest.NewProxy(t, u)
	through := p.URL(u)
	ping := func(conn *pgx.Conn, within time.Duration) (time.Duration, error) {
		ctx, cancel := context.WithTimeout(context.Background(), within)
		defer cancel()
		start := time.Now()
		_, err := conn.Exec(ctx, "SELECT 1")
		return time.Since(start), err
	}

	conn := mustConnect(t, through)
	t.Run("Latency", func(t *testing.T) {
		if err := p.Latency(20*time.Millisecond, 0); err != nil {
			t.Fatal(err)
		}
		d, err := ping(conn, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if d < 40*time.Millisecond {
			t.Errorf("a round trip with 20 ms each way took %v, want at least 40 ms", d)
		}
		p.Clear()
		if d, err = ping(conn, 5*time.Second); err != nil || d >= 40*time.Millisecond {
			t.Errorf("after Clear a round trip took %v (error %v), want under 40 ms", d, err)
		}
	})
	t.Run("Blackhole", func(t *testing.T) {
		if err := p.Blackhole(); err != nil {
			t.Fatal(err)
		}
		if _, err := ping(conn, 300*time.Millisecond); err == nil {
			t.Fatal("a query through a blackhole succeeded")
		}
		p.Clear()
		// The timed-out query left conn unusable (pgx closes a connection whose query was cut); a new one
		// gets through once the blackhole is gone.
		if _, err := ping(mustConnect(t, through), 5*time.Second); err != nil {
			t.Fatalf("after Clear: %v", err)
		}
	})
	t.Run("ResetPeer", func(t *testing.T) {
		c := mustConnect(t, through)
		if err := p.ResetPeer(); err != nil {
			t.Fatal(err)
		}
		if _, err := ping(c, 5*time.Second); err == nil {
			t.Fatal("a query through a reset peer succeeded")
		}
		p.Clear()
	})
	t.Run("DisableEnable", func(t *testing.T) {
		p.Disable()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if c, err := pgx.Connect(ctx, through); err == nil {
			c.Close(ctx)
			t.Fatal("connected through a disabled proxy")
		}
		if err := p.Enable(); err != nil {
			t.Fatal(err)
		}
		if _, err := ping(mustConnect(t, through), 5*time.Second); err != nil {
			t.Fatalf("after Enable: %v", err)
		}
	})
}
