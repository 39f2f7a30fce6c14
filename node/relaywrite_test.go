package node

import (
	"net"
	"net/netip"
	"sync"
	"testing"
	"testing/synctest"
)

// stuckRelayed is a relayed conn whose WriteTo blocks until release is closed, as pion's does while
// it creates the permission for a new peer on a relay that stopped answering.
type stuckRelayed struct {
	net.PacketConn
	release chan struct{}
	mu      sync.Mutex
	written []netip.AddrPort
}

func (s *stuckRelayed) WriteTo(_ []byte, to net.Addr) (int, error) {
	<-s.release
	s.mu.Lock()
	defer s.mu.Unlock()
	s.written = append(s.written, addrPortOf(to))
	return 0, nil
}

func (s *stuckRelayed) LocalAddr() net.Addr {
	return net.UDPAddrFromAddrPort(netip.MustParseAddrPort("198.18.0.9:50000"))
}

func (s *stuckRelayed) PeerForChannel(uint16) (netip.AddrPort, bool) { return netip.AddrPort{}, false }

func (s *stuckRelayed) Close() error { return nil }

// closedTURN is a TURN client with nothing in flight.
type closedTURN struct{ turnClient }

func (closedTURN) Close() {}

// An ICE agent's check through a relay returns at once even while the relay does not answer the
// permission it needs: the agent's loop (and the node's, which calls into the agent under its
// lock) never waits for a TURN transaction. Found by internal/tunnelsim: a relay killed during
// ICE checks left the node's loop waiting in AddVirtualCandidate for an agent that waited for
// CreatePermission, so everything under Node.mu stopped.
func TestRelayedICEWriteDoesNotWaitForTheRelay(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sr := &stuckRelayed{release: make(chan struct{})}
		a := &allocation{relayID: "r1", relayed: sr, client: closedTURN{}}
		a.init()
		done := make(chan struct{})
		go func() {
			defer close(done)
			a.writeLoop()
		}()
		v, err := a.newView("ufrag")
		if err != nil {
			t.Fatal(err)
		}
		peer := netip.MustParseAddrPort("203.0.113.5:3478")
		returned := make(chan struct{})
		go func() {
			defer close(returned)
			for range 3 {
				if _, err := v.WriteTo([]byte("check"), net.UDPAddrFromAddrPort(peer)); err != nil {
					t.Errorf("write: %v", err)
				}
			}
		}()
		synctest.Wait()
		select {
		case <-returned:
		default:
			t.Fatal("the view's WriteTo waits for the relay's permission transaction")
		}
		close(sr.release) // the relay answers: the queued checks go out, in order
		synctest.Wait()
		sr.mu.Lock()
		got := len(sr.written)
		sr.mu.Unlock()
		if got != 3 {
			t.Fatalf("%d checks sent once the relay answered, want 3", got)
		}
		a.close()
		<-done
		if _, err := v.WriteTo([]byte("late"), net.UDPAddrFromAddrPort(peer)); err == nil {
			t.Fatal("a write after close succeeded")
		}
	})
}
