package node

import (
	"net/netip"
	"testing"
)

// TestEndpointStrings: the endpoint strings wireguard-go logs name the path
// (they are only logged: the node never parses them back).
func TestEndpointStrings(t *testing.T) {
	a4 := &allocation{relayID: "r1", relayedAddr: netip.MustParseAddrPort("198.51.100.7:40000")}
	for _, tc := range []struct {
		ep   *endpoint
		want string
	}{
		{&endpoint{dst: netip.MustParseAddrPort("192.0.2.1:52625")}, "192.0.2.1:52625"},
		{&endpoint{dst: netip.MustParseAddrPort("[2001:db8::1]:52625")}, "[2001:db8::1]:52625"},
		{&endpoint{alloc: a4, dst: netip.MustParseAddrPort("203.0.113.9:3000")}, "relay(r1)/203.0.113.9:3000"},
		{&endpoint{pending: true}, "pending"},
	} {
		if got := tc.ep.DstToString(); got != tc.want {
			t.Errorf("DstToString = %q, want %q", got, tc.want)
		}
	}
}
