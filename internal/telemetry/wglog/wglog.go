// Package wglog adapts snowgate's loggers (internal/telemetry) for wireguard-go. It lives apart from
// internal/telemetry so that binaries without WireGuard (snowgate-relay) do not link wireguard-go through
// their logging.
package wglog

import (
	"context"
	"fmt"
	"log/slog"

	"golang.zx2c4.com/wireguard/device"

	"github.com/snowgate/snowgate/internal/telemetry"
)

// Component is the component wireguard-go's logs carry ("wireguard=debug" directives apply to it).
const Component = "wireguard"

// New adapts l for wireguard-go as component "wireguard". Verbosef → DEBUG. Errorf → WARN: wireguard-go
// reports per-peer and per-packet failures there (failed handshake sends, bad packets), which telemetry should
// count but which need no human; failures of the device itself (bind, TUN) surface as errors returned to our
// code, which logs them at ERROR with context. Records carry wireguard-go's call site. A nil l discards.
func New(l *slog.Logger) *device.Logger {
	if l == nil {
		l = slog.New(slog.DiscardHandler)
	}
	l = telemetry.Component(l, Component)
	return &device.Logger{
		Verbosef: func(format string, args ...any) {
			if l.Enabled(context.Background(), slog.LevelDebug) {
				telemetry.LogAt(l, telemetry.CallerPC(0), slog.LevelDebug, fmt.Sprintf(format, args...))
			}
		},
		Errorf: func(format string, args ...any) {
			if l.Enabled(context.Background(), slog.LevelWarn) {
				telemetry.LogAt(l, telemetry.CallerPC(0), slog.LevelWarn, fmt.Sprintf(format, args...))
			}
		},
	}
}
