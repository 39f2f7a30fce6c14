package relay

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/turn/v5"

	"github.com/snowgate/snowgate/internal/telemetry"
	"github.com/snowgate/snowgate/relay/kernelpath"
)

// ErrStarted is returned by Start when the server already started (or closed).
var ErrStarted = errors.New("relay already started")

// Server is an embeddable TURN relay. Create it with New, then Start and
// Run (or Run alone, which starts it). All methods are safe for concurrent use.
type Server struct {
	cfg         Config
	log         *slog.Logger
	stampSecret string
	auth        *Authenticator
	policy      *PeerPolicy
	guard       *sendGuard
	stats       *stats
	quota       *quota
	fast        *fastPath        // nil when disabled
	kernel      *kernelpath.Path // nil when disabled or unavailable

	kernelFullWarned atomic.Bool
	// onKernelUnbind, if set (tests, before Start), receives each channel
	// leaving the kernel path with its final counters.
	onKernelUnbind func(kernelpath.Binding, kernelpath.Counters)

	draining atomic.Bool
	portalUp atomic.Bool
	started  atomic.Bool
	turn     *turn.Server
	opener   *socketOpener
	workers  []*worker
	conns    []*listenerConn
	addr4    netip.AddrPort
	addr6    netip.AddrPort
	// autoBind4/6: no listen address was configured; Start binds the
	// public address if it is local (see Config.ListenAddr4).
	autoBind4, autoBind6 bool
	closeOnce            sync.Once
	closeErr             error
}

// New validates cfg (filling defaults), draws the per-boot stamp secret and
// registers the metrics. It binds nothing; Start does.
func New(cfg Config) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	auto4 := cfg.PublicIP4.IsValid() && !cfg.ListenAddr4.IsValid()
	auto6 := cfg.PublicIP6.IsValid() && !cfg.ListenAddr6.IsValid()
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{cfg: cfg, log: log, autoBind4: auto4, autoBind6: auto6}
	secret := cfg.RESTSecret
	if cfg.Auth == AuthFirezone {
		var b [32]byte
		if _, err := rand.Read(b[:]); err != nil {
			return nil, fmt.Errorf("draw stamp secret: %w", err)
		}
		s.stampSecret = hex.EncodeToString(b[:])
		secret = s.stampSecret
	}
	s.auth = NewAuthenticator(cfg.Auth, secret, cfg.Realm)
	var own []netip.Addr
	for _, a := range []netip.Addr{cfg.PublicIP4, cfg.PublicIP6, cfg.ListenAddr4, cfg.ListenAddr6} {
		if a.IsValid() && !a.IsUnspecified() {
			own = append(own, a)
		}
	}
	s.policy = NewPeerPolicy(cfg.AllowPeers, cfg.DenyPeers, own, uint16(cfg.LowestPort), uint16(cfg.HighestPort)) //nolint:gosec // validated ports
	s.stats = newStats(4 * max(cfg.Sockets, 1))
	s.guard = &sendGuard{policy: s.policy, stats: s.stats, log: log}
	s.quota = newQuota(cfg.MaxAllocationsPerUser, cfg.MaxAllocations)
	if !cfg.DisableFastPath {
		s.fast = newFastPath()
	}
	if err := s.stats.register(cfg.MeterProvider); err != nil {
		return nil, err
	}
	return s, nil
}

// StampSecret is the per-boot secret sent to the portal (64 lowercase hex
// characters encoding 32 random bytes; used verbatim as text in the password
// derivation). Empty in TURN REST mode.
func (s *Server) StampSecret() string { return s.stampSecret }

// Addr is the IPv4 listener address (or the IPv6 one on an IPv6-only relay),
// valid after Start.
func (s *Server) Addr() netip.AddrPort {
	if s.addr4.IsValid() {
		return s.addr4
	}
	return s.addr6
}

// Addr6 is the IPv6 listener address, valid after Start (zero if IPv6 is off).
func (s *Server) Addr6() netip.AddrPort { return s.addr6 }

// Ready reports readiness: started, not draining, and joined to the portal
// (or no portal configured).
func (s *Server) Ready() bool {
	if !s.started.Load() || s.draining.Load() {
		return false
	}
	return s.cfg.Portal == nil || s.portalUp.Load()
}

