package server

import (
	"net"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// batchConn reads and writes several datagrams per system call (recvmmsg/sendmmsg on Linux; one datagram per
// call elsewhere). ipv4.Message and ipv6.Message are the same type.
type batchConn interface {
	ReadBatch(ms []ipv4.Message, flags int) (int, error)
	WriteBatch(ms []ipv4.Message, flags int) (int, error)
}

// batchSize is the most datagrams read or written per system call.
const batchSize = 16

// batchQueryBuf is the largest query read whole by a batched read loop; longer ones (or exactly that long: they
// read as long as the buffer) are dropped. Real queries (one question, an OPT record) are far smaller.
const batchQueryBuf = 4096

func newBatchConn(c *net.UDPConn) batchConn {
	if a, ok := c.LocalAddr().(*net.UDPAddr); ok && a.IP.To4() == nil {
		return ipv6.NewPacketConn(c)
	}
	return ipv4.NewPacketConn(c)
}

// newMessages returns n messages with one buffer of size bytes each (size 0: no buffer yet).
func newMessages(n, size int) []ipv4.Message {
	ms := make([]ipv4.Message, n)
	for i := range ms {
		ms[i].Buffers = make([][]byte, 1)
		if size > 0 {
			ms[i].Buffers[0] = make([]byte, size)
		}
	}
	return ms
}

// writeAll writes ms[:n] with as few system calls as the kernel allows; it returns how many were written.
func writeAll(bc batchConn, ms []ipv4.Message) (int, error) {
	done := 0
	for done < len(ms) {
		n, err := bc.WriteBatch(ms[done:], 0)
		done += n
		if err != nil {
			return done, err
		}
		if n == 0 {
			break
		}
	}
	return done, nil
}
