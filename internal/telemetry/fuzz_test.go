package telemetry

import (
	"log/slog"
	"strings"
	"testing"
	"time"
)

func FuzzParseDirectives(f *testing.F) {
	for _, s := range []string{"", "info", "info,node=debug,client/dns=trace", "node=off", "=x", ",,", "a=b=c", "-8,x=12"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, err := ParseDirectives(s)
		if err != nil {
			return
		}
		_ = d.Level("client/dns/tcp")
		for name := range d.Components {
			if name == "" || strings.HasPrefix(name, "/") || strings.HasSuffix(name, "/") {
				t.Fatalf("bad component name %q from %q", name, s)
			}
		}
	})
}

func FuzzScrubText(f *testing.F) {
	for _, s := range []string{"token=abc", "Bearer x.y.z", `{"password":"p"}`, "psk: AAAA==", "plain"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		once := scrubText(s)
		if twice := scrubText(once); twice != once {
			t.Fatalf("not idempotent: %q → %q → %q", s, once, twice)
		}
		// The human renderer never panics on arbitrary text either.
		_ = appendHuman(nil, "c", time.Time{}, slog.LevelInfo, s, []field{{key: s, val: slog.StringValue(s)}})
	})
}
