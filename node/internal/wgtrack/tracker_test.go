package wgtrack

import (
	"encoding/binary"
	"testing"
	"time"

	"pgregory.net/rapid"
)

func initiation(sender uint32) []byte {
	b := make([]byte, initiationSize)
	b[0] = TypeInitiation
	binary.LittleEndian.PutUint32(b[4:8], sender)
	return b
}

func response(sender, receiver uint32) []byte {
	b := make([]byte, responseSize)
	b[0] = TypeResponse
	binary.LittleEndian.PutUint32(b[4:8], sender)
	binary.LittleEndian.PutUint32(b[8:12], receiver)
	return b
}

func transport(receiver uint32, payload int) []byte {
	b := make([]byte, transportMin+payload)
	b[0] = TypeTransport
	binary.LittleEndian.PutUint32(b[4:8], receiver)
	return b
}

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   []byte
		want Header
		ok   bool
	}{
		{"initiation", initiation(7), Header{Type: TypeInitiation, Sender: 7}, true},
		{"response", response(8, 7), Header{Type: TypeResponse, Sender: 8, Receiver: 7}, true},
		{"keepalive", transport(9, 0), Header{Type: TypeTransport, Receiver: 9}, true},
		{"data", transport(9, 100), Header{Type: TypeTransport, Receiver: 9}, true},
		{"short initiation", initiation(7)[:100], Header{}, false},
		{"short transport", transport(1, 0)[:31], Header{}, false},
		{"cookie reply", append([]byte{3, 0, 0, 0}, make([]byte, 60)...), Header{}, false},
		{"nonzero reserved", append([]byte{4, 1, 0, 0}, make([]byte, 40)...), Header{}, false},
		{"empty", nil, Header{}, false},
	} {
		got, ok := Parse(tc.in)
		if ok != tc.ok || got != tc.want {
			t.Errorf("%s: Parse = %+v, %v; want %+v, %v", tc.name, got, ok, tc.want, tc.ok)
		}
	}
}

func TestInitiatorCompletesOnConfirmingTransport(t *testing.T) {
	var tr Tracker
	t0 := time.Unix(1000, 0)
	tr.Sent(initiation(11), t0)
	if tr.Awaiting() {
		t.Fatal("awaiting before any response")
	}
	if tr.Received(response(22, 99), t0.Add(time.Millisecond)) || tr.Awaiting() {
		t.Fatal("a response to another initiation counted")
	}
	tr.Received(response(22, 11), t0.Add(30*time.Millisecond))
	if !tr.Awaiting() {
		t.Fatal("not awaiting the confirmation after the response")
	}
	if tr.Sent(transport(23, 0), t0.Add(31*time.Millisecond)) {
		t.Fatal("transport to another index completed the handshake")
	}
	if !tr.Sent(transport(22, 0), t0.Add(31*time.Millisecond)) {
		t.Fatal("keepalive to the responder's index did not complete the handshake")
	}
	at, rtt, ok := tr.Last()
	if !ok || !at.Equal(t0.Add(31*time.Millisecond)) || rtt != 30*time.Millisecond {
		t.Fatalf("Last = %v %v %v", at, rtt, ok)
	}
	if !tr.HasRemote(22) || tr.HasRemote(11) || tr.Awaiting() {
		t.Fatalf("remotes %v awaiting %v", tr.Remotes(), tr.Awaiting())
	}
}

// A response wireguard-go rejects (wrong PSK) is never followed by a
// transport message: no completion however long we wait.
func TestRejectedResponseNeverCompletes(t *testing.T) {
	var tr Tracker
	t0 := time.Unix(1000, 0)
	tr.Sent(initiation(1), t0)
	tr.Received(response(2, 1), t0.Add(time.Millisecond))
	tr.Sent(initiation(3), t0.Add(5*time.Second)) // wireguard-go retries
	if tr.Sent(transport(2, 0), t0.Add(6*time.Second)) {
		t.Fatal("completed on a response to a replaced initiation")
	}
	if _, _, ok := tr.Last(); ok {
		t.Fatal("completion recorded")
	}
}

func TestResponderCompletesOnFirstTransport(t *testing.T) {
	var tr Tracker
	t0 := time.Unix(1000, 0)
	tr.Received(initiation(5), t0)
	tr.Sent(response(6, 5), t0.Add(time.Millisecond))
	if !tr.Awaiting() {
		t.Fatal("not awaiting after sending a response")
	}
	if tr.Received(transport(7, 0), t0.Add(2*time.Millisecond)) {
		t.Fatal("transport to another index completed the handshake")
	}
	if !tr.Received(transport(6, 0), t0.Add(21*time.Millisecond)) {
		t.Fatal("initiator's keepalive did not complete the handshake")
	}
	if _, rtt, _ := tr.Last(); rtt != 20*time.Millisecond {
		t.Fatalf("rtt %v", rtt)
	}
	if !tr.HasRemote(5) {
		t.Fatalf("remotes %v, want the initiator's index 5", tr.Remotes())
	}
	if tr.Received(transport(6, 10), t0.Add(time.Second)) {
		t.Fatal("completed twice")
	}
}

// TestTrackerProperties: whatever the message flow, completions never go
// back in time, a remembered remote index is one the peer used as sender in a
// completed handshake, and at most four are remembered.
func TestTrackerProperties(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		var tr Tracker
		now := time.Unix(0, 0)
		senders := map[uint32]bool{}
		var last time.Time
		idx := rapid.Uint32Range(1, 6)
		for range rapid.IntRange(1, 100).Draw(t, "steps") {
			now = now.Add(time.Duration(rapid.IntRange(0, 1000).Draw(t, "ms")) * time.Millisecond)
			var done bool
			switch rapid.IntRange(0, 5).Draw(t, "op") {
			case 0:
				done = tr.Sent(initiation(idx.Draw(t, "s")), now)
			case 1:
				s := idx.Draw(t, "s")
				senders[s] = true
				done = tr.Received(response(s, idx.Draw(t, "r")), now)
			case 2:
				done = tr.Sent(transport(idx.Draw(t, "r"), 0), now)
			case 3:
				s := idx.Draw(t, "s")
				senders[s] = true
				done = tr.Received(initiation(s), now)
			case 4:
				done = tr.Sent(response(idx.Draw(t, "s"), idx.Draw(t, "r")), now)
			case 5:
				done = tr.Received(transport(idx.Draw(t, "r"), 0), now)
			}
			at, _, ok := tr.Last()
			if done && (!ok || !at.Equal(now)) {
				t.Fatalf("completion not recorded at %v: %v %v", now, at, ok)
			}
			if ok && at.Before(last) {
				t.Fatalf("completion went back in time")
			}
			last = at
			if len(tr.Remotes()) > remoteIndices {
				t.Fatalf("%d remotes", len(tr.Remotes()))
			}
		}
	})
}
