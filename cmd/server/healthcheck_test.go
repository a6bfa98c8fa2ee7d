package main

import (
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestHealthcheck(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		status  int
		wantErr string // "" means healthcheck must return nil
	}{
		{"OK", http.StatusOK, ""},
		{"Unavailable", http.StatusServiceUnavailable, "503"},
		{"NotFound", http.StatusNotFound, "404"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got := make(chan string, 1)
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				got <- r.Method + " " + r.URL.Path
				w.WriteHeader(tc.status)
			}))
			t.Cleanup(srv.Close)
			// The port alone, as HTTP_ADDR usually is (":8080"): the probe
			// must go to loopback.
			err := healthcheck(":" + port(t, srv.Listener.Addr()))
			select {
			case req := <-got:
				if req != "GET /healthz" {
					t.Errorf("server got %q, want GET /healthz", req)
				}
			default:
				t.Error("the server got no request")
			}
			checkErr(t, err, tc.wantErr)
		})
	}

	t.Run("NothingListening", func(t *testing.T) {
		t.Parallel()
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		checkErr(t, healthcheck(addr), "connect")
	})

	t.Run("Hung", func(t *testing.T) {
		t.Parallel()
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			<-r.Context().Done() // until the client gives up
		}))
		t.Cleanup(srv.Close)
		start := time.Now()
		err := healthcheck(srv.Listener.Addr().String())
		checkErr(t, err, "Timeout")
		// Docker's HEALTHCHECK --timeout is 3s; the probe must give up first.
		if d := time.Since(start); d >= 3*time.Second {
			t.Errorf("healthcheck took %s, want less than the HEALTHCHECK --timeout of 3s", d)
		}
	})
}

func TestHealthcheckURL(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		addr, want string
	}{
		{":8080", "http://127.0.0.1:8080/healthz"},
		{"0.0.0.0:8080", "http://127.0.0.1:8080/healthz"},
		{"[::]:9000", "http://127.0.0.1:9000/healthz"},
		{"127.0.0.1:8081", "http://127.0.0.1:8081/healthz"},
		{"localhost:8081", "http://localhost:8081/healthz"},
		{"[::1]:8081", "http://[::1]:8081/healthz"},
	} {
		got, err := healthzURL(tc.addr)
		if err != nil || got != tc.want {
			t.Errorf("healthzURL(%q) = %q, %v; want %q", tc.addr, got, err, tc.want)
		}
	}
	for _, addr := range []string{"8080", "", "localhost:", "a:b:c"} {
		if got, err := healthzURL(addr); err == nil {
			t.Errorf("healthzURL(%q) = %q, want an error", addr, got)
		}
	}
}

func port(t *testing.T, a net.Addr) string {
	t.Helper()
	_, p, err := net.SplitHostPort(a.String())
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func checkErr(t *testing.T, err error, want string) {
	t.Helper()
	switch {
	case want == "" && err != nil:
		t.Errorf("healthcheck: %v, want nil", err)
	case want != "" && err == nil:
		t.Errorf("healthcheck: nil, want an error containing %q", want)
	case want != "" && !strings.Contains(err.Error(), want):
		t.Errorf("healthcheck: %v, want an error containing %q", err, want)
	}
}
