//go:build !linux

package main

import (
	"errors"
	"net"
	"time"
)

const (
	netnsRelayIP  = "198.18.0.1"
	netnsClientIP = "198.18.0.2"
	netnsPeerIP   = "198.18.0.3"
)

// netnsLab exists on Linux only.
type netnsLab struct{ relay, outside string }

func newNetnsLab() (*netnsLab, error) { return nil, errors.New("--netns needs Linux") }

func (*netnsLab) prime() error { return nil }

func (*netnsLab) close() {}

func (*netnsLab) xdpRuntime() (time.Duration, uint64, bool) { return 0, 0, false }

// bigBuffers asks for 4 MiB socket buffers (within the system's limits).
func bigBuffers(c *net.UDPConn) error {
	return errors.Join(c.SetReadBuffer(4<<20), c.SetWriteBuffer(4<<20))
}

func (*netnsLab) threadedNAPI(int, int) error { return errors.New("--netns needs Linux") }

func (*netnsLab) napiCPU(string) time.Duration { return 0 }

func (*netnsLab) vethDrops() uint64 { return 0 }
