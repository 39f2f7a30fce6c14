package netlab

import (
	"errors"
	"net/netip"
	"testing"
)

func TestParseLabPrefix(t *testing.T) {
	for _, tc := range []struct {
		in      string
		wantErr error // nil: must parse; errAny: any error
	}{
		{"198.18.0.0/15", nil},
		{"198.19.4.0/24", nil},
		{"192.0.2.0/24", nil},
		{"192.0.2.128/25", nil},
		{"198.51.100.0/24", nil},
		{"203.0.113.0/24", nil},
		{"2001:db8::/32", nil},
		{"2001:db8:ffff::/64", nil},
		{"198.16.0.0/14", ErrPrefixNotAllowed},
		{"10.0.0.0/8", ErrPrefixNotAllowed},
		{"10.1.0.0/24", ErrPrefixNotAllowed},
		{"172.16.0.0/12", ErrPrefixNotAllowed},
		{"192.168.1.0/24", ErrPrefixNotAllowed},
		{"192.0.3.0/24", ErrPrefixNotAllowed},
		{"2001:db9::/64", ErrPrefixNotAllowed},
		{"fd00::/64", ErrPrefixNotAllowed},
		{"2001:db8::/31", ErrPrefixNotAllowed},
		{"192.0.2.1/24", errAny},
		{"192.0.2.0/31", errAny},
		{"2001:db8::/127", errAny},
		{"::ffff:192.0.2.0/120", errAny},
		{"not a prefix", errAny},
		{"", errAny},
	} {
		p, err := ParseLabPrefix(tc.in)
		switch {
		case tc.wantErr == nil && err != nil:
			t.Errorf("ParseLabPrefix(%q) = %v, want ok", tc.in, err)
		case tc.wantErr == nil && p.String() != tc.in:
			t.Errorf("ParseLabPrefix(%q) = %s", tc.in, p)
		case tc.wantErr != nil && err == nil:
			t.Errorf("ParseLabPrefix(%q) = %s, want error", tc.in, p)
		case tc.wantErr != nil && tc.wantErr != errAny && !errors.Is(err, tc.wantErr):
			t.Errorf("ParseLabPrefix(%q) error %v, want %v", tc.in, err, tc.wantErr)
		}
	}
}

var errAny = errors.New("any error")

func TestAllocator(t *testing.T) {
	a := newAllocator(netip.MustParsePrefix("192.0.2.0/30"))
	if err := a.reserve(netip.MustParseAddr("192.0.2.2")); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"192.0.2.0", "192.0.2.3", "192.0.2.2", "192.0.2.4", "2001:db8::1"} {
		if err := a.reserve(netip.MustParseAddr(bad)); err == nil {
			t.Errorf("reserve(%s) succeeded", bad)
		}
	}
	got, err := a.take()
	if err != nil || got != netip.MustParseAddr("192.0.2.1") {
		t.Fatalf("take() = %v, %v; want 192.0.2.1", got, err)
	}
	if got, err := a.take(); !errors.Is(err, ErrAddrExhausted) {
		t.Fatalf("take() on a full /30 = %v, %v; want ErrAddrExhausted", got, err)
	}

	v6 := newAllocator(netip.MustParsePrefix("2001:db8:1::/126"))
	var seen []netip.Addr
	for {
		a, err := v6.take()
		if err != nil {
			break
		}
		seen = append(seen, a)
	}
	// IPv6 has no broadcast address: ::1, ::2 and ::3 are all usable.
	if len(seen) != 3 || seen[2] != netip.MustParseAddr("2001:db8:1::3") {
		t.Errorf("IPv6 /126 handed out %v", seen)
	}
}
