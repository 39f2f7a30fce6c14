package telemetry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"
)

// Serve listens on addr (":9090", "127.0.0.1:0") and serves, until ctx is done:
//
//	/healthz  200 "ok" while the process runs
//	/readyz   200 "ready" when ready() is true (nil ready → always), else 503 "not ready"
//	/metrics  the metrics handler (omitted when nil), e.g. Telemetry.MetricsHandler
//
// It returns the bound address once listening. The server goroutines are owned by ctx: cancelling it shuts
// the server down (in-flight requests get up to 5 s). A serve failure after start is logged at ERROR.
func Serve(ctx context.Context, addr string, ready func() bool, metrics http.Handler, logger *slog.Logger) (net.Addr, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("telemetry: listen on %q: %w", addr, err)
	}
	srv := &http.Server{
		Handler:           healthMux(ready, metrics),
		ReadHeaderTimeout: 10 * time.Second,
		BaseContext:       func(net.Listener) context.Context { return ctx },
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelDebug),
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			logger.Error("health/metrics server stopped", "addr", ln.Addr().String(), Err(err))
		}
	}()
	go func() {
		select {
		case <-ctx.Done():
		case <-done:
			return
		}
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
		<-done
	}()
	return ln.Addr(), nil
}

func healthMux(ready func() bool, metrics http.Handler) *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if ready != nil && !ready() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ready\n"))
	})
	if metrics != nil {
		mux.Handle("GET /metrics", metrics)
	}
	return mux
}
