package ippacket_test

import "net/netip"

// Packets are built and checked with internal/ippacket/ippackettest (gVisor's tcpip/header), an
// implementation independent of the package under test.

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }
