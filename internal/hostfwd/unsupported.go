//go:build !linux

package hostfwd

import (
	"errors"
	"fmt"
	"runtime"
)

var errUnsupported = fmt.Errorf("hostfwd: %w on %s (kernel forwarding is Linux only; use userspace mode)", errors.ErrUnsupported, runtime.GOOS)

// Forwarding is the gateway's kernel forwarding set-up; on this system it cannot be enabled.
type Forwarding struct{}

// Enable is unsupported on this system.
func Enable(Config) (*Forwarding, error) { return nil, errUnsupported }

// Cleanup is unsupported on this system.
func Cleanup(Config) error { return errUnsupported }

// Close does nothing.
func (f *Forwarding) Close() error { return nil }
