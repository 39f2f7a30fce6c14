package client

import (
	"net"
	"testing"

	"github.com/pion/transport/v5"
	"github.com/pion/transport/v5/stdnet"
)

// countingNet is a snapshot network (like pion's stdnet) that counts its refreshes.
type countingNet struct {
	*stdnet.Net
	updates int
}

func (c *countingNet) UpdateInterfaces() error { c.updates++; return nil }

func (c *countingNet) Interfaces() ([]*transport.Interface, error) {
	return []*transport.Interface{
		transport.NewInterface(net.Interface{Index: 1, Name: "eth0", Flags: net.FlagUp}),
		transport.NewInterface(net.Interface{Index: 2, Name: "tun-snowgate", Flags: net.FlagUp}),
	}, nil
}

// The node refreshes its network's interface list on every reset (roaming); the wrapper that hides the TUN
// must pass the refresh on, or the node keeps listing the addresses the host had at start.
func TestHideInterfacePassesRefreshOn(t *testing.T) {
	std, err := stdnet.NewNet()
	if err != nil {
		t.Fatal(err)
	}
	inner := &countingNet{Net: std}
	h := &hideInterface{Net: inner, name: "tun-snowgate"}
	u, ok := any(h).(interface{ UpdateInterfaces() error })
	if !ok {
		t.Fatal("hideInterface has no UpdateInterfaces")
	}
	if err := u.UpdateInterfaces(); err != nil || inner.updates != 1 {
		t.Fatalf("UpdateInterfaces: %v, %d refreshes of the network, want 1", err, inner.updates)
	}
	ifs, err := h.Interfaces()
	if err != nil || len(ifs) != 1 || ifs[0].Name != "eth0" {
		t.Fatalf("interfaces %v (%v), want eth0 only", ifs, err)
	}
}
