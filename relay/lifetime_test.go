package relay

import (
	"testing"
	"time"

	"github.com/pion/stun/v4"
)

// TestLifetimeNegotiation pins pion's lifetime choice, a known deviation
// from RFC 8656 (see the package doc): requested < 1 h → requested;
// requested ≥ 1 h or absent → Config.AllocationLifetime (600 s). RFC 8656
// would grant max(600 s, min(requested, 3600 s)).
func TestLifetimeNegotiation(t *testing.T) {
	s := startRelay(t, loopbackConfig())
	granted := func(resp *stun.Message) time.Duration {
		t.Helper()
		if resp.Type.Class != stun.ClassSuccessResponse {
			t.Fatalf("%v: error %d", resp.Type, errorCode(resp))
		}
		raw, err := resp.Get(stun.AttrLifetime)
		if err != nil || len(raw) != 4 {
			t.Fatalf("%v without LIFETIME: %v", resp.Type, err)
		}
		return time.Duration(uint32(raw[0])<<24|uint32(raw[1])<<16|uint32(raw[2])<<8|uint32(raw[3])) * time.Second
	}
	for _, tc := range []struct {
		name      string
		requested time.Duration // 0: no LIFETIME attribute
		want      time.Duration // what pion grants
		rfc       time.Duration // what RFC 8656 says (for the record)
	}{
		{"absent", 0, 600 * time.Second, 600 * time.Second},
		{"half hour", 1800 * time.Second, 1800 * time.Second, 1800 * time.Second},
		{"just below the cap", 3599 * time.Second, 3599 * time.Second, 3599 * time.Second},
		{"the cap", 3600 * time.Second, 600 * time.Second, 3600 * time.Second},
		{"above the cap", 7200 * time.Second, 600 * time.Second, 3600 * time.Second},
		{"below the default", 60 * time.Second, 60 * time.Second, 600 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			user, pass := firezoneCreds(s, "salt-"+tc.name, time.Hour)
			r := newRawClient(t, s.Addr(), user, pass)
			attrs := []stun.Setter{requestedTransportUDP()}
			if tc.requested > 0 {
				attrs = append(attrs, lifetimeAttr(tc.requested))
			}
			if got := granted(r.request(stun.MethodAllocate, attrs...)); got != tc.want {
				t.Errorf("Allocate: granted %v, want %v (RFC 8656: %v)", got, tc.want, tc.rfc)
			}
			var refresh []stun.Setter
			if tc.requested > 0 {
				refresh = append(refresh, lifetimeAttr(tc.requested))
			}
			if got := granted(r.request(stun.MethodRefresh, refresh...)); got != tc.want {
				t.Errorf("Refresh: granted %v, want %v (RFC 8656: %v)", got, tc.want, tc.rfc)
			}
		})
	}
}
