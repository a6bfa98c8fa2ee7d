package testsapi_test

// These tests check the deployment files (Dockerfile, .dockerignore,
// docker-compose.yml, docker-compose.cluster.yml) with the parsers Docker
// itself uses, since machines without a Docker engine cannot build or run
// them: BuildKit's Dockerfile parser and compose-go, the Compose CLI's loader.

import (
	"bytes"
	"cmp"
	"context"
	"debug/elf"
	"encoding/json"
	"errors"
	"go/ast"
	goparser "go/parser"
	"go/token"
	"go/version"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
	"github.com/moby/buildkit/frontend/dockerfile/shell"
	"github.com/moby/patternmatcher"
	"github.com/moby/patternmatcher/ignorefile"
)

// ybImage is the YugabyteDB image both compose files and the README name:
// the newest 2025.2 LTS build the release notes list
// (docs.yugabyte.com/stable/releases/ybdb-releases/v2025.2/), never latest.
// 2025.2.2 and later fix data loss around tablet splitting, which the
// range-sharded table does as it grows.
const ybImage = "yugabytedb/yugabyte:2025.2.8.0-b60"

// minStartPeriod is the least healthcheck start_period for a YugabyteDB
// node: it takes tens of seconds to start.
const minStartPeriod = 30 * time.Second

// --- docker-compose.yml ---

func TestComposeSingleNode(t *testing.T) {
	t.Parallel()
	p := mustLoadCompose(t, "docker-compose.yml")
	checkServiceNames(t, p, "api", "yugabytedb")

	db := mustService(t, p, "yugabytedb")
	checkYugabyteDBNode(t, p, db)
	if args := yugabytedArgs(t, db); flagValue(args, "--join") != "" {
		t.Errorf("yugabytedb: a single node must not --join: %q", args)
	}
	checkPublished(t, db, 5433, "5433")
	checkPublished(t, db, 15433, "15433")
	checkFeedFlags(t, db)

	api := mustService(t, p, "api")
	checkAPI(t, p, api)
	dsn := mustParseDSN(t, api)
	if got := dsnHosts(dsn); !slices.Equal(got, []string{"yugabytedb:5433"}) {
		t.Errorf("api: DATABASE_URL hosts = %q, want [yugabytedb:5433]", got)
	}
	checkDependsOnHealthy(t, api, "yugabytedb")
}

// TestComposeTracing: with a plain `up` the jaeger service stays off and
// so does tracing; with --profile tracing and OTEL_TRACES_EXPORTER=otlp the
// api exports OTLP over HTTP to jaeger, whose UI is published.
func TestComposeTracing(t *testing.T) {
	t.Parallel()
	plain := mustLoadCompose(t, "docker-compose.yml")
	if _, ok := plain.DisabledServices["jaeger"]; !ok {
		t.Errorf("jaeger is not a service behind a profile")
	}
	if v := mustService(t, plain, "api").Environment["OTEL_TRACES_EXPORTER"]; v == nil || *v != "none" {
		t.Errorf("api: OTEL_TRACES_EXPORTER %v with a plain `up`, want none (tracing off by default)", v)
	}

	p := mustLoadCompose(t, "docker-compose.yml", cli.WithProfiles([]string{"tracing"}), cli.WithEnv([]string{"OTEL_TRACES_EXPORTER=otlp"}))
	checkServiceNames(t, p, "api", "jaeger", "yugabytedb")
	checkHostPortsUnique(t, p)
	jaeger := mustService(t, p, "jaeger")
	if name, tag, _ := strings.Cut(jaeger.Image, ":"); name != "jaegertracing/jaeger" || tag == "" || tag == "latest" {
		t.Errorf("jaeger: image %q, want jaegertracing/jaeger at a pinned version", jaeger.Image)
	}
	checkPublished(t, jaeger, 16686, "16686")
	checkPublished(t, jaeger, 4318, "4318")

	env := mustService(t, p, "api").Environment
	value := func(k string) string {
		if v := env[k]; v != nil {
			return *v
		}
		return ""
	}
	if got := value("OTEL_TRACES_EXPORTER"); got != "otlp" {
		t.Errorf("api: OTEL_TRACES_EXPORTER %q, want otlp from the environment", got)
	}
	// OTLP over HTTP (autoexport's default protocol) on jaeger's port.
	if got := value("OTEL_EXPORTER_OTLP_ENDPOINT"); got != "http://jaeger:4318" {
		t.Errorf("api: OTEL_EXPORTER_OTLP_ENDPOINT %q, want http://jaeger:4318", got)
	}
	if got := value("OTEL_SERVICE_NAME"); got == "" {
		t.Errorf("api: no OTEL_SERVICE_NAME")
	}
}

