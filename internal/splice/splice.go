// Package splice copies two stream connections into each other with TCP's half-close semantics. The
// userspace data paths use it to join a connection of a gVisor stack with a host or tunnel connection: the
// gateway's forwarder (gateway/userfwd) and the client's SOCKS5 proxy (client/socks5).
package splice

import (
	"errors"
	"io"
	"net"
	"sync"
)

// BufSize is the copy buffer of each direction.
const BufSize = 64 << 10

var bufs = sync.Pool{New: func() any { b := make([]byte, BufSize); return &b }}

// Conns copies a to b and b to a until both directions are done, then returns; it does not close the
// connections. A direction that ends with EOF (its source's peer closed its write side) half-closes the
// destination with CloseWrite when the destination has it (net.TCPConn, gonet.TCPConn), so the other
// direction keeps flowing. A direction that ends with an error calls abort, once; abort must close both
// connections (with a reset where it can, see Reset) so that the other direction ends too.
func Conns(a, b net.Conn, abort func()) {
	var once sync.Once
	fail := func() { once.Do(abort) }
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		half(b, a, fail)
	}()
	half(a, b, fail)
	wg.Wait()
}

func half(dst, src net.Conn, fail func()) {
	bp := bufs.Get().(*[]byte)
	_, err := io.CopyBuffer(onlyWriter{dst}, onlyReader{src}, *bp)
	bufs.Put(bp)
	if err != nil && !errors.Is(err, io.EOF) {
		fail()
		return
	}
	if cw, ok := dst.(interface{ CloseWrite() error }); ok {
		if cw.CloseWrite() != nil {
			fail()
		}
	}
	// Without CloseWrite the other direction ends when its source closes.
}

// onlyWriter and onlyReader hide ReaderFrom and WriterTo, so that CopyBuffer uses the pooled buffer.
type onlyWriter struct{ io.Writer }

type onlyReader struct{ io.Reader }

// Reset closes c, with a TCP RST instead of a FIN when c is a *net.TCPConn.
func Reset(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	c.Close()
}
