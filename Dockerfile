# syntax=docker/dockerfile:1

# Build stage: the Go version matches go.mod's go line, so the build needs no
# toolchain download. deploy_test.go checks this file; keep the two in step.
FROM golang:1.26.8-bookworm AS build
WORKDIR /src
# Modules first: this layer is rebuilt only when go.mod or go.sum change.
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# A static binary (no cgo, no libc), so it runs on distroless/static.
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/server ./cmd/server

# Final stage: no shell, no package manager, a non-root user (65532).
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/server /server
USER nonroot:nonroot
ENV HTTP_ADDR=:8080
EXPOSE 8080
# The image has no curl: the binary probes its own /healthz (cmd/server/healthcheck.go).
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 CMD ["/server", "healthcheck"]
ENTRYPOINT ["/server"]
