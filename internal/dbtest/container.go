package dbtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"
)

// envBackend forces where throwaway servers come from: "binaries" (the PostgreSQL server binaries on this
// machine) or "docker" (a disposable container). Unset, binaries are used when present, else Docker.
const envBackend = "TEST_DATABASE_BACKEND"

// envImage overrides the image of the disposable container.
const envImage = "TEST_POSTGRES_IMAGE"

// defaultImage is the PostgreSQL the container backend runs: the same major version the machines' binaries
// and CI have.
const defaultImage = "postgres:15-bookworm"

// backend is one throwaway PostgreSQL server, wherever it runs.
type backend interface {
	start() error                          // (re)start on the same port and data
	waitReady(timeout time.Duration) error // until a client can connect
	stop(mode string) error                // a pg_ctl -m mode: "immediate" is a crash
	destroy(mode string) error             // stop unless mode is "", then remove everything
	url() string
	String() string // for failure messages
}

// newBackend starts a throwaway server from the local binaries, or in a container on machines that have
// Docker but no binaries. fsync=false is for the shared server only.
func newBackend(fsync bool) (backend, error) {
	switch choice := os.Getenv(envBackend); choice {
	case "binaries":
		return newInstance(fsync)
	case "docker":
		return newContainer(fsync)
	case "":
		if BinDir() != "" {
			return newInstance(fsync)
		}
		if err := dockerAvailable(); err != nil {
			return nil, fmt.Errorf("no PostgreSQL server binaries (initdb, pg_ctl, postgres) found via pg_config, "+
				"/usr/lib/postgresql/*/bin or PATH, and no Docker to run %s in: %w", image(), err)
		}
		return newContainer(fsync)
	default:
		return nil, fmt.Errorf("%s=%q: want binaries, docker or nothing", envBackend, choice)
	}
}

func image() string {
	if img := os.Getenv(envImage); img != "" {
		return img
	}
	return defaultImage
}

// dockerAvailable reports whether a Docker engine answers; the CLI alone is not enough.
var dockerAvailable = sync.OnceValue(func() error {
	_, err := docker("info", "--format", "{{.ServerVersion}}")
	return err
})

// container is a throwaway server in a Docker container, published on a 127.0.0.1 port chosen here, so that
// it stays the same across stop and start.
type container struct {
	name  string
	port  int
	fsync bool
}

func newContainer(fsync bool) (*container, error) {
	b := make([]byte, 6)
	if _, err := rand.Read(b); err != nil {
		return nil, err
	}
	c := &container{name: "dbtest-" + hex.EncodeToString(b), fsync: fsync}
	var err error
	if c.port, err = freePort(); err != nil {
		return nil, err
	}
	// The image's entry point runs initdb on first start; trust auth on a port bound to 127.0.0.1 only.
	args := []string{"run", "--detach", "--name", c.name,
		"--publish", fmt.Sprintf("127.0.0.1:%d:5432", c.port),
		"--env", "POSTGRES_HOST_AUTH_METHOD=trust",
		image(), "-c", "max_connections=300"}
	if !fsync {
		args = append(args, "-c", "fsync=off")
	}
	if out, err := docker(args...); err != nil {
		releasePort(c.port)
		_, _ = docker("rm", "--force", "--volumes", c.name)
		return nil, fmt.Errorf("docker run %s: %w\n%s", image(), err, out)
	}
	// The first start includes pulling the image and initdb.
	if err := c.waitReady(5 * time.Minute); err != nil {
		c.destroy("")
		return nil, err
	}
	return c, nil
}

func (c *container) start() error {
	if out, err := docker("start", c.name); err != nil {
		return fmt.Errorf("docker start %s: %w\n%s", c.name, err, out)
	}
	return nil
}

// waitReady waits for the real server: during initdb the image runs one without TCP.
func (c *container) waitReady(timeout time.Duration) error {
	return waitForConnection(c, timeout, func() string {
		logs, _ := docker("logs", "--tail", "30", c.name)
		return string(logs)
	})
}

// stop signals PostgreSQL, PID 1 in the container, as pg_ctl -m would, and waits for the container to exit.
func (c *container) stop(mode string) error {
	signal := map[string]string{"smart": "SIGTERM", "fast": "SIGINT", "immediate": "SIGQUIT"}[mode]
	if signal == "" {
		return fmt.Errorf("stop %s: unknown mode %q", c, mode)
	}
	if out, err := docker("kill", "--signal", signal, c.name); err != nil {
		return fmt.Errorf("docker kill %s: %w\n%s", c.name, err, out)
	}
	if out, err := docker("wait", c.name); err != nil {
		return fmt.Errorf("docker wait %s: %w\n%s", c.name, err, out)
	}
	return nil
}

// destroy removes the container and its anonymous data volume; a running one is killed, whatever mode says.
func (c *container) destroy(string) error {
	releasePort(c.port)
	if out, err := docker("rm", "--force", "--volumes", c.name); err != nil {
		return fmt.Errorf("docker rm %s: %w\n%s", c.name, err, out)
	}
	return nil
}

func (c *container) url() string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", c.port)
}

func (c *container) String() string { return fmt.Sprintf("container %s on port %d", c.name, c.port) }

// docker runs the docker CLI and returns its combined output.
func docker(args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute) // a first pull can be slow
	defer cancel()
	out, err := exec.CommandContext(ctx, "docker", args...).CombinedOutput()
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		err = fmt.Errorf("docker %s: timed out", strings.Join(args, " "))
	}
	return out, err
}
