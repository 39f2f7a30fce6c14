//go:build !linux

package main

import (
	"errors"
	"time"
)

const (
	netnsRelayIP = "198.18.0.1"
	netnsPeerIP  = "198.18.0.3"
)

// netnsLab exists on Linux only.
type netnsLab struct{ relay, outside string }

func newNetnsLab() (*netnsLab, error) { return nil, errors.New("--netns needs Linux") }

func (*netnsLab) prime() error { return nil }

func (*netnsLab) close() {}

func bootClock() time.Duration { return 0 }

func xdpRuntime(time.Duration) (time.Duration, uint64, bool) { return 0, 0, false }
