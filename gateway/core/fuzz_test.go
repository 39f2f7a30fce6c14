package core_test

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/snowgate/snowgate/gateway/core"
	"github.com/snowgate/snowgate/internal/ippacket"
	"github.com/snowgate/snowgate/internal/p2pcontrol"
	"github.com/snowgate/snowgate/internal/portalapi"
	"github.com/snowgate/snowgate/internal/tunnel"
	"github.com/snowgate/snowgate/node"
)

// A fuzz input is a sequence of operations: an opcode byte, a selector byte, a 2-byte big-endian length
// and that many bytes of argument.
const (
	opPortal  = iota // selector: event (fuzzEvents); argument: the JSON payload
	opNetwork        // argument: a packet from a client
	opTUN            // argument: a packet towards a client
	opTime           // selector: seconds to advance; the timer fires
	opResolve        // selector: which pending ResolveName; argument: 16-byte addresses, empty: failure
	opFail           // selector: which recent action fails (with ErrNoRelays)
	opNode           // selector: node event kind; argument: candidate
	numOps
)

var fuzzEvents = []string{
	portalapi.EventInit, portalapi.EventAuthorizeFlow, portalapi.EventRejectAccess, portalapi.EventResourceUpdated,
	portalapi.EventIceCandidates, portalapi.EventInvalidateIceCandidates, portalapi.EventRelaysPresence,
	portalapi.EventRequestConnection, portalapi.EventAllowAccess, "shutdown",
}

func op(code, sel byte, arg []byte) []byte {
	b := []byte{code, sel, 0, 0}
	binary.BigEndian.PutUint16(b[2:], uint16(len(arg)))
	return append(b, arg...)
}

func portalOp(t testing.TB, ev string, payload any) []byte {
	b, err := json.Marshal(payload)
	if err != nil {
		t.Fatal(err)
	}
	for i, e := range fuzzEvents {
		if e == ev {
			return op(opPortal, byte(i), b)
		}
	}
	t.Fatalf("event %q", ev)
	return nil
}

// fuzzSeeds are realistic sequences: init, authorisations (new and old protocol), NAT set-up, traffic.
func fuzzSeeds(t testing.TB) map[string][]byte {
	c := mkClient(1)
	initOp := portalOp(t, portalapi.EventInit, portalapi.GatewayInit{
		Interface: portalapi.Interface{IPv4: gwV4, IPv6: gwV6}, Relays: []portalapi.Relay{relayA},
	})
	auth := func(r portalapi.Resource, exp time.Time) []byte {
		return portalOp(t, portalapi.EventAuthorizeFlow, c.authorize("ref", r, exp))
	}
	assigned, _ := p2pcontrol.Encode(c.v6, gwV6, p2pcontrol.AssignedIPs{Resource: rid(2), Domain: "x.a.example", ProxyIPs: proxies8(1), Seq: 1})
	real4 := netip.MustParseAddr("198.18.0.1").As16()
	real6 := netip.MustParseAddr("2001:db8:ff::1").As16()
	seq := func(ops ...[]byte) []byte {
		var out []byte
		for _, o := range ops {
			out = append(out, o...)
		}
		return out
	}
	return map[string][]byte{
		"cidr-traffic": seq(initOp, auth(cidrRes(1, "198.51.100.0/24", tcpF(443, 443)), time.Time{}),
			op(opTime, 0, nil),
			op(opNetwork, 0, tcpPkt(netip.AddrPortFrom(c.v4, 5000), res1, header.TCPFlagSyn, nil)),
			op(opNetwork, 0, udpPkt(netip.AddrPortFrom(c.v4, 5000), res1, nil)),
			op(opNetwork, 0, udpPkt(netip.MustParseAddrPort("100.64.9.9:1"), res1, nil)),
			op(opTUN, 0, tcpPkt(res1, netip.AddrPortFrom(c.v4, 5000), header.TCPFlagAck, nil)),
			portalOp(t, portalapi.EventRejectAccess, portalapi.RejectAccess{ClientID: c.id, ResourceID: rid(1)})),
		"dns-nat": seq(initOp, auth(dnsRes(2, "*.a.example", udpF(53, 53)), t0.Add(time.Hour)),
			op(opTime, 0, nil),
			op(opNetwork, 0, assigned),
			op(opResolve, 0, append(real4[:], real6[:]...)),
			op(opNetwork, 0, udpPkt(netip.AddrPortFrom(c.v4, 4000), netip.AddrPortFrom(proxies4(1)[0], 53), []byte("q"))),
			op(opTUN, 0, udpPkt(netip.MustParseAddrPort("198.18.0.1:53"), netip.AddrPortFrom(c.v4, 4000), []byte("a"))),
			op(opNetwork, 0, echo(c.v6, proxies8(1)[5], 9, false)),
			op(opTime, 200, nil)),
		"no-relays": seq(initOp, auth(internetRes(3), time.Time{}), op(opFail, 0, nil), op(opTime, 0, nil),
			op(opNode, byte(node.EventNoRelays), nil), initOp,
			op(opNode, byte(node.EventCandidateAdded), []byte("candidate:1 1 udp 1 198.18.0.2 5000 typ host"))),
		"old-protocol": seq(initOp,
			portalOp(t, portalapi.EventRequestConnection, portalapi.RequestConnection{
				Resource: dnsRes(4, "app.b.example"), Ref: "old",
				Client: portalapi.RequestClient{ID: c.id,
					Payload: portalapi.ClientPayload{
						IceParameters: portalapi.IceCredentials{Username: "uf", Password: "pw-pw-pw-pw-pw-pw-pw-pw"},
						Domain:        &portalapi.ResolveRequest{Name: "app.b.example", ProxyIPs: proxies4(30)},
					},
					Peer: portalapi.Peer{PublicKey: c.key.String(), PresharedKey: c.psk.String(), IPv4: c.v4, IPv6: c.v6}},
			}),
			op(opResolve, 0, real4[:]),
			portalOp(t, portalapi.EventAllowAccess, portalapi.AllowAccess{ClientID: c.id, Resource: cidrRes(5, "2001:db8:1::/64")}),
			portalOp(t, portalapi.EventResourceUpdated, portalapi.ResourceUpdated{Resource: cidrRes(5, "2001:db8:2::/64", icmpF())}),
			op(opNetwork, 0, echo(c.v6, netip.MustParseAddr("2001:db8:2::1"), 1, false)),
			op(opPortal, 9, nil)), // shutdown
	}
}

