package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"time"
)

// healthcheckTimeout bounds the whole check. It stays below the
// Dockerfile's HEALTHCHECK --timeout (3s), so a hung server is reported as
// this error rather than as Docker killing the probe.
const healthcheckTimeout = 2 * time.Second

// healthcheck asks the server listening on addr (the HTTP_ADDR it was
// started with) for GET /healthz and returns nil on 200. It is what
// `server healthcheck` runs: the image is distroless, with no curl or wget
// for Docker's HEALTHCHECK to use.
func healthcheck(addr string) error {
	u, err := healthzURL(addr)
	if err != nil {
		return err
	}
	client := &http.Client{
		Timeout: healthcheckTimeout,
		// No proxy from the environment and no pooled connections: the
		// process exits right after this one request.
		Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true},
	}
	res, err := client.Get(u)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(res.Body, 64<<10))
	if res.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", u, res.Status)
	}
	return nil
}

// healthzURL turns a listen address into the URL to probe. A wildcard or
// empty host (":8080", "0.0.0.0:8080", "[::]:8080") listens on loopback
// too, so the probe goes to 127.0.0.1; a specific host is probed as given.
func healthzURL(addr string) (string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("HTTP_ADDR %q: %w", addr, err)
	}
	if port == "" {
		return "", fmt.Errorf("HTTP_ADDR %q: no port", addr)
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	return "http://" + net.JoinHostPort(host, port) + "/healthz", nil
}
