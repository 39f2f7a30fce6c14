package node

import (
	"net"
	"net/netip"
	"slices"
	"sync"
	"testing"

	"github.com/pion/transport/v5"
	"github.com/pion/transport/v5/stdnet"
)

// snapshotNet lists interfaces the way pion's stdnet does: a snapshot taken
// when it is created and refreshed only by UpdateInterfaces. live is what
// the host has now.
type snapshotNet struct {
	*stdnet.Net
	mu   sync.Mutex
	live []*transport.Interface
	snap []*transport.Interface
}

func (s *snapshotNet) Interfaces() ([]*transport.Interface, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.snap, nil
}

func (s *snapshotNet) UpdateInterfaces() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.snap = s.live
	return nil
}

func (s *snapshotNet) setLive(addr string) {
	ifc := transport.NewInterface(net.Interface{Index: 2, MTU: 1500, Name: "eth0", Flags: net.FlagUp})
	ifc.AddAddress(&net.IPNet{IP: net.ParseIP(addr), Mask: net.CIDRMask(24, 32)})
	s.mu.Lock()
	s.live = []*transport.Interface{ifc}
	s.mu.Unlock()
}

// TestResetListsCurrentAddresses: Reset is what roaming calls, so the host
// candidates must be the host's addresses after the change, even on a Net
// that keeps a snapshot of the interfaces (pion's stdnet, which the daemons
// use).
func TestResetListsCurrentAddresses(t *testing.T) {
	std, err := stdnet.NewNet()
	if err != nil {
		t.Fatal(err)
	}
	nw := &snapshotNet{Net: std}
	nw.setLive("192.0.2.2")
	_ = nw.UpdateInterfaces() // the snapshot taken when the daemon made its Net
	tn := newTestNode(t, "100.64.0.1", func(c *Config) { c.Net, c.IncludeLoopback = nw, false })
	hostAddrs := func() []netip.Addr {
		var out []netip.Addr
		for _, h := range *tn.n.hosts.Load() {
			out = append(out, h.Addr())
		}
		return out
	}
	if got := hostAddrs(); !slices.Equal(got, []netip.Addr{netip.MustParseAddr("192.0.2.2")}) {
		t.Fatalf("host addresses at start %v, want 192.0.2.2", got)
	}
	nw.setLive("192.0.2.77") // the laptop got a new address: roaming
	if _, err := tn.n.Reset(); err != nil {
		t.Fatal(err)
	}
	if got := hostAddrs(); !slices.Equal(got, []netip.Addr{netip.MustParseAddr("192.0.2.77")}) {
		t.Fatalf("host addresses after Reset %v, want the new 192.0.2.77", got)
	}
}
