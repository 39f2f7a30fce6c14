package socks5

import (
	"bytes"
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

var sentinels = []error{ErrTruncated, ErrVersion, ErrAddressType, ErrMalformed}

func TestParseRequest(t *testing.T) {
	tests := []struct {
		name    string
		in      []byte
		want    Request
		wantN   int
		wantErr error
	}{
		{"connect ipv4", []byte{5, 1, 0, 1, 192, 0, 2, 7, 0, 80}, Request{CommandConnect, Addr{IP: netip.MustParseAddr("192.0.2.7"), Port: 80}}, 10, nil},
		{"connect ipv4 trailing data", []byte{5, 1, 0, 1, 192, 0, 2, 7, 0, 80, 'G', 'E', 'T'}, Request{CommandConnect, Addr{IP: netip.MustParseAddr("192.0.2.7"), Port: 80}}, 10, nil},
		{"connect ipv6", append(append([]byte{5, 1, 0, 4}, netip.MustParseAddr("2001:db8::1").AsSlice()...), 1, 187), Request{CommandConnect, Addr{IP: netip.MustParseAddr("2001:db8::1"), Port: 443}}, 22, nil},
		{"connect domain", append(append([]byte{5, 1, 0, 3, 18}, "demo.snowgate.test"...), 0x1f, 0x90), Request{CommandConnect, Addr{Name: "demo.snowgate.test", Port: 8080}}, 25, nil},
		{"udp associate zeros", []byte{5, 3, 0, 1, 0, 0, 0, 0, 0, 0}, Request{CommandUDPAssociate, Addr{IP: netip.IPv4Unspecified()}}, 10, nil},
		{"bind parses", []byte{5, 2, 0, 1, 1, 2, 3, 4, 0, 1}, Request{CommandBind, Addr{IP: netip.MustParseAddr("1.2.3.4"), Port: 1}}, 10, nil},
		{"unknown command parses", []byte{5, 9, 0, 1, 1, 2, 3, 4, 0, 1}, Request{Command(9), Addr{IP: netip.MustParseAddr("1.2.3.4"), Port: 1}}, 10, nil},
		{"reserved byte ignored", []byte{5, 1, 0xAA, 1, 1, 2, 3, 4, 0, 1}, Request{CommandConnect, Addr{IP: netip.MustParseAddr("1.2.3.4"), Port: 1}}, 10, nil},
		{"empty", nil, Request{}, 0, ErrTruncated},
		{"header only", []byte{5, 1, 0}, Request{}, 0, ErrTruncated},
		{"short ipv4", []byte{5, 1, 0, 1, 192, 0, 2, 7, 0}, Request{}, 0, ErrTruncated},
		{"short ipv6", []byte{5, 1, 0, 4, 0x20, 1}, Request{}, 0, ErrTruncated},
		{"short domain", []byte{5, 1, 0, 3, 10, 'a', 'b'}, Request{}, 0, ErrTruncated},
		{"socks4", []byte{4, 1, 0, 80, 192, 0, 2, 7, 0}, Request{}, 0, ErrVersion},
		{"bad atyp", []byte{5, 1, 0, 2, 1, 2, 3, 4, 0, 80}, Request{}, 0, ErrAddressType},
		{"empty domain", []byte{5, 1, 0, 3, 0, 0, 80}, Request{}, 0, ErrMalformed},
		{"domain with space", append(append([]byte{5, 1, 0, 3, 3}, "a b"...), 0, 80), Request{}, 0, ErrMalformed},
		{"domain with NUL", append(append([]byte{5, 1, 0, 3, 3}, "a\x00b"...), 0, 80), Request{}, 0, ErrMalformed},
		{"domain non-ASCII", append(append([]byte{5, 1, 0, 3, 2}, "é"...), 0, 80), Request{}, 0, ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, n, err := ParseRequest(tt.in)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("ParseRequest error = %v, want %v", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseRequest: %v", err)
			}
			if diff := cmp.Diff(tt.want, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" || n != tt.wantN {
				t.Fatalf("ParseRequest = %+v, %d; want %+v, %d (%s)", got, n, tt.want, tt.wantN, diff)
			}
			// ReadRequest agrees and reads exactly the request's bytes.
			r := bytes.NewReader(tt.in)
			rr, err := ReadRequest(r)
			if err != nil || rr != got || r.Len() != len(tt.in)-n {
				t.Fatalf("ReadRequest = %+v, %v, %d bytes left; want %+v, %d left", rr, err, r.Len(), got, len(tt.in)-n)
			}
		})
	}
}

func TestAppendRequestRejects(t *testing.T) {
	for _, a := range []Addr{
		{},
		{Name: strings.Repeat("a", 256)},
		{Name: "a b"},
		{Name: "x", IP: netip.MustParseAddr("192.0.2.1")},
	} {
		if _, err := AppendRequest(nil, Request{CommandConnect, a}); !errors.Is(err, ErrMalformed) {
			t.Errorf("AppendRequest(%+v) error = %v, want ErrMalformed", a, err)
		}
	}
}

func TestParseGreeting(t *testing.T) {
	tests := []struct {
		in      []byte
		want    []byte
		wantErr error
	}{
		{[]byte{5, 1, 0}, []byte{0}, nil},
		{[]byte{5, 2, 2, 0, 99}, []byte{2, 0}, nil},
		{[]byte{5, 0}, nil, ErrMalformed},
		{[]byte{5, 3, 0}, nil, ErrTruncated},
		{[]byte{4, 1, 0}, nil, ErrVersion},
		{[]byte{5}, nil, ErrTruncated},
	}
	for _, tt := range tests {
		got, _, err := ParseGreeting(tt.in)
		if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil && !bytes.Equal(got, tt.want)) {
			t.Errorf("ParseGreeting(%v) = %v, %v; want %v, %v", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestReplyRoundTrip(t *testing.T) {
	for _, bnd := range []Addr{
		{IP: netip.MustParseAddr("192.0.2.1"), Port: 1080},
		{IP: netip.MustParseAddr("2001:db8::1"), Port: 53},
		{},
	} {
		b := AppendReply(nil, ReplyConnectionRefused, bnd)
		rep, got, n, err := ParseReply(b)
		want := bnd
		if !want.IP.IsValid() {
			want = Addr{IP: netip.IPv4Unspecified()}
		}
		if err != nil || rep != ReplyConnectionRefused || got != want || n != len(b) {
			t.Errorf("reply %+v: parsed %v %+v %d %v", bnd, rep, got, n, err)
		}
	}
}

func TestParseDatagram(t *testing.T) {
	d, err := ParseDatagram([]byte{0, 0, 0, 1, 192, 0, 2, 9, 0, 53, 'q'})
	if err != nil || d.Frag != 0 || d.Addr != (Addr{IP: netip.MustParseAddr("192.0.2.9"), Port: 53}) || string(d.Payload) != "q" {
		t.Fatalf("ParseDatagram = %+v, %v", d, err)
	}
	d, err = ParseDatagram(append(append([]byte{0, 0, 3, 3, 4}, "name"...), 0, 7))
	if err != nil || d.Frag != 3 || d.Addr.Name != "name" || len(d.Payload) != 0 {
		t.Fatalf("ParseDatagram = %+v, %v", d, err)
	}
	for _, bad := range [][]byte{{0, 0}, {0, 0, 0, 7, 1}, {0, 0, 0, 1, 1, 2}} {
		if _, err := ParseDatagram(bad); err == nil {
			t.Errorf("ParseDatagram(%v) succeeded", bad)
		}
	}
}