// TestWriteFuzzCorpus writes the seeds to testdata/fuzz/FuzzCore when SNOWGATE_WRITE_CORPUS is set.
func TestWriteFuzzCorpus(t *testing.T) {
	if os.Getenv("SNOWGATE_WRITE_CORPUS") == "" {
		t.Skip("set SNOWGATE_WRITE_CORPUS=1 to rewrite testdata/fuzz/FuzzCore")
	}
	dir := filepath.Join("testdata", "fuzz", "FuzzCore")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, b := range fuzzSeeds(t) {
		if err := os.WriteFile(filepath.Join(dir, name), fmt.Appendf(nil, "go test fuzz v1\n[]byte(%q)\n", b), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// FuzzCore feeds the core arbitrary portal payloads (decoded as the driver does), packets in both
// directions, resolutions, failures and time. It checks that nothing panics, that a packet is passed only
// from (towards) a client the core knows, and that the core only ever sends well-formed packets to its
// clients through the tunnel.
func FuzzCore(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) { runFuzz(t, data) })
}

// TestFuzzSeedsReachTheirPaths checks that the seeds exercise what they are named for.
func TestFuzzSeedsReachTheirPaths(t *testing.T) {
	seeds := fuzzSeeds(t)
	st := runFuzz(t, seeds["dns-nat"]).Status(t0)
	if st.Counters.Assignments["active"] != 1 || st.Counters.ToResources != 1 || st.Counters.ToClients != 1 ||
		st.Counters.Dropped["nat_unreachable"] != 0 {
		t.Errorf("dns-nat: %+v", st.Counters)
	}
	st = runFuzz(t, seeds["cidr-traffic"]).Status(t0)
	if st.Counters.ToResources != 1 || st.Counters.Filtered != 1 || st.Counters.Dropped["spoofed_source"] != 1 || st.Counters.ToClients != 1 {
		t.Errorf("cidr-traffic: %+v", st.Counters)
	}
	st = runFuzz(t, seeds["old-protocol"]).Status(t0)
	if st.Counters.Assignments["active"] != 1 || st.Counters.ToResources != 1 || len(st.Clients) != 0 {
		t.Errorf("old-protocol: %+v %+v", st.Counters, st.Clients)
	}
}

// runFuzz runs one fuzz input and returns the core.
func runFuzz(t *testing.T, data []byte) *core.Gateway {
	h := newHarness(t, core.Config{})
	var pending []core.ResolveName
	var recent []tunnel.Action
	known := func() map[netip.Addr]bool {
		m := map[netip.Addr]bool{}
		for _, c := range h.g.Status(h.now).Clients {
			m[c.IPv4], m[c.IPv6] = true, true
		}
		return m
	}
	for len(data) >= 4 {
		code, sel := data[0]%numOps, data[1]
		n := min(int(binary.BigEndian.Uint16(data[2:4])), len(data)-4)
		arg := data[4 : 4+n]
		data = data[4+n:]
		before := known()
		switch code {
		case opPortal:
			ev := fuzzEvents[int(sel)%len(fuzzEvents)]
			if ev == "shutdown" {
				h.g.Shutdown(h.now)
				break
			}
			msg, err := portalapi.DecodeGatewayIngress(ev, arg)
			if err == nil {
				h.g.HandlePortalMessage(msg, h.now)
			}
		case opNetwork, opTUN:
			pkt := append([]byte(nil), arg...)
			var v tunnel.Verdict
			if code == opNetwork {
				v = h.g.HandleNetworkInput(pkt, h.now)
			} else {
				v = h.g.HandleTunInput(pkt, h.now)
			}
			if v == tunnel.Pass {
				p, err := ippacket.Parse(pkt)
				if err != nil {
					t.Fatalf("passed a packet that does not parse: %v", err)
				}
				if code == opNetwork && !before[p.Src()] {
					t.Fatalf("passed a packet from %v, no client's address", p.Src())
				}
				if code == opTUN && !before[p.Dst()] {
					t.Fatalf("passed a packet towards %v, no client's address", p.Dst())
				}
			}
		case opTime:
			h.now = h.now.Add(time.Duration(sel) * time.Second)
			h.g.HandleTimeout(h.now)
		case opResolve:
			if len(pending) == 0 {
				break
			}
			i := int(sel) % len(pending)
			rn := pending[i]
			pending = append(pending[:i], pending[i+1:]...)
			var addrs []netip.Addr
			for ; len(arg) >= 16; arg = arg[16:] {
				addrs = append(addrs, netip.AddrFrom16([16]byte(arg[:16])).Unmap())
			}
			var err error
			if len(addrs) == 0 {
				err = fmt.Errorf("no such host")
			}
			h.g.HandleResolved(rn.ClientID, rn.Assignment, addrs, err, h.now)
		case opFail:
			if len(recent) > 0 {
				h.g.HandleActionFailed(recent[int(sel)%len(recent)], fmt.Errorf("fuzz: %w", node.ErrNoRelays), h.now)
			}
		case opNode:
			h.g.HandleNodeEvent(node.Event{Kind: node.EventKind(sel % 8), ConnectionID: "client-1", Candidate: string(arg)}, h.now)
		}
		as := h.settle()
		after := known()
		for _, a := range as {
			switch a := a.(type) {
			case core.ResolveName:
				pending = append(pending, a)
			case tunnel.SendToTunnel:
				for _, pkt := range a.Packets {
					p, err := ippacket.Parse(pkt)
					if p2pcontrol.IsControl(pkt) {
						cp, cerr := p2pcontrol.Decode(pkt)
						if cerr != nil {
							t.Fatalf("sent a broken control packet: %v", cerr)
						}
						if !before[cp.Dst] && !after[cp.Dst] {
							t.Fatalf("control packet to %v, no client's address", cp.Dst)
						}
						continue
					}
					if err != nil {
						t.Fatalf("sent a packet that does not parse: %v", err)
					}
					if !before[p.Dst()] && !after[p.Dst()] {
						t.Fatalf("sent a packet to %v, no client's address", p.Dst())
					}
				}
			}
		}
		recent = append(recent[:0], as...)
		if at, ok := h.g.PollTimeout(); ok && at.Before(h.now) && len(as) > 0 {
			// settle ran the due timeouts: what is left must be in the future or just now.
			t.Fatalf("PollTimeout %v is in the past at %v", at, h.now)
		}
	}
	return h.g
}