// Allocations is the number of live allocations.
func (s *Server) Allocations() int { return s.quota.total() }

// Start binds the listener sockets and starts serving TURN. It does not
// register with the portal; Run does.
func (s *Server) Start(ctx context.Context) error {
	if !s.started.CompareAndSwap(false, true) {
		return ErrStarted
	}
	s.chooseBindAddrs()
	port := max(s.cfg.ListenPort, 0)
	opts := socketOptions{buffer: s.cfg.SocketBuffer}
	var pcs []turn.PacketConnConfig
	budget := newInboxBudget(maxQueuedDatagrams)
	opener, err := newSocketOpener()
	if err != nil {
		return err
	}
	s.opener = opener
	gen := &addressGenerator{
		public4: s.cfg.PublicIP4, public6: s.cfg.PublicIP6,
		bind4: s.cfg.ListenAddr4, bind6: s.cfg.ListenAddr6,
		low: s.cfg.LowestPort, high: s.cfg.HighestPort,
		opts:   socketOptions{buffer: s.cfg.RelaySocketBuffer},
		stats:  s.stats,
		fast:   s.fast,
		guard:  s.guard,
		inbox:  budget,
		opener: opener,
	}
	fail := func(err error) error {
		for _, c := range s.conns {
			_ = c.Close()
		}
		s.conns = nil
		s.closeWorkers()
		return err
	}
	// One worker per listener socket of a family: worker i reads the i-th
	// IPv4 and IPv6 listener sockets and the relay sockets of the
	// allocations made through them.
	for range s.cfg.Sockets {
		w, err := newWorker(s.cfg.BatchRead, s.stats, !s.cfg.DisableGSO)
		if err != nil {
			return fail(err)
		}
		s.workers = append(s.workers, w)
	}
	for _, fam := range []struct {
		network string
		bind    netip.Addr
		out     *netip.AddrPort
	}{{"udp4", s.cfg.ListenAddr4, &s.addr4}, {"udp6", s.cfg.ListenAddr6, &s.addr6}} {
		if !fam.bind.IsValid() {
			continue
		}
		group, err := listenGroup(fam.network, netip.AddrPortFrom(fam.bind, uint16(port)), s.cfg.Sockets, opts) //nolint:gosec // validated port
		if err != nil {
			return fail(err)
		}
		*fam.out = group[0].local
		for i, sock := range group {
			lc := &listenerConn{workerConn: workerConn{sock: sock, inbox: newInbox(listenerInbox, budget)},
				shard: s.stats.shard(len(s.conns)), stats: s.stats}
			lc.intercept = s.interceptor(lc)
			if s.fast != nil {
				lc.fast = s.fast
				s.fast.addListener(lc, fam.network == "udp6")
			}
			s.conns = append(s.conns, lc)
			if err := lc.attach(s.workers[i]); err != nil {
				for _, sock := range group[i+1:] {
					_ = sock.close()
				}
				return fail(err)
			}
			pcs = append(pcs, turn.PacketConnConfig{
				PacketConn:            lc,
				RelayAddressGenerator: gen.forWorker(s.workers[i]),
				PermissionHandler:     s.permit,
			})
		}
	}
	s.openKernelPath()
	ts, err := turn.NewServer(turn.ServerConfig{
		PacketConnConfigs:  pcs,
		LoggerFactory:      telemetry.PionLoggerFactory(s.log),
		Realm:              s.cfg.Realm,
		AuthHandler:        s.authenticate,
		QuotaHandler:       s.admit,
		EventHandler:       s.events(),
		ChannelBindTimeout: s.cfg.ChannelLifetime,
		PermissionTimeout:  s.cfg.PermissionLifetime,
		AllocationLifetime: s.cfg.AllocationLifetime,
	})
	if err != nil {
		s.closeKernelPath()
		return fail(fmt.Errorf("start TURN server: %w", err))
	}
	s.turn = ts
	s.log.Info("relay listening", "ipv4", addrPortString(s.addr4), "ipv6", addrPortString(s.addr6),
		"sockets_per_family", s.cfg.Sockets, "relay_ports", fmt.Sprintf("%d-%d", s.cfg.LowestPort, s.cfg.HighestPort),
		"auth", s.cfg.Auth.String())
	return nil
}

