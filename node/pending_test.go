package node

import (
	"testing"

	"pgregory.net/rapid"
)

// TestPendingBufferProperties: whatever wireguard-go sends before a pair is
// nominated is buffered boundedly, at most one handshake initiation (the
// newest) is kept, and after nomination nothing is buffered any more.
func TestPendingBufferProperties(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		c := &connection{}
		nominatedEP := &endpoint{conn: c}
		var lastInit []byte
		nominated := false
		steps := rapid.IntRange(1, 60).Draw(t, "steps")
		for i := 0; i < steps; i++ {
			if !nominated && rapid.IntRange(0, 20).Draw(t, "nominate") == 0 {
				flushed := c.setNominated(nominatedEP)
				nominated = true
				if len(flushed) > maxPending {
					t.Fatalf("flushed %d > %d", len(flushed), maxPending)
				}
				inits := 0
				for _, p := range flushed {
					if p[0] == 1 {
						inits++
						if string(p) != string(lastInit) {
							t.Fatalf("flushed initiation is not the newest")
						}
					}
				}
				if inits > 1 {
					t.Fatalf("%d initiations flushed, want at most 1", inits)
				}
				continue
			}
			typ := byte(rapid.IntRange(1, 4).Draw(t, "type"))
			b := make([]byte, 32)
			b[0] = typ
			b[4] = byte(i)
			ep, buffered := c.bufferPending([][]byte{b})
			if nominated {
				if buffered || ep != nominatedEP {
					t.Fatalf("after nomination: buffered=%v ep=%v", buffered, ep)
				}
				continue
			}
			if !buffered {
				t.Fatalf("not buffered before nomination")
			}
			if typ == 1 {
				lastInit = b
			}
			if len(c.pending) > maxPending {
				t.Fatalf("%d pending > %d", len(c.pending), maxPending)
			}
		}
	})
}
