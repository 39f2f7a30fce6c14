package telemetry

import (
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
)

// LevelTrace is the level below slog.LevelDebug used for per-packet and other very chatty events.
// Events of the TargetTelemetry component at this level are sampled and exported (see the package doc).
const LevelTrace = slog.Level(-8)

// levelOff disables a component entirely ("node=off").
const levelOff = slog.Level(1 << 20)

// ErrInvalidLogLevel is returned (wrapped) by Setup and ParseDirectives for a malformed level directive.
var ErrInvalidLogLevel = errors.New("invalid log level directive")

// Directives is a parsed LOG_LEVEL value: a default level and per-component levels
// ("info,node=debug,client/dns=trace"). The zero value means "info for everything".
type Directives struct {
	// Default applies to components matched by no directive.
	Default slog.Level
	// Components maps a component path ("client/dns") to its level.
	Components map[string]slog.Level
}

// ParseDirectives parses a comma-separated directive list. An item without "=" sets the default level; an
// item "component=level" sets the level of that component and of its sub-components ("client" covers
// "client/dns" unless a longer directive matches). Levels are trace, debug, info, warn (warning), error and
// off, case-insensitive, or a decimal slog level. "" means info.
func ParseDirectives(s string) (Directives, error) {
	d := Directives{Default: slog.LevelInfo, Components: map[string]slog.Level{}}
	for item := range strings.SplitSeq(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		name, lvl, hasName := strings.Cut(item, "=")
		if !hasName {
			l, err := parseLevel(item)
			if err != nil {
				return Directives{}, err
			}
			d.Default = l
			continue
		}
		name = strings.Trim(strings.TrimSpace(name), "/")
		if name == "" {
			return Directives{}, fmt.Errorf("%w: empty component in %q", ErrInvalidLogLevel, item)
		}
		l, err := parseLevel(strings.TrimSpace(lvl))
		if err != nil {
			return Directives{}, err
		}
		d.Components[name] = l
	}
	return d, nil
}

func parseLevel(s string) (slog.Level, error) {
	switch strings.ToLower(s) {
	case "trace":
		return LevelTrace, nil
	case "debug":
		return slog.LevelDebug, nil
	case "info":
		return slog.LevelInfo, nil
	case "warn", "warning":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	case "off", "none":
		return levelOff, nil
	}
	if n, err := strconv.Atoi(s); err == nil {
		return slog.Level(n), nil
	}
	return 0, fmt.Errorf("%w: unknown level %q", ErrInvalidLogLevel, s)
}

// Level returns the minimum level enabled for component: the level of the longest directive that is the
// component itself or one of its ancestors ("client" for "client/dns"), else the default.
func (d Directives) Level(component string) slog.Level {
	c := strings.Trim(component, "/")
	for c != "" {
		if l, ok := d.Components[c]; ok {
			return l
		}
		i := strings.LastIndexByte(c, '/')
		if i < 0 {
			break
		}
		c = c[:i]
	}
	return d.Default
}

// levelName is the name printed for a level: TRACE, DEBUG, INFO, WARN, ERROR, or slog's "DEBUG+2" style.
func levelName(l slog.Level) string {
	switch {
	case l == LevelTrace:
		return "TRACE"
	case l < LevelTrace:
		return fmt.Sprintf("TRACE%d", int(l-LevelTrace))
	case l < slog.LevelDebug:
		return fmt.Sprintf("TRACE+%d", int(l-LevelTrace))
	}
	return l.String()
}
