//go:build linux

// Package xdppass attaches a program that passes every frame (XDP_PASS) to an interface. Test
// beds need it on the far end of a veth whose near end runs an XDP program that sends frames back
// out (XDP_TX, as relay/kernelpath does): veth hands such frames to its peer's XDP ring, and Linux
// (6.18 here) wakes the peer to process that ring only if the peer has an XDP program; with GRO
// alone the frames wait until unrelated traffic wakes it. A physical NIC needs nothing like it.
package xdppass

import (
	"fmt"
	"io"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
)

// Attach attaches the pass program to the interface with index ifindex in the calling thread's
// network namespace (call it inside netlab's Namespace.Do). Closing the result detaches it;
// deleting the interface or ending the process does too.
func Attach(ifindex int) (io.Closer, error) {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "xdp_pass", Type: ebpf.XDP, License: "MIT",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 2 /* XDP_PASS */), asm.Return()},
	})
	if err != nil {
		return nil, fmt.Errorf("xdppass: load: %w", err)
	}
	l, err := link.AttachXDP(link.XDPOptions{Program: prog, Interface: ifindex, Flags: link.XDPDriverMode})
	if err != nil {
		_ = prog.Close()
		return nil, fmt.Errorf("xdppass: attach to interface %d: %w", ifindex, err)
	}
	return closer{l, prog}, nil
}

type closer struct {
	l    link.Link
	prog *ebpf.Program
}

func (c closer) Close() error {
	err := c.l.Close()
	if perr := c.prog.Close(); err == nil {
		err = perr
	}
	if err != nil {
		return fmt.Errorf("xdppass: detach: %w", err)
	}
	return nil
}
