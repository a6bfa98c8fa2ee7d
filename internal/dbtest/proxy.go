package dbtest

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/rs/zerolog"
)

// Proxy is a TCP fault proxy between a client and a database: Shopify's toxiproxy, run in this process, so
// that tests and the benchmark can put the database across a simulated network (latency, a blackhole, resets,
// a link that goes down) without a proxy of our own. Faults apply to connections already open and to new
// ones alike. Its methods are safe for concurrent use.
type Proxy struct {
	mu    sync.Mutex
	proxy *toxiproxy.Proxy
	addr  string // host:port the proxy listens on, kept across Disable and Enable
}

// toxiproxyServer is the one in-process toxiproxy that every Proxy belongs to. Its HTTP API is never
// started: proxies and toxics are driven through its Go types.
var toxiproxyServer = sync.OnceValue(func() *toxiproxy.ApiServer {
	return toxiproxy.NewServer(toxiproxy.NewMetricsContainer(nil), zerolog.Nop())
})

var proxySeq struct {
	sync.Mutex
	n int
}

// StartProxy starts a proxy on a free 127.0.0.1 port that forwards to upstream (host:port). Close stops it.
func StartProxy(upstream string) (*Proxy, error) {
	proxySeq.Lock()
	proxySeq.n++
	name := "db" + strconv.Itoa(proxySeq.n)
	proxySeq.Unlock()
	p := toxiproxy.NewProxy(toxiproxyServer(), name, "127.0.0.1:0", upstream)
	if err := p.Start(); err != nil {
		return nil, fmt.Errorf("dbtest: start proxy to %s: %w", upstream, err)
	}
	return &Proxy{proxy: p, addr: p.Listen}, nil
}

// NewProxy starts a proxy in front of the database that connURL points at and stops it when the test ends.
// Use p.URL(connURL) as the URL to connect through it.
func NewProxy(t testing.TB, connURL string) *Proxy {
	t.Helper()
	u, err := url.Parse(connURL)
	if err != nil {
		t.Fatalf("dbtest: NewProxy: %v", err)
	}
	p, err := StartProxy(u.Host)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

// Addr returns the host:port the proxy listens on.
func (p *Proxy) Addr() string { return p.addr }

// Port returns the port the proxy listens on, for clients that take host and port apart (pgbench, psql).
func (p *Proxy) Port() int {
	_, port, _ := net.SplitHostPort(p.addr)
	n, _ := strconv.Atoi(port)
	return n
}

// URL returns connURL with its host and port replaced by the proxy's.
func (p *Proxy) URL(connURL string) string {
	u, err := url.Parse(connURL)
	if err != nil {
		panic(fmt.Sprintf("dbtest: Proxy.URL(%q): %v", connURL, err))
	}
	u.Host = p.addr
	return u.String()
}

// Latency delays the data each way by d, plus or minus jitter: a round trip then costs about 2d more.
func (p *Proxy) Latency(d, jitter time.Duration) error {
	attrs := map[string]any{"latency": d.Milliseconds(), "jitter": jitter.Milliseconds()}
	return p.addBoth("latency", attrs)
}

// Bandwidth limits the data the database sends back to kbPerSec KB/s: a
// slow link, or a client far away reading a large result.
func (p *Proxy) Bandwidth(kbPerSec int64) error {
	return p.add("bandwidth", "downstream", map[string]any{"rate": kbPerSec})
}

// Blackhole swallows all data both ways and keeps the connections open, as a host that vanished without a
// reset does, until Clear. New connections are accepted and swallowed too.
func (p *Proxy) Blackhole() error {
	return p.addBoth("timeout", map[string]any{"timeout": 0})
}

// ResetPeer closes every connection with a TCP reset as soon as data passes (and new ones likewise), until
// Clear: a database host that restarted.
func (p *Proxy) ResetPeer() error {
	return p.addBoth("reset_peer", map[string]any{"timeout": 0})
}

// Clear removes every fault: data flows again on the connections that are still open.
func (p *Proxy) Clear() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.proxy.Toxics.ResetToxics(context.Background())
}

// Disable closes every connection through the proxy and refuses new ones, until Enable.
func (p *Proxy) Disable() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.proxy.Stop()
}

// Enable listens again, on the same port, after Disable.
func (p *Proxy) Enable() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.proxy.Listen = p.addr
	if err := p.proxy.Start(); err != nil && err != toxiproxy.ErrProxyAlreadyStarted {
		return fmt.Errorf("dbtest: enable proxy on %s: %w", p.addr, err)
	}
	return nil
}

// Close stops the proxy and closes its connections.
func (p *Proxy) Close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.proxy.Toxics.ResetToxics(context.Background())
	p.proxy.Stop()
}

// addBoth adds a toxic of the given type to both directions, replacing one of that type already there.
func (p *Proxy) addBoth(kind string, attrs map[string]any) error {
	for _, dir := range []string{"upstream", "downstream"} {
		if err := p.add(kind, dir, attrs); err != nil {
			return err
		}
	}
	return nil
}

// add adds a toxic of the given type to one direction, replacing one of that type already there.
func (p *Proxy) add(kind, dir string, attrs map[string]any) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	name := kind + "_" + dir
	if p.proxy.Toxics.GetToxic(name) != nil {
		if err := p.proxy.Toxics.RemoveToxic(context.Background(), name); err != nil {
			return fmt.Errorf("dbtest: proxy: remove %s: %w", name, err)
		}
	}
	body, err := json.Marshal(map[string]any{"name": name, "type": kind, "stream": dir, "attributes": attrs})
	if err != nil {
		return err
	}
	if _, err := p.proxy.Toxics.AddToxicJson(strings.NewReader(string(body))); err != nil {
		return fmt.Errorf("dbtest: proxy: add %s: %w", name, err)
	}
	return nil
}
