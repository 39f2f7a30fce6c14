package node

import (
	"encoding/binary"
	"testing"

	"github.com/pion/stun/v4"
)

func TestClassify(t *testing.T) {
	bind := stun.MustBuild(stun.TransactionID, stun.BindingRequest)
	wg := make([]byte, 148)
	wg[0] = 1
	wgWithCookie := make([]byte, 32)
	wgWithCookie[0] = 4
	binary.BigEndian.PutUint32(wgWithCookie[4:8], stunMagicCookie)
	cd := []byte{0x40, 0x01, 0x00, 0x03, 1, 2, 3, 0}
	cdShort := []byte{0x40, 0x01, 0x00, 0x09, 1, 2, 3}
	tests := []struct {
		name string
		in   []byte
		want datagramKind
	}{
		{"empty", nil, kindUnknown},
		{"stun binding", bind.Raw, kindSTUN},
		{"wg initiation", wg, kindWireGuard},
		{"wg keepalive with cookie in index", wgWithCookie, kindWireGuard},
		{"wg too short", wg[:31], kindUnknown},
		{"wg type 5", append([]byte{5, 0, 0, 0}, make([]byte, 40)...), kindUnknown},
		{"channel data", cd, kindChannelData},
		{"channel data truncated", cdShort, kindUnknown},
		{"channel below range", []byte{0x3f, 0xff, 0, 0}, kindUnknown},
		{"garbage", []byte{0xff, 0xff, 0xff, 0xff, 0xff}, kindUnknown},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := classify(tt.in); got != tt.want {
				t.Fatalf("classify = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestParseChannelData(t *testing.T) {
	ch, p, ok := parseChannelData([]byte{0x40, 0x10, 0x00, 0x02, 9, 8, 0, 0})
	if !ok || ch != 0x4010 || len(p) != 2 || p[0] != 9 || p[1] != 8 {
		t.Fatalf("got %x %v %v", ch, p, ok)
	}
}

func TestIsWGActivity(t *testing.T) {
	ka := make([]byte, 32)
	ka[0] = 4
	if isWGActivity(ka) {
		t.Fatal("keepalive counted as activity")
	}
	data := make([]byte, 64)
	data[0] = 4
	if !isWGActivity(data) {
		t.Fatal("data not counted as activity")
	}
	for typ := byte(1); typ <= 3; typ++ { // initiation, response, cookie reply
		hs := make([]byte, 148)
		hs[0] = typ
		if isWGActivity(hs) {
			t.Fatalf("handshake message type %d counted as activity: a rekey would wake idle connections", typ)
		}
	}
}

func FuzzClassify(f *testing.F) {
	f.Add(stun.MustBuild(stun.TransactionID, stun.BindingRequest).Raw)
	f.Add([]byte{0x40, 0x01, 0x00, 0x03, 1, 2, 3, 0})
	f.Add(append([]byte{1, 0, 0, 0}, make([]byte, 144)...))
	f.Add([]byte{})
	// Real traffic of each kind: a binding success with its mapped address, an authenticated TURN
	// Allocate, ChannelData carrying a WireGuard transport packet, each WireGuard message type.
	resp := stun.MustBuild(stun.TransactionID, stun.BindingSuccess,
		&stun.XORMappedAddress{IP: []byte{198, 18, 1, 7}, Port: 61234}, stun.Fingerprint)
	f.Add(resp.Raw)
	alloc := stun.MustBuild(stun.TransactionID, stun.NewType(stun.MethodAllocate, stun.ClassRequest),
		stun.RawAttribute{Type: stun.AttrRequestedTransport, Value: []byte{17, 0, 0, 0}},
		stun.NewUsername("1700000000:salt"), stun.NewRealm("firezone"), stun.NewNonce("nonce"),
		stun.NewLongTermIntegrity("1700000000:salt", "firezone", "password"), stun.Fingerprint)
	f.Add(alloc.Raw)
	for _, wg := range [][]byte{
		append([]byte{1, 0, 0, 0}, make([]byte, 144)...), // handshake initiation
		append([]byte{2, 0, 0, 0}, make([]byte, 88)...),  // handshake response
		append([]byte{3, 0, 0, 0}, make([]byte, 60)...),  // cookie reply
		append([]byte{4, 0, 0, 0}, make([]byte, 60)...),  // transport data
		append([]byte{4, 0, 0, 0}, make([]byte, 28)...),  // keepalive
	} {
		f.Add(wg)
		cd := binary.BigEndian.AppendUint16([]byte{0x40, 0x02}, uint16(len(wg)))
		f.Add(append(cd, wg...))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		k := classify(b)
		if k == kindChannelData {
			_, p, ok := parseChannelData(b)
			if !ok || len(p) > len(b)-4 {
				t.Fatalf("inconsistent channel data parse")
			}
		}
		if k == kindSTUN && !stun.IsMessage(b) {
			t.Fatalf("isSTUN accepted what stun.IsMessage rejects")
		}
	})
}