// TestReadmeNamesImage: the README names the image the compose files run.
func TestReadmeNamesImage(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), ybImage) {
		t.Errorf("README.md does not name the image the compose files pin, %s", ybImage)
	}
}

// --- docker-compose.cluster.yml ---

func TestComposeCluster(t *testing.T) {
	t.Parallel()
	p := mustLoadCompose(t, "docker-compose.cluster.yml")
	checkServiceNames(t, p, "api", "yb1", "yb2", "yb3")
	nodes := []string{"yb1", "yb2", "yb3"}

	images := map[string]bool{}
	volumes := map[string]bool{}
	for _, name := range nodes {
		s := mustService(t, p, name)
		checkYugabyteDBNode(t, p, s)
		images[s.Image] = true
		for _, v := range s.Volumes {
			if volumes[v.Source] {
				t.Errorf("%s: volume %q is shared with another node; each node needs its own", name, v.Source)
			}
			volumes[v.Source] = true
		}

		checkFeedFlags(t, s)
		args := yugabytedArgs(t, s)
		wantJoin := "yb1"
		if name == "yb1" {
			wantJoin = ""
		}
		if got := flagValue(args, "--join"); got != wantJoin {
			t.Errorf("%s: --join=%q, want %q", name, got, wantJoin)
		}
		// A node's start must not wait on a peer's healthcheck: after a full
		// stop no node is healthy until enough peers run (yugabyte-db#22417).
		for dep, d := range s.DependsOn {
			if d.Condition == types.ServiceConditionHealthy && slices.Contains(nodes, dep) {
				t.Errorf("%s: depends_on %s with condition service_healthy stalls a full restart; use service_started", name, dep)
			}
		}
		for _, peer := range nodes {
			if peer != name && strings.Contains(strings.Join(s.HealthCheck.Test, " "), peer) {
				t.Errorf("%s: healthcheck %q probes peer %s", name, s.HealthCheck.Test, peer)
			}
		}
	}
	if len(images) != 1 {
		t.Errorf("the nodes run different images: %v", images)
	}
	checkPublished(t, mustService(t, p, "yb1"), 15433, "15433")
	checkHostPortsUnique(t, p)

	api := mustService(t, p, "api")
	checkAPI(t, p, api)
	dsn := mustParseDSN(t, api)
	if got, want := dsnHosts(dsn), []string{"yb1:5433", "yb2:5433", "yb3:5433"}; !slices.Equal(got, want) {
		t.Errorf("api: DATABASE_URL hosts = %q, want %q", got, want)
	}
	if dsn.ValidateConnect == nil {
		t.Error("api: DATABASE_URL has no target_session_attrs=read-write")
	}
	for _, n := range nodes {
		checkDependsOnHealthy(t, api, n)
	}
}

func TestComposeProjectsApart(t *testing.T) {
	t.Parallel()
	single := mustLoadCompose(t, "docker-compose.yml")
	cluster := mustLoadCompose(t, "docker-compose.cluster.yml")
	// The same project name would make one setup's `up` treat the other's
	// containers as orphans and share volume names.
	if single.Name == cluster.Name {
		t.Errorf("both compose files use project name %q", single.Name)
	}
}

// optionalProfiles are the compose profiles of services that are meant
// to stay off with a plain `up`.
var optionalProfiles = []string{"tracing"}

func mustLoadCompose(t *testing.T, file string, with ...cli.ProjectOptionsFn) *types.Project {
	t.Helper()
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	// No OS environment and no .env: the files must not depend on either.
	opts, err := cli.NewProjectOptions([]string{filepath.Join(wd, file)}, append([]cli.ProjectOptionsFn{cli.WithWorkingDirectory(wd)}, with...)...)
	if err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	p, err := opts.LoadProject(context.Background())
	if err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	for name, s := range p.DisabledServices {
		if len(s.Profiles) == 0 || slices.ContainsFunc(s.Profiles, func(p string) bool { return !slices.Contains(optionalProfiles, p) }) {
			t.Errorf("%s: %s is behind profiles %q: it never starts with a plain `up`", file, name, s.Profiles)
		}
	}
	return p
}

