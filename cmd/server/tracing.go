package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/ybrest/testsapi/internal/api"
	"github.com/ybrest/testsapi/internal/store"
	"go.opentelemetry.io/contrib/exporters/autoexport"
	"go.opentelemetry.io/contrib/propagators/autoprop"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"
)

// defaultServiceName is the service.name of the spans without
// OTEL_SERVICE_NAME (OpenTelemetry's own default, "unknown_service:server",
// says nothing).
const defaultServiceName = "testsapi"

// tracing is OpenTelemetry tracing as the OTEL_* variables configure it.
type tracing struct {
	provider   *sdktrace.TracerProvider
	propagator propagation.TextMapPropagator
}

// tracingOff reports whether the environment leaves tracing off: it is on
// only when OTEL_TRACES_EXPORTER names an exporter (OpenTelemetry's own
// default would be "otlp", sending to localhost:4318 whether or not
// anything listens there), and OTEL_SDK_DISABLED is not "true".
func tracingOff() bool {
	exporter := strings.TrimSpace(os.Getenv("OTEL_TRACES_EXPORTER"))
	return exporter == "" || exporter == "none" || strings.EqualFold(os.Getenv("OTEL_SDK_DISABLED"), "true")
}

// newTracing returns the tracing the OTEL_* variables ask for, or nil when
// they leave it off (tracingOff): then nothing is traced, and no span,
// middleware or pgx tracer costs anything. The exporter is autoexport's
// (otlp over http/protobuf or grpc, or console), the sampler and the batch
// processor read OTEL_TRACES_SAMPLER and OTEL_BSP_* themselves, and the
// resource OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES. A value the
// exporter, the sampler, the propagators or the resource do not take is an
// error here, at start-up, like any of our own variables' (the SDK would
// only report the sampler's and the propagators' and go on with its
// default); the batch processor's own defaults replace bad OTEL_BSP_*
// values silently. Export errors later are logged as warnings.
func newTracing(ctx context.Context, log *slog.Logger) (*tracing, error) {
	if tracingOff() {
		return nil, nil
	}
	// The SDK reports what it cannot use of the environment to the
	// global error handler; collect it while the provider is built.
	var mu sync.Mutex
	var reported error
	otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) {
		mu.Lock()
		defer mu.Unlock()
		reported = errors.Join(reported, err)
	}))
	taken := func() error {
		mu.Lock()
		defer mu.Unlock()
		err := reported
		reported = nil
		return err
	}
	defer otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) {
		log.Warn("tracing", "error", err.Error())
	}))

	exp, err := autoexport.NewSpanExporter(ctx)
	if err != nil {
		return nil, fmt.Errorf("OTEL_TRACES_EXPORTER=%s or OTEL_EXPORTER_OTLP_*: %w", os.Getenv("OTEL_TRACES_EXPORTER"), err)
	}
	res, err := resource.New(ctx,
		resource.WithAttributes(semconv.ServiceName(defaultServiceName)),
		resource.WithFromEnv(), // OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES, over the default
		resource.WithTelemetrySDK(),
	)
	if err != nil {
		_ = exp.Shutdown(ctx)
		return nil, fmt.Errorf("OTEL_RESOURCE_ATTRIBUTES or OTEL_SERVICE_NAME: %w", err)
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res))
	if err := taken(); err != nil {
		_ = tp.Shutdown(ctx)
		return nil, fmt.Errorf("OTEL_TRACES_SAMPLER or OTEL_TRACES_SAMPLER_ARG: %w", err)
	}
	// OTEL_PROPAGATORS; by default W3C Trace Context (the traceparent
	// header) and W3C Baggage.
	prop := autoprop.NewTextMapPropagator()
	if err := taken(); err != nil {
		_ = tp.Shutdown(ctx)
		return nil, fmt.Errorf("OTEL_PROPAGATORS: %w", err)
	}
	return &tracing{provider: tp, propagator: prop}, nil
}

// tracingFlushTimeout bounds the export of the spans still buffered at
// shutdown: a collector that is gone must not hold the exit up for long.
const tracingFlushTimeout = 5 * time.Second

// shutdown exports the spans still buffered and stops the exporter. Call
// it once no request runs any more.
func (t *tracing) shutdown(log *slog.Logger) {
	if t == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), tracingFlushTimeout)
	defer cancel()
	if err := t.provider.Shutdown(ctx); err != nil {
		log.Warn("tracing: spans not exported at shutdown", "error", err.Error())
	}
}

// The options that turn tracing on in the pool, the store and the handler;
// none when t is nil (tracing off).

func (t *tracing) poolOptions() []store.PoolOption {
	if t == nil {
		return nil
	}
	return []store.PoolOption{store.TraceStatements(t.provider)}
}

func (t *tracing) storeOptions() []store.Option {
	if t == nil {
		return nil
	}
	return []store.Option{store.Tracing(t.provider)}
}

func (t *tracing) handlerOptions() []api.Option {
	if t == nil {
		return nil
	}
	return []api.Option{api.Tracing(t.provider, t.propagator)}
}
