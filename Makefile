# Everyday commands. CI runs .ci/run, which does what `make lint test` does and checks that `make generate`
# changes nothing.

# The YugabyteDB that docker-compose.yml publishes on localhost:5433.
YUGABYTE_URL := postgres://yugabyte:yugabyte@localhost:5433/yugabyte?sslmode=disable

# Tools run at pinned versions with `go run pkg@version`, so they need no install step and stay out of go.mod.
STATICCHECK := go run honnef.co/go/tools/cmd/staticcheck@v0.8.2
REDOCLY := npx --yes @redocly/cli@2.77.0

.PHONY: test test-yugabyte run dev docker compose-up compose-cluster-up compose-down lint generate bench bench-smoke

## test: the whole suite on a throwaway PostgreSQL (or on TEST_DATABASE_URL if set)
test:
	go test -race -count=1 ./...

## test-yugabyte: the whole suite against the compose file's YugabyteDB (needs Docker)
test-yugabyte:
	docker compose up -d --wait --wait-timeout 300 yugabytedb
	TEST_DATABASE_URL='$(YUGABYTE_URL)' go test -race -count=1 ./...

## run: the server on this machine, against DATABASE_URL (default: localhost:5433)
run:
	go run ./cmd/server

## dev: a throwaway PostgreSQL (from this machine's server binaries) and the server on 127.0.0.1:8080; Ctrl-C stops and deletes both
dev:
	scripts/dev.sh

## generate: regenerate the Go client (internal/apiclient) from openapi.yaml; CI fails if this changes the tree
generate:
	go generate ./...

## docker: the image, as docker-compose.yml builds it
docker:
	docker build -t testsapi .

## compose-up: one YugabyteDB node and the API on :8080
compose-up:
	docker compose up --build

## compose-cluster-up: three YugabyteDB nodes (RF3) and the API on :8080
compose-cluster-up:
	docker compose -f docker-compose.cluster.yml up --build

## compose-down: stop either setup (their data volumes stay; add -v to drop them)
compose-down:
	docker compose down
	docker compose -f docker-compose.cluster.yml down

## bench: the server against the database's own limit (BENCHMARKS.md); a few minutes; needs wrk and the
## PostgreSQL server binaries. More flags: make bench BENCH_FLAGS='-only page -pprof /tmp/prof'
bench:
	go run ./bench $(BENCH_FLAGS)

## bench-smoke: one tiny round of every workload, to check that the benchmark still works (CI runs it)
bench-smoke:
	go run ./bench -smoke

## lint: gofmt, go vet, staticcheck and the OpenAPI linter, as in .ci/run
lint:
	@unformatted=$$(gofmt -l .); \
	if [ -n "$$unformatted" ]; then echo "these files need gofmt -w:" >&2; echo "$$unformatted" >&2; exit 1; fi
	go vet ./...
	$(STATICCHECK) ./...
	$(REDOCLY) lint openapi.yaml