func mustService(t *testing.T, p *types.Project, name string) types.ServiceConfig {
	t.Helper()
	s, err := p.GetService(name)
	if err != nil {
		t.Fatalf("%v", err)
	}
	return s
}

func checkServiceNames(t *testing.T, p *types.Project, want ...string) {
	t.Helper()
	got := p.ServiceNames()
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Errorf("services = %q, want %q", got, want)
	}
}

// checkYugabyteDBNode checks what every YugabyteDB service needs: the pinned
// image, yugabyted in the foreground, its base_dir on a named volume, a
// fresh /tmp, restart, and a healthcheck of this node's YSQL.
func checkYugabyteDBNode(t *testing.T, p *types.Project, s types.ServiceConfig) {
	t.Helper()
	if s.Image != ybImage {
		t.Errorf("%s: image %q, want %q", s.Name, s.Image, ybImage)
	}

	args := yugabytedArgs(t, s)
	// yugabyted records the address it advertises at first start and binds
	// it on every start: without a stable name a new container IP after
	// `docker compose down` and `up` leaves the tserver unable to bind
	// (yugabyte-db#18572). The name is the service's, which every other
	// container resolves.
	if s.Hostname != s.Name || flagValue(args, "--advertise_address") != s.Name {
		t.Errorf("%s: hostname %q, --advertise_address %q; want both %q",
			s.Name, s.Hostname, flagValue(args, "--advertise_address"), s.Name)
	}
	if flagValue(args, "--background") != "false" {
		t.Errorf("%s: yugabyted %q must run with --background=false, or the container exits at once", s.Name, args)
	}
	baseDir := flagValue(args, "--base_dir")
	var onVolume bool
	for _, v := range s.Volumes {
		if v.Type == types.VolumeTypeVolume && v.Target == baseDir && v.Source != "" {
			if _, declared := p.Volumes[v.Source]; !declared {
				t.Errorf("%s: volume %q is not declared under top-level volumes", s.Name, v.Source)
			}
			onVolume = true
		}
	}
	if baseDir == "" || !onVolume {
		t.Errorf("%s: --base_dir=%q is not a named volume's target (volumes %+v): the data would die with the container",
			s.Name, baseDir, s.Volumes)
	}
	if !slices.Contains(s.Tmpfs, "/tmp") {
		t.Errorf("%s: tmpfs %q lacks /tmp: a stale lock file there stops YSQL after a restart (yugabyte-db#11377)", s.Name, s.Tmpfs)
	}
	if s.Restart != types.RestartPolicyUnlessStopped {
		t.Errorf("%s: restart %q, want unless-stopped", s.Name, s.Restart)
	}

	hc := s.HealthCheck
	if hc == nil || hc.Disable {
		t.Fatalf("%s: no healthcheck", s.Name)
	}
	// $$ in the file is Compose's escape for a literal $.
	if len(hc.Test) != 2 || hc.Test[0] != "CMD-SHELL" ||
		!strings.Contains(hc.Test[1], "pg_isready") ||
		!strings.Contains(hc.Test[1], "-h $(hostname)") ||
		!strings.Contains(hc.Test[1], "-p 5433") {
		t.Errorf("%s: healthcheck test %q, want CMD-SHELL pg_isready -h $(hostname) -p 5433 (YSQL on the container's hostname)",
			s.Name, hc.Test)
	}
	if hc.StartPeriod == nil || time.Duration(*hc.StartPeriod) < minStartPeriod {
		t.Errorf("%s: healthcheck start_period %v, want at least %s", s.Name, hc.StartPeriod, minStartPeriod)
	}
	if hc.Interval == nil || hc.Timeout == nil || hc.Retries == nil || *hc.Retries == 0 {
		t.Errorf("%s: healthcheck needs interval, timeout and retries: %+v", s.Name, hc)
	}
}