// Run starts the server if needed, registers with the portal (if
// configured) and serves until ctx ends. Then it drains: it leaves the
// portal, refuses new allocations (486) and keeps existing ones until they
// are gone or DrainTimeout passes, and closes. It returns nil after a clean
// drain.
func (s *Server) Run(ctx context.Context) error {
	if !s.started.Load() {
		if err := s.Start(ctx); err != nil {
			return err
		}
	}
	portalCtx, stopPortal := context.WithCancel(context.WithoutCancel(ctx))
	defer stopPortal()
	var portalDone chan struct{}
	if s.cfg.Portal != nil {
		portalDone = make(chan struct{})
		go func() {
			defer close(portalDone)
			s.runPortal(portalCtx)
		}()
	}
	<-ctx.Done()
	s.draining.Store(true)
	stopPortal()
	if portalDone != nil {
		<-portalDone
	}
	s.drain()
	return s.Close()
}

// drain waits for the allocations to end, at most DrainTimeout.
func (s *Server) drain() {
	if s.cfg.DrainTimeout <= 0 || s.quota.total() == 0 {
		return
	}
	s.log.Info("draining: refusing new allocations", "allocations", s.quota.total(), "timeout", s.cfg.DrainTimeout)
	deadline := time.NewTimer(s.cfg.DrainTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-deadline.C:
			s.log.Info("drain period over", "allocations_left", s.quota.total())
			return
		case <-tick.C:
			if s.quota.total() == 0 {
				s.log.Info("drained: no allocations left")
				return
			}
		}
	}
}

// Close stops serving at once: listener sockets and every allocation are
// closed. Safe to call more than once.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		s.draining.Store(true)
		s.started.Store(true) // a later Start fails
		if s.turn != nil {
			if err := s.turn.Close(); err != nil {
				s.closeErr = fmt.Errorf("close TURN server: %w", err)
			}
			// pion closes the allocations of a listener when its read loop
			// ends; wait for that so callers (and tests) see ports freed.
			deadline := time.Now().Add(2 * time.Second)
			for s.quota.total() > 0 && time.Now().Before(deadline) {
				time.Sleep(5 * time.Millisecond)
			}
		} else {
			for _, c := range s.conns {
				_ = c.Close()
			}
		}
		s.closeWorkers()
		s.closeKernelPath()
		s.stats.unregister()
	})
	return s.closeErr
}

// chooseBindAddrs binds a family's public address instead of the
// unspecified one when no listen address was configured and the host has
// the public address on an interface: replies and relayed datagrams then
// leave from it, not from whichever local address the kernel would pick.
func (s *Server) chooseBindAddrs() {
	auto := []struct {
		on             bool
		public, listen *netip.Addr
		any            netip.Addr
	}{
		{s.autoBind4, &s.cfg.PublicIP4, &s.cfg.ListenAddr4, netip.IPv4Unspecified()},
		{s.autoBind6, &s.cfg.PublicIP6, &s.cfg.ListenAddr6, netip.IPv6Unspecified()},
	}
	var local map[netip.Addr]bool
	for _, a := range auto {
		if !a.on {
			continue
		}
		if local == nil {
			local = localAddrs()
		}
		if !local[*a.public] {
			*a.listen = a.any
			continue
		}
		*a.listen = *a.public
		s.log.Info("binding the public address, which is local (set the listen address to the unspecified one to bind all)",
			"address", a.public.String())
	}
}

// localAddrs lists the addresses on the host's interfaces (empty if they
// cannot be read: binding all is the safe fallback).
func localAddrs() map[netip.Addr]bool {
	out := map[netip.Addr]bool{}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return out
	}
	for _, a := range addrs {
		if p, ok := a.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(p.IP); ok {
				out[ip.Unmap()] = true
			}
		}
	}
	return out
}

// closeWorkers stops the workers (after their sockets are closed) and the
// socket opener.
func (s *Server) closeWorkers() {
	for _, w := range s.workers {
		_ = w.Close()
	}
	s.workers = nil
	if s.opener != nil {
		s.opener.close()
	}
}

