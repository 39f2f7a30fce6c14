package p2pcontrol

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

var (
	clientAddr = netip.MustParseAddr("fd00:2021:1111::a")
	gwAddr     = netip.MustParseAddr("fd00:2021:1111::1")
	resA       = "00000000-0000-0000-0000-000000000065"
	proxyIPs   = []netip.Addr{
		netip.MustParseAddr("100.96.0.1"), netip.MustParseAddr("100.96.0.2"),
		netip.MustParseAddr("100.96.0.3"), netip.MustParseAddr("100.96.0.4"),
		netip.MustParseAddr("fd00:2021:1111:8000::"), netip.MustParseAddr("fd00:2021:1111:8000::1"),
		netip.MustParseAddr("fd00:2021:1111:8000::2"), netip.MustParseAddr("fd00:2021:1111:8000::3"),
	}
)

var cmpAddr = cmp.Comparer(func(a, b netip.Addr) bool { return a == b })

// rawPacket builds an IPv6 control packet by hand: kind, reserved bytes and body are taken as given.
func rawPacket(kind byte, reserved byte, body string) []byte {
	pkt := make([]byte, IPv6HeaderLen+HeaderLen+len(body))
	pkt[0] = 0x60
	binary.BigEndian.PutUint16(pkt[4:6], uint16(HeaderLen+len(body)))
	pkt[6] = NextHeader
	s, d := clientAddr.As16(), gwAddr.As16()
	copy(pkt[8:], s[:])
	copy(pkt[24:], d[:])
	pkt[40] = kind
	pkt[41] = reserved
	copy(pkt[48:], body)
	return pkt
}

func TestEncodeDecodeRoundTrip(t *testing.T) {
	msgs := []Message{
		AssignedIPs{Resource: resA, Domain: "example.com", ProxyIPs: proxyIPs},
		AssignedIPs{Resource: resA, Domain: "example.com", ProxyIPs: proxyIPs[:4], Seq: 7},
		DomainStatus{Resource: resA, Domain: "example.com", Status: NatActive},
		DomainStatus{Resource: resA, Domain: "example.com", Status: NatInactive, Seq: 1 << 60},
		Goodbye{},
	}
	for _, m := range msgs {
		t.Run(m.Kind().String(), func(t *testing.T) {
			pkt, err := Encode(clientAddr, gwAddr, m)
			if err != nil {
				t.Fatal(err)
			}
			if !IsControl(pkt) {
				t.Fatal("IsControl = false for an encoded packet")
			}
			if pkt[0] != 0x60 || pkt[6] != 0xFF || pkt[7] != HopLimit {
				t.Fatalf("IPv6 header % x", pkt[:8])
			}
			if got := int(binary.BigEndian.Uint16(pkt[4:6])); got != len(pkt)-IPv6HeaderLen {
				t.Fatalf("payload length %d, packet %d", got, len(pkt))
			}
			if pkt[40] != byte(m.Kind()) || string(pkt[41:48]) != "\x00\x00\x00\x00\x00\x00\x00" {
				t.Fatalf("control header % x", pkt[40:48])
			}
			p, err := Decode(pkt)
			if err != nil {
				t.Fatal(err)
			}
			want := Packet{Src: clientAddr, Dst: gwAddr, Msg: m}
			if d := cmp.Diff(want, p, cmpAddr); d != "" {
				t.Fatalf("decode mismatch (-want +got):\n%s", d)
			}
		})
	}
}

