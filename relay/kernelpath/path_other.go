//go:build !linux

package kernelpath

import (
	"fmt"
	"runtime"
)

// Path is the kernel path; only Linux has one.
type Path struct{}

// Open fails with ErrUnavailable: XDP is Linux's.
func Open(Config) (*Path, error) {
	return nil, fmt.Errorf("%w: %s has no XDP", ErrUnavailable, runtime.GOOS)
}

// Add fails: there is no kernel path.
func (*Path) Add(Binding) error { return ErrClosed }

// Remove does nothing.
func (*Path) Remove(Binding) (Counters, bool) { return Counters{}, false }

// Counters reports nothing.
func (*Path) Counters(Binding) (Counters, bool) { return Counters{}, false }

// Totals reports nothing.
func (*Path) Totals() Counters { return Counters{} }

// Passed reports nothing.
func (*Path) Passed() Passed { return Passed{} }

// Status reports nothing.
func (*Path) Status() Status { return Status{} }

// Installed reports nothing.
func (*Path) Installed(Binding) (toPeer, toClient bool) { return false, false }

// MapEntries reports nothing.
func (*Path) MapEntries() (c2p, p2c int) { return 0, 0 }

// Close does nothing.
func (*Path) Close() error { return nil }