// yugabytedArgs returns the words of the `bin/yugabyted start` command s
// runs, directly or as the last line of a `bash -c` script. A script must
// pass `bash -n` and exec yugabyted, so that it gets the stop signal.
func yugabytedArgs(t *testing.T, s types.ServiceConfig) []string {
	t.Helper()
	cmd := []string(s.Command)
	if len(cmd) == 3 && (cmd[0] == "bash" || cmd[0] == "sh") && cmd[1] == "-c" {
		script := cmd[2]
		if out, err := exec.Command("bash", "-n", "-c", script).CombinedOutput(); err != nil {
			t.Errorf("%s: command script does not parse: %v\n%s", s.Name, err, out)
		}
		lines := strings.Split(strings.TrimSpace(script), "\n")
		last := strings.Fields(lines[len(lines)-1])
		if len(last) == 0 || last[0] != "exec" {
			t.Errorf("%s: the script's last line must exec yugabyted: %q", s.Name, script)
			return nil
		}
		cmd = last[1:]
		checkFirstStartWait(t, s, script, cmd)
	}
	if len(cmd) < 2 || cmd[0] != "bin/yugabyted" || cmd[1] != "start" {
		t.Errorf("%s: command %q, want bin/yugabyted start ...", s.Name, s.Command)
		return nil
	}
	return cmd[2:]
}

// checkFirstStartWait checks the guard of a joining node's script: it may
// wait for the node it joins only while it has no yugabyted.conf, i.e. on
// its first start; later it is a member already and must not wait on a peer.
func checkFirstStartWait(t *testing.T, s types.ServiceConfig, script string, cmd []string) {
	t.Helper()
	args := cmd[min(2, len(cmd)):]
	conf := flagValue(args, "--base_dir") + "/conf/yugabyted.conf"
	join := flagValue(args, "--join")
	if !strings.Contains(script, "[ -f "+conf+" ] ||") {
		t.Errorf("%s: the script must skip the wait when %s exists (a restart): %q", s.Name, conf, script)
	}
	if join == "" || !strings.Contains(script, "pg_isready -h "+join+" ") {
		t.Errorf("%s: the script must wait for the node it joins (%q): %q", s.Name, join, script)
	}
}

// flagValue returns the value of --name=value in args, or "".
// feedTServerFlags are the yb-tserver flags the change feed needs, with
// why: replication commands (CREATE_REPLICATION_SLOT, START_REPLICATION;
// on by default in 2025.2, set so that an older default cannot turn the
// feed off); REPLICA IDENTITY DEFAULT for the tables YSQL creates (its
// default, CHANGE, is yboutput's, and pgoutput sends whole new rows and
// old keys only under DEFAULT or FULL); and how long a slot counts as in
// use after its consumer last read it, above the consumer's 10 s status
// interval so that the active consumer keeps it, and short so that
// another instance takes over soon after it stops.
var feedTServerFlags = map[string]string{
	"ysql_yb_enable_replication_commands":        "true",
	"ysql_yb_default_replica_identity":           "DEFAULT",
	"ysql_cdc_active_replication_slot_window_ms": "15000",
}

// checkFeedFlags checks that node s runs with feedTServerFlags.
func checkFeedFlags(t *testing.T, s types.ServiceConfig) {
	t.Helper()
	got := map[string]string{}
	for _, kv := range strings.Split(flagValue(yugabytedArgs(t, s), "--tserver_flags"), ",") {
		if k, v, ok := strings.Cut(kv, "="); ok {
			got[k] = v
		}
	}
	for k, v := range feedTServerFlags {
		if got[k] != v {
			t.Errorf("%s: --tserver_flags has %s=%q, want %q (the change feed needs it)", s.Name, k, got[k], v)
		}
	}
}

func flagValue(args []string, name string) string {
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, name+"="); ok {
			return v
		}
	}
	return ""
}

func checkPublished(t *testing.T, s types.ServiceConfig, target uint32, published string) {
	t.Helper()
	for _, p := range s.Ports {
		if p.Target == target && p.Published == published {
			return
		}
	}
	t.Errorf("%s: port %d is not published on host port %s: %+v", s.Name, target, published, s.Ports)
}

func checkHostPortsUnique(t *testing.T, p *types.Project) {
	t.Helper()
	seen := map[string]string{}
	for _, s := range p.Services {
		for _, port := range s.Ports {
			if other, ok := seen[port.Published]; ok {
				t.Errorf("host port %s is published by both %s and %s", port.Published, other, s.Name)
			}
			seen[port.Published] = s.Name
		}
	}
}

