package filter_test

import (
	"encoding/json"
	"errors"
	"net/netip"
	"testing"

	"github.com/snowgate/snowgate/gateway/filter"
	"github.com/snowgate/snowgate/internal/ippacket"
	"github.com/snowgate/snowgate/internal/portalapi"
)

var fuzzProtos = []ippacket.Protocol{ippacket.ProtoTCP, ippacket.ProtoUDP, ippacket.ProtoICMP, ippacket.ProtoICMPv6, 132}

// FuzzCompileJSON feeds portal JSON filter lists to Compile: an invalid list
// fails with ErrInvalidFilter, a valid one agrees with the raw list.
func FuzzCompileJSON(f *testing.F) {
	for _, s := range []string{
		`[]`,
		`null`,
		`[{"protocol":"icmp"}]`,
		`[{"protocol":"tcp","port_range_start":80,"port_range_end":443},{"protocol":"tcp","port_range_start":443,"port_range_end":8080}]`,
		`[{"protocol":"udp","port_range_start":53}]`,
		`[{"protocol":"udp","port_range_start":53,"port_range_end":52}]`,
		`[{"protocol":"sctp"}]`,
		`[{"protocol":"tcp","port_range_end":0},{"protocol":"udp"},{"protocol":"icmp","port_range_start":9}]`,
		`[{"protocol":"tcp","port_range_start":70000}]`,
	} {
		f.Add([]byte(s), byte(0), uint16(80))
	}
	f.Fuzz(func(t *testing.T, data []byte, protoSel byte, port uint16) {
		var fs []portalapi.Filter
		if err := json.Unmarshal(data, &fs); err != nil {
			return
		}
		s, err := filter.Compile(fs)
		valid := true
		for _, x := range fs {
			if x.Validate() != nil {
				valid = false
			}
		}
		if err != nil {
			if !errors.Is(err, filter.ErrInvalidFilter) || valid || s != nil {
				t.Fatalf("Compile(%v) = %v, %v (valid %v)", fs, s, err, valid)
			}
			return
		}
		if !valid {
			t.Fatalf("Compile(%v) accepted an invalid filter", fs)
		}
		proto := fuzzProtos[int(protoSel)%len(fuzzProtos)]
		for _, p := range []uint16{port, port - 1, port + 1, 0, 65535} {
			if got, want := s.Allows(proto, p), naiveAllows(fs, proto, p); got != want {
				t.Fatalf("Compile(%v).Allows(%d, %d) = %v, naive %v", fs, proto, p, got, want)
			}
		}
	})
}

// FuzzCheckPacket feeds arbitrary bytes, parsed as packets, to a Table and a
// Set: no panic, and the Set's decision follows the packet's accessors.
func FuzzCheckPacket(f *testing.F) {
	buf := make([]byte, 1500)
	n, _ := ippacket.BuildUDP(buf, netip.MustParseAddrPort("100.64.0.1:40000"), netip.MustParseAddrPort("198.51.100.1:53"), []byte("q"))
	f.Add(append([]byte(nil), buf[:n]...))
	n, _ = ippacket.BuildUDP(buf, netip.MustParseAddrPort("[fd00:2021:1111::1]:40000"), netip.MustParseAddrPort("[2001:db8::1]:53"), []byte("q"))
	f.Add(append([]byte(nil), buf[:n]...))
	f.Add(rawIP(client4, netip.MustParseAddr("198.51.100.1"), ippacket.ProtoTCP, tcpBytes(1, 22), 0, false))
	f.Add(rawIP(client6, netip.MustParseAddr("2001:db8::1"), ippacket.ProtoTCP, tcpBytes(1, 22), 0, false))
	f.Add(rawIP(client4, netip.MustParseAddr("198.51.100.1"), ippacket.ProtoICMP, icmpBytes(8, 0, nil), 0, false))
	f.Add(rawIP(client6, netip.MustParseAddr("2001:db8::1"), ippacket.ProtoICMPv6, icmpBytes(1, 4, make([]byte, 48)), 0, false))
	f.Add(rawIP(client6, netip.MustParseAddr("2001:db8::1"), ippacket.ProtoUDP, make([]byte, 8), 3, true))
	f.Add(rawIP(client4, netip.MustParseAddr("100.96.0.1"), 132, make([]byte, 12), 0, false))

	fs := []portalapi.Filter{tcpF(22, 22), udpF(50, 60), icmpF}
	set := filter.MustCompile(fs)
	tb, err := filter.NewTable(filter.Options{InternetExcludes: proxyRanges})
	if err != nil {
		f.Fatal(err)
	}
	for _, r := range []struct {
		id   string
		kind filter.Kind
		dsts []netip.Prefix
	}{
		{"cidr", filter.KindCIDR, []netip.Prefix{p("198.51.100.0/24"), p("2001:db8::/32")}},
		{"dns", filter.KindDNS, []netip.Prefix{p("100.96.0.1/32"), p("fd00:2021:1111:8000::1/128")}},
		{"internet", filter.KindInternet, nil},
	} {
		if err := tb.Set(r.id, r.kind, r.dsts, fs); err != nil {
			f.Fatal(err)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		pkt, err := ippacket.Parse(data)
		if err != nil {
			return
		}
		want := false
		switch proto := pkt.Protocol(); proto {
		case ippacket.ProtoTCP, ippacket.ProtoUDP:
			if _, dst, err := pkt.Ports(); err == nil {
				want = naiveAllows(fs, proto, dst)
			}
		case ippacket.ProtoICMP:
			want = pkt.Version() == 4
		case ippacket.ProtoICMPv6:
			want = pkt.Version() == 6
		}
		if got := set.AllowsPacket(pkt); got != want {
			t.Fatalf("AllowsPacket = %v, want %v (proto %d)", got, want, pkt.Protocol())
		}
		id, v := tb.Check(pkt)
		switch {
		case v == filter.VerdictNoResource && id != "",
			v != filter.VerdictNoResource && id == "",
			id == "dns" && (v == filter.VerdictAllow) != want,
			id == "internet" && v != filter.VerdictAllow:
			t.Fatalf("Check = %q %v (filters want %v)", id, v, want)
		}
	})
}
