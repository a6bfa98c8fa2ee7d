#!/usr/bin/env bash
# `make dev`: a throwaway PostgreSQL and the server against it, for machines without Docker.
#
# PostgreSQL is initialised in a temporary directory from the server binaries on this machine (pg_config
# --bindir, else the newest /usr/lib/postgresql/*/bin; `apt-get install postgresql` provides them) and listens
# on 127.0.0.1 on a free port. Ctrl-C (or SIGTERM) stops the server gracefully, then PostgreSQL, and deletes
# the directory. As root, PostgreSQL runs as the postgres user (it refuses to run as root).
#
# The server's configuration passes through from the environment (see the README); HTTP_ADDR defaults to
# 127.0.0.1:8080 here, and DATABASE_URL is set to the throwaway database.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "dev: $*" >&2; }

bindir=""
if command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir)/initdb" ]; then
	bindir=$(pg_config --bindir)
else
	for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k5 -V -r); do
		if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then
			bindir=$d
			break
		fi
	done
fi
if [ -z "$bindir" ]; then
	say "no PostgreSQL server binaries (initdb, pg_ctl) found; install them, e.g. apt-get install postgresql"
	exit 1
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/testsapi-dev.XXXXXX")
pg=$tmp/pg
mkdir -p "$pg/sock"
as_pg=()
if [ "$(id -u)" = 0 ]; then
	# PostgreSQL refuses to run as root; the postgres user must be able to reach its directory.
	as_pg=(runuser -u postgres --)
	chmod 711 "$tmp"
	chown -R postgres: "$pg"
fi

server=""
cleanup() {
	local status=$?
	if [ -n "$server" ] && kill -0 "$server" 2>/dev/null; then
		kill -TERM "$server" 2>/dev/null || true
		wait "$server" 2>/dev/null || true
	fi
	if [ -f "$pg/data/postmaster.pid" ]; then
		(cd "$pg" && "${as_pg[@]}" "$bindir/pg_ctl" stop -D "$pg/data" -m fast -w >/dev/null) ||
			say "could not stop PostgreSQL; see $pg/server.log"
	fi
	rm -rf "$tmp"
	say "stopped; removed $tmp"
	exit "$status"
}
trap cleanup EXIT

say "building the server"
go build -o "$tmp/server" ./cmd/server

# The PostgreSQL commands run from its own directory: the postgres user may not be allowed into ours.
pg_run() { (cd "$pg" && "${as_pg[@]}" "$@"); }
pg_run "$bindir/initdb" -D "$pg/data" -U postgres --auth=trust -E UTF8 --no-sync --locale=C.UTF-8 >"$pg/initdb.log" 2>&1 ||
	{ rm -rf "$pg/data"; pg_run "$bindir/initdb" -D "$pg/data" -U postgres --auth=trust -E UTF8 --no-sync --locale=C >"$pg/initdb.log" 2>&1; } ||
	{ cat "$pg/initdb.log" >&2; exit 1; }

# A free port: one nothing answers on now. Another process may take it before PostgreSQL does, so try a few.
port=""
for _ in 1 2 3 4 5; do
	candidate=$((20000 + RANDOM % 40000))
	if (: <"/dev/tcp/127.0.0.1/$candidate") 2>/dev/null; then
		continue # something listens there
	fi
	# setsid: a session of its own, so a Ctrl-C in this terminal reaches only this script, which stops
	# PostgreSQL after the server; -w waits for pg_ctl's own exit status.
	if pg_run setsid -w "$bindir/pg_ctl" start -w -t 60 -D "$pg/data" -l "$pg/server.log" \
		-o "-p $candidate -k '$pg/sock' -c listen_addresses=127.0.0.1" >/dev/null; then
		port=$candidate
		break
	fi
done
if [ -z "$port" ]; then
	say "PostgreSQL did not start; its log:"
	cat "$pg/server.log" >&2 || true
	exit 1
fi

export DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres?sslmode=disable"
export HTTP_ADDR="${HTTP_ADDR:-127.0.0.1:8080}"
say "PostgreSQL ($("$bindir/postgres" --version)) on 127.0.0.1:$port, data in $tmp (deleted on exit)"
say "DATABASE_URL=$DATABASE_URL"
say "server on $HTTP_ADDR: try http://$HTTP_ADDR/docs; Ctrl-C stops both"

# The server runs in a session of its own too, and gets each signal this script gets exactly once: its
# first INT or TERM starts a graceful shutdown, a second one kills it at once.
forward() { if [ -n "$server" ]; then kill -s "$1" "$server" 2>/dev/null || true; fi; }
trap 'forward INT' INT
trap 'forward TERM' TERM
setsid "$tmp/server" &
server=$!
status=0
while :; do
	if wait "$server"; then status=0; else status=$?; fi
	# wait also returns (with 128+signal) when a trapped signal arrives; go on waiting while the server runs.
	kill -0 "$server" 2>/dev/null || break
done
if [ "$status" -gt 128 ]; then
	# The server may have exited between that wait and kill -0: collect its own status. 127 means the
	# wait above already had it (it died of a signal).
	s=0
	wait "$server" 2>/dev/null || s=$?
	if [ "$s" -ne 127 ]; then status=$s; fi
fi
server=""
exit "$status"
