package client

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// A SOCKS5 lookup that arrives between the portal's init setting the interface and setting the DNS
// servers waits for the servers instead of failing with "host unreachable" (seen as a rare failure of
// the first request through a freshly started userspace client).
func TestUserspaceResolveWaitsForDNS(t *testing.T) {
	p, err := newUserspacePlatform(Config{}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if err := p.SetInterface(netip.MustParseAddr("100.64.0.7"), netip.Addr{}); err != nil {
		t.Fatal(err)
	}
	defer p.late.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err = p.resolve(ctx, "demo.snowgate.test")
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("lookup before the DNS servers are set: %v, want it to wait until its deadline", err)
	}

	// Once init has set them (none here), the lookup goes on at once.
	if err := p.SetDNS(nil, ""); err != nil {
		t.Fatal(err)
	}
	_, err = p.resolve(context.Background(), "demo.snowgate.test")
	if err == nil || !strings.Contains(err.Error(), "no DNS resolver configured") {
		t.Fatalf("lookup after SetDNS(none): %v", err)
	}
	// Addresses need no lookup at all.
	if a, err := p.resolve(context.Background(), "198.51.100.10"); err != nil || len(a) != 1 {
		t.Fatalf("address: %v %v", a, err)
	}
}
