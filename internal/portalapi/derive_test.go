package portalapi

import (
	"testing"
	"time"
)

// The expected values below were computed once with Python's hashlib/base64 straight from the formulas in
// reference/firezone.md §2, not with this package's code.

func TestRelayCredentials(t *testing.T) {
	tests := []struct {
		secret, pk   string
		expiry       time.Time
		user, passwd string
	}{
		{"stamp-secret-1", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", GatewayRelayExpiry,
			"2145916800:UWQ+rJd3tjp7JoF00f1Cdtrt7JvJ6gvG5av2kEe8VPY", "0zdVD4jfG0/Wl66ubDlYAE6L/SERhnxC2WCaykbDyrY"},
		{"0123456789abcdef0123456789abcdef", "mJQDVVT6uEnX1vB/Y3h7XyfqnKpJ6jZW7X6C/+h1a0I=", time.Unix(1700000000, 0),
			"1700000000:6GBS/svos4jeNR0uKPP0zssVkuy/Jx1gJhcyARSNRhA", "MiS75BpgEzdaFtPhPmjOqsX+hy2b0QyFSyKxFbA3foc"},
	}
	for _, tt := range tests {
		u, p := RelayCredentials(tt.secret, tt.pk, tt.expiry)
		if u != tt.user || p != tt.passwd {
			t.Errorf("RelayCredentials(%q,%q,%v) = %q,%q; want %q,%q", tt.secret, tt.pk, tt.expiry, u, p, tt.user, tt.passwd)
		}
		if got := RelayPassword(tt.secret, tt.user); got != tt.passwd {
			t.Errorf("RelayPassword = %q, want %q", got, tt.passwd)
		}
		exp, _, err := ParseRelayUsername(u)
		if err != nil || !exp.Equal(tt.expiry) {
			t.Errorf("ParseRelayUsername(%q) = %v, %v", u, exp, err)
		}
	}
	if _, _, err := ParseRelayUsername("nocolon"); err == nil {
		t.Error("ParseRelayUsername accepted a username without ':'")
	}
}

func TestIceCredentials(t *testing.T) {
	tests := []struct {
		c, g           FlowPeer
		cu, cp, gu, gp string
	}{
		{FlowPeer{"c1", "cpk"}, FlowPeer{"g1", "gpk"}, "qi7d", "zt2x572emotlz2tq3ojfdy", "4vlp", "rpf5tut3qeo53dskfsmvka"},
		{FlowPeer{"0f7c8a2e-1b3d-4c5e-8f90-123456789abc", "mJQDVVT6uEnX1vB/Y3h7XyfqnKpJ6jZW7X6C/+h1a0I="},
			FlowPeer{"9a8b7c6d-5e4f-4a3b-9c2d-1e0f9a8b7c6d", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="},
			"xddf", "bh7rfeoj6f66oytg7ekbls", "7hf3", "4bfskeetmqyzqrpneqaola"},
	}
	for _, tt := range tests {
		c, g := IceCredentialsFor(tt.c, tt.g)
		want := [4]string{tt.cu, tt.cp, tt.gu, tt.gp}
		if got := [4]string{c.Username, c.Password, g.Username, g.Password}; got != want {
			t.Errorf("IceCredentialsFor(%v,%v) = %v, want %v", tt.c, tt.g, got, want)
		}
	}
}

func seq(from byte) []byte {
	b := make([]byte, 32)
	for i := range b {
		b[i] = from + byte(i)
	}
	return b
}

func TestPresharedKey(t *testing.T) {
	tests := []struct {
		cpk, want string
	}{
		{"cpk", "IwCm+lvtOsU98MbBNLc7A+Em7obltmdPaoU4Dj+Ol4o="},
		{"cpk2", "jraZ+z6sdtrqgto9R1CZzw6ou0CHeNfpVBjx1WpUta0="},
	}
	for _, tt := range tests {
		got, err := PresharedKey(FlowPeer{"c1", tt.cpk}, seq(0), FlowPeer{"g1", "gpk"}, seq(32))
		if err != nil || got != tt.want {
			t.Errorf("PresharedKey(cpk=%q) = %q, %v; want %q", tt.cpk, got, err, tt.want)
		}
	}
}

func TestRelayID(t *testing.T) {
	tests := []struct{ secret, want string }{
		{"stamp-secret-1", "d506a125-65f6-81a3-a456-ba5ea7245951"},
		{"", "e3b0c442-98fc-8c14-9afb-f4c8996fb924"},
	}
	for _, tt := range tests {
		if got := RelayID(tt.secret); got != tt.want {
			t.Errorf("RelayID(%q) = %q, want %q", tt.secret, got, tt.want)
		}
	}
}
