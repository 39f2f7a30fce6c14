// Package threadns runs a long-lived goroutine in a given network namespace on Linux: servers
// started from a thread switched into a namespace (internal/netlab's Namespace.Do, as test beds
// do) must create sockets, query netlink and attach programs there, from goroutines that may run
// on any thread. The relay's socket opener and its kernel path each own such a goroutine.
package threadns

import (
	"fmt"
	"runtime"

	"golang.org/x/sys/unix"
)

// Current opens the network namespace of the calling thread; the caller closes the descriptor.
func Current() (int, error) {
	runtime.LockOSThread() // the namespace opened must be this thread's
	defer runtime.UnlockOSThread()
	fd, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("open network namespace: %w", err)
	}
	return fd, nil
}

// Enter locks the calling goroutine to its thread and switches the thread into the network
// namespace fd unless it is there already. release (call it from the same goroutine, when it is
// done) switches the thread back and unlocks it; if switching back fails, the thread stays locked
// and Go ends it with the goroutine. Returning threads to the pool matters: a thread that ends
// takes with it the child processes that asked for a parent-death signal, as netlab's do.
func Enter(fd int) (release func(), err error) {
	runtime.LockOSThread()
	orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		runtime.UnlockOSThread()
		return nil, fmt.Errorf("open this thread's network namespace: %w", err)
	}
	var want, here unix.Stat_t
	if err := unix.Fstat(fd, &want); err != nil {
		_ = unix.Close(orig)
		runtime.UnlockOSThread()
		return nil, fmt.Errorf("stat the target network namespace: %w", err)
	}
	if err := unix.Fstat(orig, &here); err != nil {
		_ = unix.Close(orig)
		runtime.UnlockOSThread()
		return nil, fmt.Errorf("stat this thread's network namespace: %w", err)
	}
	switched := want.Dev != here.Dev || want.Ino != here.Ino
	if switched {
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			_ = unix.Close(orig)
			runtime.UnlockOSThread()
			return nil, fmt.Errorf("enter the network namespace: %w", err)
		}
	}
	return func() {
		if !switched || unix.Setns(orig, unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		_ = unix.Close(orig)
	}, nil
}
