package hostfwd

import (
	"maps"
	"net/netip"
	"testing"

	"go.uber.org/goleak"

	"github.com/snowgate/snowgate/internal/tundev"
)

// TestMain fails the run if a test leaves a goroutine behind.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestStateComment(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want priorSysctls // nil: error
	}{
		{"snowgate prior sysctls: net/ipv4/ip_forward=0 net/ipv6/conf/all/forwarding=1",
			priorSysctls{sysctlIPv4Forward: "0", sysctlIPv6Forward: "1"}},
		{"snowgate prior sysctls: net/ipv4/ip_forward=1", priorSysctls{sysctlIPv4Forward: "1"}},
		{"snowgate prior sysctls:", priorSysctls{}},
		{"someone else's comment", nil},
		{"snowgate prior sysctls: net/ipv4/conf/all/rp_filter=1", nil},               // unknown key
		{"snowgate prior sysctls: net/ipv4/ip_forward=1;rm", nil},                    // not a number
		{"snowgate prior sysctls: net/ipv4/ip_forward=", nil},                        // empty
		{"snowgate prior sysctls: net/ipv4/ip_forward=12345", nil},                   // too long
		{"snowgate prior sysctls: net/ipv4/ip_forward", nil},                         // no value
		{"snowgate prior sysctls: net/ipv4/ip_forward=0 net/ipv4/ip_forward=1", nil}, // twice
	} {
		got, err := parseStateComment(tc.in)
		if tc.want == nil {
			if err == nil {
				t.Errorf("parseStateComment(%q) = %v, want an error", tc.in, got)
			}
			continue
		}
		if err != nil || !maps.Equal(got, tc.want) {
			t.Errorf("parseStateComment(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
		if back, err := parseStateComment(got.comment()); err != nil || !maps.Equal(back, got) {
			t.Errorf("round trip of %v: %v, %v", got, back, err)
		}
	}
}

func TestConfigDefaultsAndValidation(t *testing.T) {
	if DefaultTunName != tundev.DefaultName {
		t.Errorf("DefaultTunName %q != tundev.DefaultName %q", DefaultTunName, tundev.DefaultName)
	}
	cfg := Config{}.withDefaults()
	if cfg.TunName != DefaultTunName || cfg.TableName != DefaultTableName || len(cfg.SourcePrefixes) != 2 {
		t.Errorf("defaults: %+v", cfg)
	}
	if err := cfg.validate(); err != nil {
		t.Errorf("defaults invalid: %v", err)
	}
	for _, bad := range []Config{
		{TunName: "a-name-longer-than-15"},
		{OutboundInterfaces: []string{"eth 0"}},
		{OutboundInterfaces: []string{DefaultTunName}},
		{TableName: `x" drop`},
		{SourcePrefixes: []netip.Prefix{{}}},
	} {
		if err := bad.withDefaults().validate(); err == nil {
			t.Errorf("accepted %+v", bad)
		}
	}
}