// checkAPI checks the service built from the Dockerfile: build context, port
// 8080, restart, and an environment of variables the server knows.
func checkAPI(t *testing.T, p *types.Project, api types.ServiceConfig) {
	t.Helper()
	if api.Build == nil || api.Build.Context != p.WorkingDir {
		t.Errorf("api: build %+v, want context . (the repository root)", api.Build)
	} else if df := cmp.Or(api.Build.Dockerfile, "Dockerfile"); filepath.Join(api.Build.Context, df) != filepath.Join(p.WorkingDir, "Dockerfile") {
		t.Errorf("api: builds from %s, want the repository's Dockerfile", df)
	}
	checkPublished(t, api, 8080, "8080")
	if api.Restart != types.RestartPolicyUnlessStopped {
		t.Errorf("api: restart %q, want unless-stopped", api.Restart)
	}
	known := serverEnvVars(t)
	for k, v := range api.Environment {
		// OTEL_* are OpenTelemetry's own, read by its SDK
		// (cmd/server/tracing.go).
		if !known[k] && !strings.HasPrefix(k, "OTEL_") {
			t.Errorf("api: environment variable %s is not one the server reads (cmd/server/config.go)", k)
		}
		if v == nil {
			t.Errorf("api: environment variable %s has no value in the file", k)
		}
	}
	if v := api.Environment["FEED"]; v == nil || *v != "on" {
		t.Error(`api: FEED is not "on": YugabyteDB has no wal_level for FEED=auto to see logical replication by`)
	}
	if v := api.Environment["STARTUP_TIMEOUT"]; v == nil {
		t.Error("api: no STARTUP_TIMEOUT")
	} else if d, err := time.ParseDuration(*v); err != nil || d < 60*time.Second {
		t.Errorf("api: STARTUP_TIMEOUT %q, want a duration of at least 60s", *v)
	}
}

func checkDependsOnHealthy(t *testing.T, s types.ServiceConfig, dep string) {
	t.Helper()
	if d, ok := s.DependsOn[dep]; !ok || d.Condition != types.ServiceConditionHealthy {
		t.Errorf("%s: depends_on %s = %+v, want condition service_healthy", s.Name, dep, s.DependsOn[dep])
	}
}

// mustParseDSN parses the api's DATABASE_URL with pgx, the driver the
// server uses, so the test sees the hosts exactly as the server will.
func mustParseDSN(t *testing.T, api types.ServiceConfig) *pgconn.Config {
	t.Helper()
	v := api.Environment["DATABASE_URL"]
	if v == nil {
		t.Fatal("api: no DATABASE_URL")
	}
	cfg, err := pgconn.ParseConfig(*v)
	if err != nil {
		t.Fatalf("api: DATABASE_URL: %v", err)
	}
	if cfg.User != "yugabyte" || cfg.Database != "yugabyte" || cfg.TLSConfig != nil {
		t.Errorf("api: DATABASE_URL user %q, database %q, TLS %v; want yugabyte, yugabyte, sslmode=disable",
			cfg.User, cfg.Database, cfg.TLSConfig != nil)
	}
	return cfg
}

// dsnHosts lists host:port in the order pgx tries them.
func dsnHosts(cfg *pgconn.Config) []string {
	hosts := []string{net.JoinHostPort(cfg.Host, strconv.Itoa(int(cfg.Port)))}
	for _, f := range cfg.Fallbacks {
		// pgx adds a TLS and a plain fallback per host for some sslmodes.
		h := net.JoinHostPort(f.Host, strconv.Itoa(int(f.Port)))
		if h != hosts[len(hosts)-1] {
			hosts = append(hosts, h)
		}
	}
	return hosts
}