// The JSON bodies are those of Firezone's connlib (field names, status spelling, proxy IPs as strings).
func TestWireJSONMatchesFirezone(t *testing.T) {
	pkt, err := Encode(clientAddr, gwAddr, AssignedIPs{Resource: resA, Domain: "example.com", ProxyIPs: proxyIPs[:4]})
	if err != nil {
		t.Fatal(err)
	}
	want := `{"resource":"00000000-0000-0000-0000-000000000065","domain":"example.com","proxy_ips":["100.96.0.1","100.96.0.2","100.96.0.3","100.96.0.4"]}`
	if got := string(pkt[48:]); got != want {
		t.Fatalf("AssignedIps JSON\n got %s\nwant %s", got, want)
	}
	pkt, err = Encode(clientAddr, gwAddr, DomainStatus{Resource: resA, Domain: "example.com", Status: NatActive})
	if err != nil {
		t.Fatal(err)
	}
	want = `{"resource":"00000000-0000-0000-0000-000000000065","domain":"example.com","status":"Active"}`
	if got := string(pkt[48:]); got != want {
		t.Fatalf("DomainStatus JSON\n got %s\nwant %s", got, want)
	}
	pkt, err = Encode(clientAddr, gwAddr, Goodbye{})
	if err != nil {
		t.Fatal(err)
	}
	if len(pkt) != IPv6HeaderLen+HeaderLen {
		t.Fatalf("Goodbye is %d bytes, want %d", len(pkt), IPv6HeaderLen+HeaderLen)
	}
}

// The largest AssignedIPs (253-byte domain, 8 IPv6-length addresses, max seq) fits the MTU.
func TestMaxAssignedIPsFitsMTU(t *testing.T) {
	label := strings.Repeat("a", 49)
	domain := strings.Join([]string{label, label, label, label, label, "com"}, ".")
	if len(domain) != MaxDomainLen {
		t.Fatalf("domain length %d", len(domain))
	}
	ips := make([]netip.Addr, 8)
	for i := range ips {
		ips[i] = netip.MustParseAddr("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")
	}
	pkt, err := Encode(clientAddr, gwAddr, AssignedIPs{Resource: resA, Domain: domain, ProxyIPs: ips, Seq: ^uint64(0)})
	if err != nil {
		t.Fatal(err)
	}
	if len(pkt) > MaxPacketSize {
		t.Fatalf("packet %d bytes", len(pkt))
	}
	t.Logf("largest AssignedIps packet: %d bytes", len(pkt))
}