// authenticate is pion's AuthHandler.
func (s *Server) authenticate(ra *turn.RequestAttributes) (string, []byte, bool) {
	userID, key, err := s.auth.Key(ra.Username, ra.Realm, time.Now())
	if err != nil {
		reason := reasonMalformed
		switch {
		case errors.Is(err, ErrExpiredUsername):
			reason = reasonExpired
		case errors.Is(err, ErrWrongRealm):
			reason = reasonRealm
		}
		s.stats.authFailure(reason)
		s.log.Debug("credentials refused", "reason", reason, "client", addrString(ra.SrcAddr))
		return "", nil, false
	}
	return userID, key, true
}

// admit is pion's QuotaHandler (486 when it returns false).
func (s *Server) admit(userID, _ string, src net.Addr) bool {
	if s.draining.Load() {
		s.stats.quotaRefusals.Add(1)
		s.log.Debug("allocation refused: draining", "client", addrString(src))
		return false
	}
	if !s.quota.admit(userID, time.Now()) {
		s.stats.quotaRefusals.Add(1)
		s.log.Debug("allocation refused: quota", "client", addrString(src))
		return false
	}
	return true
}

// permit is pion's PermissionHandler (CreatePermission → 403 when false).
func (s *Server) permit(client net.Addr, peer net.IP) bool {
	if s.policy.AllowedIP(peer) {
		return true
	}
	s.stats.refusedPeers.Add(1)
	s.log.Debug("peer refused by policy", "client", addrString(client), "peer", peer.String())
	return false
}

func (s *Server) events() turn.EventHandler {
	return turn.EventHandler{
		OnAuth: func(src, _ net.Addr, _, _, _, _ string, verdict bool) {
			if !verdict {
				s.stats.authFailure(reasonIntegrity)
				s.log.Debug("credentials refused", "reason", reasonIntegrity, "client", addrString(src))
			}
		},
		OnAllocationCreated: func(src, dst net.Addr, _, userID, _ string, relayAddr net.Addr, _ int) {
			v6 := false
			if ua, ok := relayAddr.(*net.UDPAddr); ok && ua.IP.To4() == nil {
				v6 = true
			}
			if !s.quota.created(allocKey(src, dst), userID, v6) {
				return
			}
			if v6 {
				s.stats.allocations6.Add(1)
			} else {
				s.stats.allocations4.Add(1)
			}
			s.log.Debug("allocation created", "client", addrString(src), "relay", addrString(relayAddr))
		},
		OnAllocationDeleted: func(src, dst net.Addr, _, _, _ string) {
			if found, v6 := s.quota.deleted(allocKey(src, dst)); found {
				if v6 {
					s.stats.allocations6.Add(-1)
				} else {
					s.stats.allocations4.Add(-1)
				}
			}
			s.log.Debug("allocation deleted", "client", addrString(src))
		},
		OnPermissionCreated: func(net.Addr, net.Addr, string, string, string, net.Addr, net.IP) {
			s.stats.permissions.Add(1)
		},
		OnPermissionDeleted: func(net.Addr, net.Addr, string, string, string, net.Addr, net.IP) {
			s.stats.permissions.Add(-1)
		},
		OnChannelCreated: func(src, dst net.Addr, _, _, _ string, relayAddr, peer net.Addr, number uint16) {
			s.stats.channels.Add(1)
			if s.fast != nil && !s.guard.refusesAddr(peer) {
				s.fast.bind(src, relayAddr, peer, number)
			}
			if s.kernel != nil && !s.guard.refusesAddr(peer) {
				s.kernelBind(src, dst, relayAddr, peer, number)
			}
		},
		OnChannelDeleted: func(src, dst net.Addr, _, _, _ string, relayAddr, peer net.Addr, number uint16) {
			s.stats.channels.Add(-1)
			if s.fast != nil {
				s.fast.unbind(src, relayAddr, peer, number)
			}
			if s.kernel != nil {
				s.kernelUnbind(src, dst, relayAddr, peer, number)
			}
		},
	}
}

func allocKey(src, dst net.Addr) string { return addrString(src) + "|" + addrString(dst) }

func addrString(a net.Addr) string {
	if a == nil {
		return ""
	}
	return a.String()
}

func addrPortString(a netip.AddrPort) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}
