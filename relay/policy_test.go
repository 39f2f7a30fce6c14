package relay

import (
	"net"
	"net/netip"
	"testing"
)

func TestPeerPolicy(t *testing.T) {
	pfx := func(ss ...string) []netip.Prefix {
		var out []netip.Prefix
		for _, s := range ss {
			out = append(out, netip.MustParsePrefix(s))
		}
		return out
	}
	own := []netip.Addr{netip.MustParseAddr("198.18.0.1"), netip.MustParseAddr("2001:db8::1")}
	def := NewPeerPolicy(nil, nil, own, 49152, 65535)
	custom := NewPeerPolicy(pfx("127.0.0.1/32", "192.0.2.0/24", "::ffff:10.1.0.0/112", "198.18.0.0/15"), pfx("192.0.2.66/32", "203.0.113.0/24", "2001:db8::1/128"), own, 49152, 65535)
	tests := []struct {
		name string
		p    *PeerPolicy
		addr string
		want bool
	}{
		{"public v4", def, "198.51.100.7", true},
		{"public v6", def, "2001:db8:1::5", true},
		{"loopback", def, "127.0.0.1", false},
		{"loopback other", def, "127.3.2.1", false},
		{"unspecified", def, "0.0.0.0", false},
		{"this network", def, "0.1.2.3", false},
		{"metadata", def, "169.254.169.254", false},
		{"multicast", def, "239.1.1.1", false},
		{"broadcast", def, "255.255.255.255", false},
		{"rfc1918 10", def, "10.1.2.3", false},
		{"rfc1918 172", def, "172.31.0.1", false},
		{"rfc1918 192", def, "192.168.1.1", false},
		{"172 outside", def, "172.32.0.1", true},
		{"cgnat", def, "100.100.0.1", false},
		{"cgnat edge outside", def, "100.128.0.1", true},
		{"v6 loopback", def, "::1", false},
		{"v6 unspecified", def, "::", false},
		{"v6 link-local", def, "fe80::1", false},
		{"v6 link-local zoned", def, "fe80::1%eth0", false},
		{"v6 multicast", def, "ff02::1", false},
		{"ula", def, "fd00::1", false},
		{"mapped loopback", def, "::ffff:127.0.0.1", false},
		{"mapped rfc1918", def, "::ffff:10.0.0.1", false},
		{"own v4", def, "198.18.0.1", true},
		{"own v6", def, "2001:db8::1", true},
		{"own mapped", def, "::ffff:198.18.0.1", true},
		{"own denied explicitly", custom, "2001:db8::1", false},
		{"own neighbour", def, "198.18.0.2", true},
		{"allow beats default", custom, "127.0.0.1", true},
		{"allow is exact", custom, "127.0.0.2", false},
		{"allow mapped prefix", custom, "10.1.0.9", true},
		{"allow mapped prefix outside", custom, "10.2.0.9", false},
		{"deny beats allow", custom, "192.0.2.66", false},
		{"allow rest of range", custom, "192.0.2.65", true},
		{"deny public", custom, "203.0.113.9", false},
		{"invalid", def, "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var a netip.Addr
			if tt.addr != "" {
				a = netip.MustParseAddr(tt.addr)
			}
			if got := tt.p.Allowed(a); got != tt.want {
				t.Fatalf("Allowed(%s) = %v, want %v", tt.addr, got, tt.want)
			}
		})
	}
	// Destinations: own addresses only inside the relay port range, even
	// when an allow prefix covers them; deny still wins.
	for _, tt := range []struct {
		name string
		p    *PeerPolicy
		dst  string
		want bool
	}{
		{"own allocation port", def, "198.18.0.1:50000", true},
		{"own lowest port", def, "198.18.0.1:49152", true},
		{"own highest port", def, "198.18.0.1:65535", true},
		{"own below range", def, "198.18.0.1:49151", false},
		{"own turn port", def, "198.18.0.1:3478", false},
		{"own health port", def, "198.18.0.1:8080", false},
		{"own mapped turn port", def, "[::ffff:198.18.0.1]:3478", false},
		{"own v6 turn port", def, "[2001:db8::1]:3478", false},
		{"own v6 allocation", def, "[2001:db8::1]:60000", true},
		{"own covered by allow", custom, "198.18.0.1:3478", false},
		{"own denied in range", custom, "[2001:db8::1]:60000", false},
		{"neighbour any port", def, "198.18.0.2:3478", true},
		{"public any port", def, "198.51.100.7:22", true},
		{"loopback in range", def, "127.0.0.1:50000", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dst := netip.MustParseAddrPort(tt.dst)
			if got := tt.p.AllowedDest(dst); got != tt.want {
				t.Fatalf("AllowedDest(%s) = %v, want %v", tt.dst, got, tt.want)
			}
		})
	}
	if def.AllowedIP(net.IP{1, 2}) {
		t.Fatal("malformed net.IP allowed")
	}
	if !def.AllowedIP(net.ParseIP("198.51.100.7")) || def.AllowedIP(net.ParseIP("127.0.0.1")) {
		t.Fatal("AllowedIP disagrees with Allowed")
	}
}