// serverEnvVars reads the variables the server's config struct declares
// (its envconfig tags), so a misspelt variable in a compose file fails here
// instead of being ignored by the server.
func serverEnvVars(t *testing.T) map[string]bool {
	t.Helper()
	f, err := goparser.ParseFile(token.NewFileSet(), filepath.Join("cmd", "server", "config.go"), nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	vars := map[string]bool{}
	ast.Inspect(f, func(n ast.Node) bool {
		if field, ok := n.(*ast.Field); ok && field.Tag != nil {
			tag, _ := strconv.Unquote(field.Tag.Value)
			if name := reflect.StructTag(tag).Get("envconfig"); name != "" {
				vars[name] = true
			}
		}
		return true
	})
	if !vars["DATABASE_URL"] || !vars["HTTP_ADDR"] {
		t.Fatalf("cmd/server/config.go: found only %v; has the config struct moved?", vars)
	}
	return vars
}

// --- Dockerfile ---

// dockerfile is what the tests need from the parsed Dockerfile.
type dockerfile struct {
	stages []instructions.Stage
	build  buildRun // the go build RUN of the first stage
}

// buildRun is the go build command line of the Dockerfile, word by word.
type buildRun struct {
	env    []string // the NAME=value words before go
	args   []string // the words after "go build"
	output string   // the value of -o
}

func mustParseDockerfile(t *testing.T) dockerfile {
	t.Helper()
	f, err := os.Open("Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	res, err := parser.Parse(f)
	if err != nil {
		t.Fatalf("Dockerfile: %v", err)
	}
	stages, _, err := instructions.Parse(res.AST, nil)
	if err != nil {
		t.Fatalf("Dockerfile: %v", err)
	}
	if len(stages) != 2 {
		t.Fatalf("Dockerfile: %d stages, want 2 (a Go builder and a runtime image)", len(stages))
	}
	d := dockerfile{stages: stages}
	for _, c := range stages[0].Commands {
		run, ok := c.(*instructions.RunCommand)
		if !ok {
			continue
		}
		words := runWords(t, run)
		i := slices.Index(words, "go")
		if i < 0 || i+1 >= len(words) || words[i+1] != "build" {
			continue
		}
		d.build = buildRun{env: words[:i], args: words[i+2:]}
		if j := slices.Index(d.build.args, "-o"); j >= 0 && j+1 < len(d.build.args) {
			d.build.output = d.build.args[j+1]
		}
	}
	if d.build.args == nil {
		t.Fatal("Dockerfile: the first stage has no RUN ... go build")
	}
	return d
}

// runWords splits a RUN line into words as the shell would, quotes removed.
func runWords(t *testing.T, run *instructions.RunCommand) []string {
	t.Helper()
	if !run.PrependShell {
		return run.CmdLine
	}
	words, err := shell.NewLex('\\').ProcessWords(strings.Join(run.CmdLine, " "), noEnv{})
	if err != nil {
		t.Fatalf("Dockerfile: RUN %q: %v", run.CmdLine, err)
	}
	return words
}

type noEnv struct{}

func (noEnv) Get(string) (string, bool) { return "", false }
func (noEnv) Keys() []string            { return nil }

func commands[T instructions.Command](s instructions.Stage) []T {
	var out []T
	for _, c := range s.Commands {
		if v, ok := c.(T); ok {
			out = append(out, v)
		}
	}
	return out
}

func TestDockerfileBuilder(t *testing.T) {
	t.Parallel()
	d := mustParseDockerfile(t)
	build := d.stages[0]

	// Pinned to a patch release no older than go.mod's go line, so the build
	// needs no toolchain download and is repeatable.
	m := regexp.MustCompile(`^golang:(1\.\d+\.\d+)(-[a-z0-9]+)?$`).FindStringSubmatch(build.BaseName)
	if m == nil {
		t.Fatalf("builder FROM %q, want golang:<major.minor.patch>[-variant]", build.BaseName)
	}
	goLine := mustGoLine(t)
	if version.Lang("go"+m[1]) != version.Lang("go"+goLine) || version.Compare("go"+m[1], "go"+goLine) < 0 {
		t.Errorf("builder golang:%s does not match go.mod's go %s (same minor, patch at least as new)", m[1], goLine)
	}
	if build.Name == "" {
		t.Error("the builder stage has no name for COPY --from")
	}

	// Modules are downloaded in a layer of their own, before the sources are
	// copied, so that editing code does not download them again.
	modFiles, download, copyAll := -1, -1, -1
	for i, c := range build.Commands {
		switch c := c.(type) {
		case *instructions.RunCommand:
			if strings.Contains(strings.Join(runWords(t, c), " "), "go mod download") {
				download = i
			}
		case *instructions.CopyCommand:
			if slices.Contains(c.SourcePaths, ".") && copyAll < 0 {
				copyAll = i
			} else if download < 0 {
				if !slices.Equal(c.SourcePaths, []string{"go.mod", "go.sum"}) {
					t.Errorf("COPY %q before go mod download; only go.mod and go.sum belong there", c.SourcePaths)
				}
				modFiles = i
			}
		}
	}
	if modFiles < 0 || download < modFiles || copyAll < download {
		t.Errorf("want COPY go.mod go.sum (at %d), RUN go mod download (at %d), COPY . . (at %d) in that order",
			modFiles, download, copyAll)
	}

	b := d.build
	if !slices.Contains(b.env, "CGO_ENABLED=0") {
		t.Errorf("go build runs with %q, want CGO_ENABLED=0 (a static binary for distroless/static)", b.env)
	}
	if !slices.Contains(b.args, "-trimpath") {
		t.Errorf("go build %q lacks -trimpath", b.args)
	}
	if b.output == "" || b.args[len(b.args)-1] != "./cmd/server" {
		t.Errorf("go build %q: want -o <file> ... ./cmd/server", b.args)
	}
}

func TestDockerfileRuntime(t *testing.T) {
	t.Parallel()
	d := mustParseDockerfile(t)
	final := d.stages[1]

	base := final.BaseName
	if base != "scratch" && !strings.HasPrefix(base, "gcr.io/distroless/static") {
		t.Errorf("final FROM %q, want gcr.io/distroless/static* or scratch", base)
	}
	if strings.HasSuffix(base, ":latest") {
		t.Errorf("final FROM %q: pin a tag, not latest", base)
	}

	// The binary built in the first stage is what the image runs.
	var binary string
	for _, c := range commands[*instructions.CopyCommand](final) {
		if c.From == d.stages[0].Name && slices.Equal(c.SourcePaths, []string{d.build.output}) {
			binary = c.DestPath
		}
	}
	if binary == "" {
		t.Fatalf("no COPY --from=%s %s in the final stage", d.stages[0].Name, d.build.output)
	}

	users := commands[*instructions.UserCommand](final)
	if len(users) == 0 {
		t.Error("no USER in the final stage: the container would run as root")
	} else {
		u := users[len(users)-1].User
		name, group, _ := strings.Cut(u, ":")
		if name == "" || name == "root" || name == "0" || group == "root" || group == "0" {
			t.Errorf("USER %q, want a non-root user and group (nonroot:nonroot or 65532:65532)", u)
		}
	}

	var exposed []string
	for _, c := range commands[*instructions.ExposeCommand](final) {
		exposed = append(exposed, c.Ports...)
	}
	if !slices.Contains(exposed, "8080") && !slices.Contains(exposed, "8080/tcp") {
		t.Errorf("EXPOSE %q, want 8080", exposed)
	}
	var addr string
	for _, c := range commands[*instructions.EnvCommand](final) {
		for _, kv := range c.Env {
			if kv.Key == "HTTP_ADDR" {
				addr = kv.Value
			}
		}
	}
	if _, port, err := net.SplitHostPort(addr); err != nil || port != "8080" {
		t.Errorf("ENV HTTP_ADDR=%q, want a listen address on the exposed port 8080", addr)
	}

	// distroless/static has no shell: every command must be in exec form.
	eps := commands[*instructions.EntrypointCommand](final)
	if len(eps) != 1 || eps[0].PrependShell || !slices.Equal(eps[0].CmdLine, []string{binary}) {
		t.Errorf("want exactly ENTRYPOINT [%q] (exec form)", binary)
	}
	hcs := commands[*instructions.HealthCheckCommand](final)
	if len(hcs) != 1 {
		t.Fatalf("%d HEALTHCHECKs in the final stage, want 1", len(hcs))
	}
	h := hcs[0].Health
	if want := []string{"CMD", binary, "healthcheck"}; !slices.Equal(h.Test, want) {
		t.Errorf("HEALTHCHECK %q, want %q (exec form: the image has no shell or curl)", h.Test, want)
	}
	// The probe gives up after 2s (cmd/server/healthcheck.go); Docker must
	// wait longer than that, or it kills the probe and reports no reason.
	if h.Timeout <= 2*time.Second || h.Interval <= 0 || h.StartPeriod <= 0 || h.Retries <= 0 {
		t.Errorf("HEALTHCHECK interval %s timeout %s start-period %s retries %d: want all set and timeout > 2s",
			h.Interval, h.Timeout, h.StartPeriod, h.Retries)
	}
}

func mustGoLine(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("go.mod")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^go (\S+)$`).FindSubmatch(b)
	if m == nil {
		t.Fatal("go.mod has no go line")
	}
	return string(m[1])
}

// TestDockerfileBuildIsStatic builds the server with the Dockerfile's own
// go build words (not a copy of them) and checks that the result needs no
// dynamic loader, as distroless/static requires, and that its healthcheck
// subcommand works.
func TestDockerfileBuildIsStatic(t *testing.T) {
	t.Parallel()
	b := mustParseDockerfile(t).build
	bin := filepath.Join(t.TempDir(), "server")
	args := slices.Clone(b.args)
	args[slices.Index(args, "-o")+1] = bin

	cmd := exec.Command("go", append([]string{"build"}, args...)...)
	cmd.Env = append(os.Environ(), b.env...) // later entries win
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %q with %q: %v\n%s", args, b.env, err, out)
	}

	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
			t.Errorf("the binary has a %s program header: it is dynamically linked", p.Type)
		}
	}
	if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
		t.Errorf("the binary needs shared libraries %q", libs)
	}

	t.Run("Healthcheck", func(t *testing.T) {
		for _, tc := range []struct {
			name   string
			status int
			exit   int
		}{
			{"Healthy", http.StatusOK, 0},
			{"Unhealthy", http.StatusServiceUnavailable, 1},
		} {
			t.Run(tc.name, func(t *testing.T) {
				srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					if r.URL.Path != "/healthz" {
						http.NotFound(w, r)
						return
					}
					w.WriteHeader(tc.status)
				}))
				defer srv.Close()
				cmd := exec.Command(bin, "healthcheck")
				// Only the port: as in the image, where HTTP_ADDR is ":8080".
				_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
				cmd.Env = []string{"HTTP_ADDR=:" + port}
				var stderr bytes.Buffer
				cmd.Stderr = &stderr
				err := cmd.Run()
				code := 0
				var exitErr *exec.ExitError
				if errors.As(err, &exitErr) {
					code = exitErr.ExitCode()
				} else if err != nil {
					t.Fatal(err)
				}
				if code != tc.exit {
					t.Errorf("server healthcheck exited %d, want %d; stderr: %s", code, tc.exit, stderr.String())
				}
			})
		}
	})
}

// --- .dockerignore ---

// TestDockerignore checks that the build context keeps every file the
// server's build reads (its Go files, embedded files, go.mod and go.sum,
// as go list reports them) and drops what must not be sent.
func TestDockerignore(t *testing.T) {
	t.Parallel()
	f, err := os.Open(".dockerignore")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	patterns, err := ignorefile.ReadAll(f)
	if err != nil {
		t.Fatal(err)
	}
	pm, err := patternmatcher.New(patterns)
	if err != nil {
		t.Fatal(err)
	}
	excluded := func(path string) bool {
		ok, err := pm.MatchesOrParentMatches(path)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		return ok
	}

	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("go", "list", "-deps", "-json=Dir,Module,GoFiles,EmbedFiles", "./cmd/server").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	needed := []string{"go.mod", "go.sum"}
	dec := json.NewDecoder(bytes.NewReader(out))
	for dec.More() {
		var pkg struct {
			Dir                 string
			Module              *struct{ Main bool }
			GoFiles, EmbedFiles []string
		}
		if err := dec.Decode(&pkg); err != nil {
			t.Fatal(err)
		}
		if pkg.Module == nil || !pkg.Module.Main {
			continue // the standard library or a module dependency
		}
		for _, name := range append(pkg.GoFiles, pkg.EmbedFiles...) {
			rel, err := filepath.Rel(wd, filepath.Join(pkg.Dir, name))
			if err != nil {
				t.Fatal(err)
			}
			needed = append(needed, filepath.ToSlash(rel))
		}
	}
	if !slices.Contains(needed, "openapi.yaml") || !slices.Contains(needed, "cmd/server/main.go") {
		t.Fatalf("go list found only %q", needed)
	}
	for _, p := range needed {
		if excluded(p) {
			t.Errorf(".dockerignore excludes %s, which the build needs", p)
		}
	}
	for _, p := range []string{".git/HEAD", ".env", "server.test", "cmd/server/server.test", "tmp/x", "README.md"} {
		if !excluded(p) {
			t.Errorf(".dockerignore sends %s to the build", p)
		}
	}
}
