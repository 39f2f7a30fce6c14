package socks5

import (
	"bytes"
	"errors"
	"testing"
)

// exactlyOneSentinel reports whether err wraps exactly one of the parsers' sentinel errors.
func exactlyOneSentinel(err error) bool {
	n := 0
	for _, s := range sentinels {
		if errors.Is(err, s) {
			n++
		}
	}
	return n == 1
}

// FuzzRequest: a request that parses re-encodes to the bytes it was parsed from (RSV zeroed), ReadRequest
// agrees with ParseRequest and reads exactly those bytes, and every error is one of the typed sentinels.
func FuzzRequest(f *testing.F) {
	f.Add([]byte{5, 1, 0, 1, 192, 0, 2, 7, 0, 80})
	f.Add(append(append([]byte{5, 1, 0, 3, 18}, "demo.snowgate.test"...), 0, 80))
	f.Fuzz(func(t *testing.T, b []byte) {
		req, n, err := ParseRequest(b)
		r := bytes.NewReader(b)
		rreq, rerr := ReadRequest(r)
		if err != nil {
			if !exactlyOneSentinel(err) {
				t.Fatalf("ParseRequest error %v is not typed", err)
			}
			if rerr == nil {
				t.Fatalf("ReadRequest accepted what ParseRequest refused (%v)", err)
			}
			if !exactlyOneSentinel(rerr) {
				t.Fatalf("ReadRequest error %v is not typed", rerr)
			}
			return
		}
		if n > len(b) || n < 8 {
			t.Fatalf("ParseRequest used %d of %d bytes", n, len(b))
		}
		enc, err := AppendRequest(nil, req)
		if err != nil {
			t.Fatalf("AppendRequest(%+v): %v", req, err)
		}
		want := append([]byte(nil), b[:n]...)
		want[2] = 0
		if !bytes.Equal(enc, want) {
			t.Fatalf("re-encoded %x, want %x", enc, want)
		}
		if rerr != nil || rreq != req || r.Len() != len(b)-n {
			t.Fatalf("ReadRequest = %+v, %v, %d left; ParseRequest = %+v, %d used", rreq, rerr, r.Len(), req, n)
		}
	})
}

// FuzzDatagram: a UDP datagram that parses re-encodes to the same bytes (RSV zeroed); errors are typed.
func FuzzDatagram(f *testing.F) {
	f.Add([]byte{0, 0, 0, 1, 192, 0, 2, 9, 0, 53, 'q'})
	f.Fuzz(func(t *testing.T, b []byte) {
		d, err := ParseDatagram(b)
		if err != nil {
			if !exactlyOneSentinel(err) {
				t.Fatalf("ParseDatagram error %v is not typed", err)
			}
			return
		}
		enc, err := AppendDatagram(nil, d)
		if err != nil {
			t.Fatalf("AppendDatagram(%+v): %v", d, err)
		}
		want := append([]byte(nil), b...)
		want[0], want[1] = 0, 0
		if !bytes.Equal(enc, want) {
			t.Fatalf("re-encoded %x, want %x", enc, want)
		}
	})
}

// FuzzGreeting: a greeting that parses lists NMETHODS methods; errors are typed.
func FuzzGreeting(f *testing.F) {
	f.Add([]byte{5, 2, 0, 2})
	f.Fuzz(func(t *testing.T, b []byte) {
		methods, n, err := ParseGreeting(b)
		if err != nil {
			if !exactlyOneSentinel(err) {
				t.Fatalf("ParseGreeting error %v is not typed", err)
			}
			return
		}
		if n != 2+int(b[1]) || len(methods) != int(b[1]) || len(methods) == 0 {
			t.Fatalf("ParseGreeting = %v, %d for %x", methods, n, b)
		}
	})
}
