package userfwd

import (
	"io"
	"net"
	"testing"
)

// BenchmarkTCPBulk moves bulk data through the forwarder: a client netstack connection, the device's stack,
// a host TCP connection to a loopback server. Informational only (MB/s on this machine):
//
//	go test -run - -bench TCPBulk -benchtime 200x ./gateway/userfwd/
func BenchmarkTCPBulk(b *testing.B) {
	const chunk = 1 << 20
	for _, dir := range []string{"upload", "download"} {
		b.Run(dir, func(b *testing.B) {
			ln, err := net.Listen("tcp4", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			defer ln.Close()
			srvDone := make(chan error, 1)
			go func() {
				c, err := ln.Accept()
				if err != nil {
					srvDone <- err
					return
				}
				defer c.Close()
				if dir == "upload" {
					_, err = io.Copy(io.Discard, c)
				} else {
					_, err = io.CopyN(c, zeros{}, int64(b.N)*chunk)
				}
				srvDone <- err
			}()
			e := newEnv(b, Config{AllowLoopback: true, ICMP: ICMPDisabled})
			c, err := e.tnet.DialContextTCPAddrPort(testCtx(b), fakeOf(ln.Addr().(*net.TCPAddr).AddrPort()))
			if err != nil {
				b.Fatal(err)
			}
			b.SetBytes(chunk)
			b.ResetTimer()
			if dir == "upload" {
				buf := make([]byte, chunk)
				for range b.N {
					if _, err := c.Write(buf); err != nil {
						b.Fatal(err)
					}
				}
				c.CloseWrite()
				if err := <-srvDone; err != nil {
					b.Fatal(err)
				}
			} else {
				n, err := io.Copy(io.Discard, c)
				if err != nil || n != int64(b.N)*chunk {
					b.Fatalf("read %d bytes, %v", n, err)
				}
				<-srvDone
			}
			b.StopTimer()
			c.Close()
		})
	}
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}
