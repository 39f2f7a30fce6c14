package relay

import (
	"errors"
	"net"
	"net/netip"

	"github.com/snowgate/snowgate/internal/telemetry"
	"github.com/snowgate/snowgate/relay/kernelpath"
)

// The kernel path (package kernelpath) relays channel data of bound
// channels inside the kernel, in front of the userspace fast path: the
// server mirrors pion's channel bindings into its maps exactly as it does
// into fastPath (OnChannelCreated / OnChannelDeleted), so the rules stay
// pion's and ours — only channels pion bound, to peers the policy allowed,
// never to the relay's own addresses (sendGuard, and the program never
// routes to a local address). Whatever the program passes goes through the
// sockets and the userspace paths as before.

// openKernelPath attaches the kernel path unless disabled; failures leave
// the relay in userspace with one log line (INFO when there is simply no
// interface but loopback, WARN otherwise). It runs on Start's thread, in
// the relay's network namespace.
func (s *Server) openKernelPath() {
	if s.cfg.DisableKernelPath {
		return
	}
	var addrs []netip.Addr
	for _, a := range []netip.Addr{s.cfg.ListenAddr4, s.cfg.ListenAddr6} {
		if a.IsValid() {
			addrs = append(addrs, a)
		}
	}
	kp, err := kernelpath.Open(kernelpath.Config{
		LowestPort: uint16(s.cfg.LowestPort), HighestPort: uint16(s.cfg.HighestPort), //nolint:gosec // validated ports
		Addrs: addrs, MaxChannels: s.cfg.KernelPathMaxChannels, Logger: s.log,
	})
	switch {
	case errors.Is(err, kernelpath.ErrNoInterface):
		s.log.Info("kernel path off: the relay's addresses are on loopback only; channel data stays in userspace")
	case err != nil:
		s.log.Warn("kernel path unavailable; channel data stays in userspace", telemetry.Err(err))
	default:
		s.kernel = kp
		s.stats.kernel.Store(kp)
	}
}

// kernelBinding is a pion channel binding as the kernel path keys it: the
// relay socket's bound address (not the advertised one) and port.
func (s *Server) kernelBinding(client, listener, relayAddr, peer net.Addr, number uint16) (kernelpath.Binding, bool) {
	c, ok1 := udpAddrPort(client)
	l, ok2 := udpAddrPort(listener)
	r, ok3 := udpAddrPort(relayAddr)
	p, ok4 := udpAddrPort(peer)
	if !ok1 || !ok2 || !ok3 || !ok4 {
		return kernelpath.Binding{}, false
	}
	bind := s.cfg.ListenAddr4
	if r.Addr().Is6() {
		bind = s.cfg.ListenAddr6
	}
	if !bind.IsValid() {
		return kernelpath.Binding{}, false
	}
	return kernelpath.Binding{Client: c, Listen: l, Peer: p, Relay: netip.AddrPortFrom(bind, r.Port()), Channel: number}, true
}

// kernelBind installs a channel pion created (OnChannelCreated).
func (s *Server) kernelBind(client, listener, relayAddr, peer net.Addr, number uint16) {
	b, ok := s.kernelBinding(client, listener, relayAddr, peer, number)
	if !ok {
		return
	}
	switch err := s.kernel.Add(b); {
	case err == nil:
	case errors.Is(err, kernelpath.ErrFull):
		if s.kernelFullWarned.CompareAndSwap(false, true) {
			s.log.Warn("kernel path full: further channels are relayed in userspace",
				"max_channels", s.cfg.KernelPathMaxChannels)
		}
	default:
		s.log.Debug("channel not installed in the kernel path; it stays in userspace", telemetry.Err(err))
	}
}

// kernelUnbind removes a channel pion deleted (OnChannelDeleted).
func (s *Server) kernelUnbind(client, listener, relayAddr, peer net.Addr, number uint16) {
	b, ok := s.kernelBinding(client, listener, relayAddr, peer, number)
	if !ok {
		return
	}
	if c, ok := s.kernel.Remove(b); ok {
		s.log.Debug("channel left the kernel path", "client", b.Client.String(), "channel", b.Channel,
			"packets_to_peer", c.ToPeerPackets, "bytes_to_peer", c.ToPeerBytes,
			"packets_to_client", c.ToClientPackets, "bytes_to_client", c.ToClientBytes)
		if s.onKernelUnbind != nil {
			s.onKernelUnbind(b, c)
		}
	}
}

// closeKernelPath detaches the program; the counters it relayed stay in
// the totals (read once more now).
func (s *Server) closeKernelPath() {
	if s.kernel == nil {
		return
	}
	s.stats.retireKernel()
	if err := s.kernel.Close(); err != nil {
		s.log.Warn("kernel path: detach failed", telemetry.Err(err))
	}
}
