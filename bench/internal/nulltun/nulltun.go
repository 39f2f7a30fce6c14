// Package nulltun is a wireguard-go TUN device that carries nothing, for benchmarks that need a
// WireGuard device (its peers, timers, handshakes) but no packets from a TUN.
package nulltun

import (
	"os"
	"sync"

	"golang.zx2c4.com/wireguard/tun"
)

// Device is a tun.Device that never yields a packet and discards what it is given.
type Device struct {
	mtu    int
	events chan tun.Event
	closed chan struct{}
	once   sync.Once
}

// New returns a Device of the given MTU that has reported itself up.
func New(mtu int) *Device {
	d := &Device{mtu: mtu, events: make(chan tun.Event, 1), closed: make(chan struct{})}
	d.events <- tun.EventUp
	return d
}

// File returns nil: there is no file behind the device.
func (d *Device) File() *os.File { return nil }

// Read blocks until Close.
func (d *Device) Read([][]byte, []int, int) (int, error) {
	<-d.closed
	return 0, os.ErrClosed
}

// Write discards bufs.
func (d *Device) Write(bufs [][]byte, _ int) (int, error) { return len(bufs), nil }

// MTU returns the MTU New was given.
func (d *Device) MTU() (int, error) { return d.mtu, nil }

// Name returns "null".
func (d *Device) Name() (string, error) { return "null", nil }

// Events returns the device's events: EventUp, then nothing until Close closes the channel.
func (d *Device) Events() <-chan tun.Event { return d.events }

// BatchSize returns 1.
func (d *Device) BatchSize() int { return 1 }

// Close ends Read and closes Events; further calls do nothing.
func (d *Device) Close() error {
	d.once.Do(func() {
		close(d.closed)
		close(d.events)
	})
	return nil
}
