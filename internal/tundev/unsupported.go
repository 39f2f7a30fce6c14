//go:build !linux

package tundev

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"syscall"

	"github.com/pion/transport/v5"
	"golang.zx2c4.com/wireguard/tun"
)

// errUnsupported is returned by everything but DNS control on systems other than Linux.
var errUnsupported = fmt.Errorf("tundev: %w on %s (kernel TUN mode is Linux only; use userspace mode)", errors.ErrUnsupported, runtime.GOOS)

// Device is the kernel TUN device; on this system it cannot be created.
type Device struct{}

// Create is unsupported on this system.
func Create(Config) (*Device, error) { return nil, errUnsupported }

// Cleanup is unsupported on this system.
func Cleanup(Config) error { return errUnsupported }

// Watch is unsupported on this system.
func Watch(context.Context, WatchOptions) (<-chan struct{}, error) { return nil, errUnsupported }

// MarkControl returns a Control function that fails: SO_MARK is Linux only.
func MarkControl(uint32) func(network, address string, c syscall.RawConn) error {
	return func(string, string, syscall.RawConn) error { return errUnsupported }
}

// MarkConn is unsupported on this system.
func MarkConn(syscall.Conn, uint32) error { return errUnsupported }

// MarkedNet is unsupported on this system.
func MarkedNet(uint32) (transport.Net, error) { return nil, errUnsupported }

// TUN returns nil on this system.
func (d *Device) TUN() tun.Device { return nil }

// Name returns "".
func (d *Device) Name() string { return "" }

// Index returns 0.
func (d *Device) Index() int { return 0 }

// MTU returns 0.
func (d *Device) MTU() int { return 0 }

// Fwmark returns 0.
func (d *Device) Fwmark() uint32 { return 0 }

// DNS returns nil on this system.
func (d *Device) DNS() *DNSControl { return nil }

// Addresses returns invalid addresses.
func (d *Device) Addresses() (v4, v6 netip.Addr) { return netip.Addr{}, netip.Addr{} }

// HasIPv6 returns false.
func (d *Device) HasIPv6() bool { return false }

// SetAddresses is unsupported on this system.
func (d *Device) SetAddresses(netip.Addr, netip.Addr) error { return errUnsupported }

// SetRoutes is unsupported on this system.
func (d *Device) SetRoutes([]netip.Prefix) error { return errUnsupported }

// Routes is unsupported on this system.
func (d *Device) Routes() ([]netip.Prefix, error) { return nil, errUnsupported }

// LinkEvents is unsupported on this system.
func (d *Device) LinkEvents(context.Context) (<-chan LinkEvent, error) { return nil, errUnsupported }

// Close does nothing.
func (d *Device) Close() error { return nil }