func TestEncodeErrors(t *testing.T) {
	v4 := netip.MustParseAddr("100.64.0.1")
	zoned := netip.MustParseAddr("fe80::1%eth0")
	tests := []struct {
		name     string
		src, dst netip.Addr
		msg      Message
		want     error
	}{
		{"nil message", clientAddr, gwAddr, nil, ErrInvalidMessage},
		{"IPv4 source", v4, gwAddr, Goodbye{}, ErrInvalidAddress},
		{"zero destination", clientAddr, netip.Addr{}, Goodbye{}, ErrInvalidAddress},
		{"zoned destination", clientAddr, zoned, Goodbye{}, ErrInvalidAddress},
		{"bad UUID", clientAddr, gwAddr, AssignedIPs{Resource: "nope", Domain: "a.com", ProxyIPs: proxyIPs}, ErrInvalidMessage},
		{"empty domain", clientAddr, gwAddr, AssignedIPs{Resource: resA, ProxyIPs: proxyIPs}, ErrInvalidMessage},
		{"domain with space", clientAddr, gwAddr, DomainStatus{Resource: resA, Domain: "a b.com"}, ErrInvalidMessage},
		{"domain trailing dot", clientAddr, gwAddr, DomainStatus{Resource: resA, Domain: "a.com."}, ErrInvalidMessage},
		{"domain too long", clientAddr, gwAddr, DomainStatus{Resource: resA, Domain: strings.Repeat("a.", 127) + "a"}, ErrInvalidMessage},
		{"3 proxy IPs", clientAddr, gwAddr, AssignedIPs{Resource: resA, Domain: "a.com", ProxyIPs: proxyIPs[:3]}, ErrInvalidMessage},
		{"invalid proxy IP", clientAddr, gwAddr, AssignedIPs{Resource: resA, Domain: "a.com", ProxyIPs: make([]netip.Addr, 4)}, ErrInvalidMessage},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Encode(tt.src, tt.dst, tt.msg)
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestDecode(t *testing.T) {
	good := rawPacket(0, 0, `{"resource":"`+resA+`","domain":"example.com","proxy_ips":["1.1.1.1","1.1.1.2","1.1.1.3","1.1.1.4"]}`)
	truncHeader := rawPacket(1, 0, "")[:IPv6HeaderLen+4]
	binary.BigEndian.PutUint16(truncHeader[4:6], 4)
	lenTooBig := rawPacket(2, 0, "")
	binary.BigEndian.PutUint16(lenTooBig[4:6], 9)
	trailing := append(rawPacket(2, 0, ""), 1, 2, 3)
	ipv4 := append([]byte{0x45}, make([]byte, 39)...)
	udp6 := rawPacket(2, 0, "")
	udp6[6] = 17

	tests := []struct {
		name    string
		pkt     []byte
		want    Message
		wantErr error
	}{
		{"empty", nil, nil, ErrNotControl},
		{"IPv4", ipv4, nil, ErrNotControl},
		{"IPv6 UDP", udp6, nil, ErrNotControl},
		{"short IPv6 header", []byte{0x60, 0, 0, 0}, nil, ErrTruncated},
		{"payload length beyond buffer", lenTooBig, nil, ErrTruncated},
		{"short control header", truncHeader, nil, ErrTruncated},
		{"unknown kind", rawPacket(3, 0, "{}"), nil, ErrUnknownKind},
		{"unknown kind 255", rawPacket(255, 0, ""), nil, ErrUnknownKind},
		{"goodbye", rawPacket(2, 0, ""), Goodbye{}, nil},
		{"goodbye with payload and reserved bytes", rawPacket(2, 9, `{"future":1}`), Goodbye{}, nil},
		{"trailing bytes ignored", trailing, Goodbye{}, nil},
		{"assigned ips", good, AssignedIPs{Resource: resA, Domain: "example.com", ProxyIPs: []netip.Addr{
			netip.MustParseAddr("1.1.1.1"), netip.MustParseAddr("1.1.1.2"), netip.MustParseAddr("1.1.1.3"), netip.MustParseAddr("1.1.1.4"),
		}}, nil},
		{"assigned ips empty json", rawPacket(0, 0, ""), nil, ErrMalformed},
		{"assigned ips not json", rawPacket(0, 0, "{"), nil, ErrMalformed},
		{"assigned ips missing proxy_ips", rawPacket(0, 0, `{"resource":"`+resA+`","domain":"a.com"}`), nil, ErrMalformed},
		{"assigned ips bad ip", rawPacket(0, 0, `{"resource":"`+resA+`","domain":"a.com","proxy_ips":["1.1.1.1","x","1.1.1.3","1.1.1.4"]}`), nil, ErrMalformed},
		{"assigned ips empty ip", rawPacket(0, 0, `{"resource":"`+resA+`","domain":"a.com","proxy_ips":["","1.1.1.1","1.1.1.3","1.1.1.4"]}`), nil, ErrMalformed},
		{"assigned ips zoned ip", rawPacket(0, 0, `{"resource":"`+resA+`","domain":"a.com","proxy_ips":["fe80::1%lo","1.1.1.1","1.1.1.3","1.1.1.4"]}`), nil, ErrMalformed},
		{"assigned ips 5 ips", rawPacket(0, 0, `{"resource":"`+resA+`","domain":"a.com","proxy_ips":["1.1.1.1","1.1.1.1","1.1.1.1","1.1.1.1","1.1.1.1"]}`), nil, ErrMalformed},
		{"assigned ips bad uuid", rawPacket(0, 0, `{"resource":"xyz","domain":"a.com","proxy_ips":["1.1.1.1","1.1.1.2","1.1.1.3","1.1.1.4"]}`), nil, ErrMalformed},
		{"assigned ips negative seq", rawPacket(0, 0, `{"resource":"`+resA+`","domain":"a.com","seq":-1,"proxy_ips":["1.1.1.1","1.1.1.2","1.1.1.3","1.1.1.4"]}`), nil, ErrMalformed},
		{"domain status active upper-case uuid", rawPacket(1, 0, `{"resource":"`+strings.ToUpper(resA)+`","domain":"example.com","status":"Active","seq":3}`),
			DomainStatus{Resource: resA, Domain: "example.com", Status: NatActive, Seq: 3}, nil},
		{"domain status unknown status is inactive", rawPacket(1, 0, `{"resource":"`+resA+`","domain":"example.com","status":"what_is_this","extra":[1]}`),
			DomainStatus{Resource: resA, Domain: "example.com", Status: NatInactive}, nil},
		{"domain status lower-case active is inactive", rawPacket(1, 0, `{"resource":"`+resA+`","domain":"example.com","status":"active"}`),
			DomainStatus{Resource: resA, Domain: "example.com", Status: NatInactive}, nil},
		{"domain status missing status", rawPacket(1, 0, `{"resource":"`+resA+`","domain":"example.com"}`), nil, ErrMalformed},
		{"domain status numeric status", rawPacket(1, 0, `{"resource":"`+resA+`","domain":"example.com","status":1}`), nil, ErrMalformed},
		{"domain status bad domain", rawPacket(1, 0, `{"resource":"`+resA+`","domain":"a..b","status":"Active"}`), nil, ErrMalformed},
		{"domain status trailing garbage", rawPacket(1, 0, `{"resource":"`+resA+`","domain":"a.b","status":"Active"} x`), nil, ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := Decode(tt.pkt)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("err = %v, want %v", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(tt.want, p.Msg, cmpAddr); d != "" {
				t.Fatalf("message (-want +got):\n%s", d)
			}
			if p.Src != clientAddr || p.Dst != gwAddr {
				t.Fatalf("addresses %s -> %s", p.Src, p.Dst)
			}
		})
	}
}

func TestUnknownKindErrorCarriesKind(t *testing.T) {
	_, err := Decode(rawPacket(42, 0, "{}"))
	var uk *UnknownKindError
	if !errors.As(err, &uk) || uk.Kind != 42 {
		t.Fatalf("err = %v", err)
	}
}

// Firezone's own packets (from :: to ::) decode, so the caller sees the addresses and decides.
func TestDecodeFirezoneUnspecifiedAddresses(t *testing.T) {
	pkt := rawPacket(2, 0, "")
	clear(pkt[8:40])
	p, err := Decode(pkt)
	if err != nil {
		t.Fatal(err)
	}
	if p.Src != netip.IPv6Unspecified() || p.Dst != netip.IPv6Unspecified() {
		t.Fatalf("addresses %s -> %s", p.Src, p.Dst)
	}
}

func FuzzDecode(f *testing.F) {
	for _, m := range []Message{
		AssignedIPs{Resource: resA, Domain: "example.com", ProxyIPs: proxyIPs, Seq: 5},
		DomainStatus{Resource: resA, Domain: "example.com", Status: NatActive, Seq: 5},
		Goodbye{},
	} {
		pkt, err := Encode(clientAddr, gwAddr, m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(pkt)
	}
	f.Add(rawPacket(1, 0, `{"resource":"`+resA+`","domain":"a.b","status":"x"}`))
	f.Add(rawPacket(7, 0, "{}"))
	f.Add([]byte{0x60})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, pkt []byte) {
		p, err := Decode(pkt)
		if IsControl(pkt) == errors.Is(err, ErrNotControl) && len(pkt) >= IPv6HeaderLen {
			t.Fatalf("IsControl disagrees with Decode: %v", err)
		}
		if err != nil {
			return
		}
		// Whatever decodes re-encodes, and the re-encoded packet decodes to the same message.
		again, err := Encode(p.Src, p.Dst, p.Msg)
		if err != nil {
			t.Fatalf("decoded %#v does not re-encode: %v", p.Msg, err)
		}
		q, err := Decode(again)
		if err != nil {
			t.Fatalf("re-encoded packet does not decode: %v", err)
		}
		if d := cmp.Diff(p, q, cmpAddr); d != "" {
			t.Fatalf("round trip (-first +second):\n%s", d)
		}
	})
}
