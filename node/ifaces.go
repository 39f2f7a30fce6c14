package node

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/pion/ice/v4"
	"github.com/pion/logging"
	"github.com/pion/transport/v5"
	"github.com/pion/turn/v5"
	wgconn "golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"

	"github.com/snowgate/snowgate/node/internal/connsm"
)

// The node drives three libraries, each behind one small interface: an ICE
// agent per connection run (iceAgent, pion's ice.Agent), a TURN client per
// relay allocation (turnClient, pion's turn.Client) and the WireGuard
// device's peers (wgDevice, wireguard-go). The rest of the node only sees
// these interfaces; the adapters below are the only code that knows pion's
// and wireguard-go's types for them.

// iceAgent is one ICE run of a connection.
type iceAgent interface {
	// AddRemoteCandidate gives the agent a candidate the peer signalled.
	AddRemoteCandidate(c connsm.Candidate) error
	// AddSrflxCandidate gives the agent the node's server-reflexive address
	// addr of the shared socket whose host address is base.
	AddSrflxCandidate(addr, base netip.AddrPort) error
	// AddRelayCandidate gives the agent our allocation's relayed address
	// addr (base: our mapped address as the relay sees it), with pc, the
	// connection's view of the allocation, to send its checks through.
	AddRelayCandidate(addr, base netip.AddrPort, pc net.PacketConn) error
	// Start starts the connectivity checks in the given role.
	Start(controlling bool, remote Credentials) error
	// SelectedRTT is ICE's round-trip time of the selected pair (0: none).
	SelectedRTT() time.Duration
	// Close stops the agent and waits for its goroutines and callbacks.
	Close()
}

// agentConfig configures a new agent.
type agentConfig struct {
	local      Credentials
	ipv4, ipv6 bool // network types
	gatherHost bool // gather host candidates (from the shared mux)
	mux        ice.UniversalUDPMux
}

// agentCallbacks are called on the agent's own goroutines: they must not
// block (the node posts them to its loop).
type agentCallbacks struct {
	candidate func(connsm.Candidate)
	selected  func(local, remote connsm.Candidate)
	failed    func()
}

// agentFactory creates ICE agents (pionAgents in production; tests pass fakes).
type agentFactory func(agentConfig, agentCallbacks) (iceAgent, error)

// turnClient is one TURN client on the node's shared socket: it never
// reads the socket (the demux feeds HandleInbound).
type turnClient interface {
	// Allocate runs the Allocate transaction.
	Allocate(ctx context.Context) (relayedConn, error)
	// Probe sends a STUN binding request to the relay (keepalive, RTT,
	// liveness) and returns our mapped address.
	Probe() (netip.AddrPort, error)
	// HandleInbound hands the client a datagram from the relay.
	HandleInbound(b []byte, from netip.AddrPort)
	// Close closes the client (its allocation is released).
	Close()
}

// relayedConn is a UDP allocation.
type relayedConn interface {
	net.PacketConn
	// PeerForChannel maps a bound channel number to the peer's address.
	PeerForChannel(ch uint16) (netip.AddrPort, bool)
}

// turnConfig configures a TURN client.
type turnConfig struct {
	relay  Relay
	server netip.AddrPort
	conn   net.PacketConn // writes go out on the node's socket
	ipv6   bool
}

// turnFactory creates TURN clients (pionTURN in production).
type turnFactory func(turnConfig) (turnClient, error)

// wgDevice is the WireGuard device's peer control.
type wgDevice interface {
	// SetPrivateKey sets the device's static key.
	SetPrivateKey(Key) error
	// AddPeer creates the peer with the given pre-shared key and allowed
	// IPs, running.
	AddPeer(remote, psk Key, allowed []netip.Prefix) (wgPeer, error)
	// SetAllowedIPs replaces a peer's allowed IPs.
	SetAllowedIPs(remote Key, allowed []netip.Prefix) error
	// RemovePeer removes a peer (no-op if it does not exist).
	RemovePeer(remote Key)
	// BindClose and BindUpdate stop and restart the receive goroutines
	// around a change of sockets.
	BindClose() error
	BindUpdate() error
	// Close closes the device and its TUN.
	Close()
}

// wgPeer is one WireGuard peer.
type wgPeer interface {
	// SetEndpoint points the peer at a path.
	SetEndpoint(wgconn.Endpoint)
	// SendKeepalive sends a keepalive (an empty transport message).
	SendKeepalive()
	// SendHandshakeInitiation starts a handshake (a no-op if one was sent
	// less than 5 s ago).
	SendHandshakeInitiation()
}

// ---- pion/ice ----

// pionAgents returns the production agentFactory.
func pionAgents(nw transport.Net, lf logging.LoggerFactory, failedTimeout time.Duration, includeLoopback bool) agentFactory {
	return func(cfg agentConfig, cb agentCallbacks) (iceAgent, error) {
		var netTypes []ice.NetworkType
		if cfg.ipv4 {
			netTypes = append(netTypes, ice.NetworkTypeUDP4)
		}
		if cfg.ipv6 {
			netTypes = append(netTypes, ice.NetworkTypeUDP6)
		}
		// pion gathers host candidates from the mux; srflx and relay
		// candidates come from the node (node-wide mapped addresses, shared
		// allocations).
		var gather []ice.CandidateType
		if cfg.gatherHost {
			gather = append(gather, ice.CandidateTypeHost)
		}
		opts := []ice.AgentOption{
			ice.WithNet(nw),
			ice.WithLocalCredentials(cfg.local.Ufrag, cfg.local.Password),
			ice.WithUDPMux(cfg.mux),
			ice.WithUDPMuxSrflx(cfg.mux),
			ice.WithNetworkTypes(netTypes),
			ice.WithCandidateTypes(gather),
			ice.WithMulticastDNSMode(ice.MulticastDNSModeDisabled),
			ice.WithLoggerFactory(lf),
			ice.WithHostAcceptanceMinWait(0),
			ice.WithSrflxAcceptanceMinWait(50 * time.Millisecond),
			ice.WithPrflxAcceptanceMinWait(100 * time.Millisecond),
			ice.WithRelayAcceptanceMinWait(300 * time.Millisecond),
			// pion runs its connectivity checks on this ticker while checking (and only then: a
			// connected agent ticks at its keepalive interval), so it bounds how soon the first check
			// of a new pair goes out. At 100 ms the direct setup took 125–145 ms here, almost all of it
			// ICE; at 20 ms 60–70 ms (bench/tunnel, connection setup), the rest being the 50 ms srflx
			// acceptance wait. The price is more STUN checks during the first few hundred ms.
			ice.WithCheckInterval(20 * time.Millisecond),
			ice.WithFailedTimeout(failedTimeout),
			ice.WithDisconnectedTimeout(5 * time.Second),
		}
		if includeLoopback {
			opts = append(opts, ice.WithIncludeLoopback())
		}
		a, err := ice.NewAgentWithOptions(opts...)
		if err != nil {
			return nil, fmt.Errorf("ice agent: %w", err)
		}
		pa := &pionAgent{a: a, mux: cfg.mux, ufrag: cfg.local.Ufrag}
		_ = a.OnCandidate(func(c ice.Candidate) {
			if c != nil {
				if cc, ok := fromPion(c); ok {
					cb.candidate(cc)
				}
			}
		})
		_ = a.OnSelectedCandidatePairChange(func(l, r ice.Candidate) {
			lc, ok1 := fromPion(l)
			rc, ok2 := fromPion(r)
			if ok1 && ok2 {
				cb.selected(lc, rc)
			}
		})
		_ = a.OnConnectionStateChange(func(s ice.ConnectionState) {
			if s == ice.ConnectionStateFailed {
				cb.failed()
			}
		})
		if cfg.gatherHost {
			if err := a.GatherCandidates(); err != nil {
				_ = a.Close()
				return nil, fmt.Errorf("gather candidates: %w", err)
			}
		}
		return pa, nil
	}
}

// pionAgent adapts *ice.Agent.
type pionAgent struct {
	a     *ice.Agent
	mux   ice.UniversalUDPMux
	ufrag string
}

func (p *pionAgent) AddRemoteCandidate(c connsm.Candidate) error {
	cand, err := parseRemoteCandidate(c.SDP)
	if err != nil {
		return err
	}
	if err := p.a.AddRemoteCandidate(cand); err != nil {
		return fmt.Errorf("add remote candidate: %w", err)
	}
	return nil
}

func (p *pionAgent) AddSrflxCandidate(addr, base netip.AddrPort) error {
	cand, err := ice.NewCandidateServerReflexive(&ice.CandidateServerReflexiveConfig{
		Network: "udp", Address: addr.Addr().String(), Port: int(addr.Port()), Component: 1,
		RelAddr: base.Addr().String(), RelPort: int(base.Port()),
	})
	if err != nil {
		return fmt.Errorf("srflx candidate: %w", err)
	}
	pc, err := p.mux.GetConnForURL(p.ufrag, "node-srflx", net.UDPAddrFromAddrPort(base))
	if err != nil {
		return fmt.Errorf("srflx candidate conn: %w", err)
	}
	if err := p.a.AddVirtualCandidate(cand, pc); err != nil {
		_ = pc.Close()
		return fmt.Errorf("add srflx candidate: %w", err)
	}
	return nil
}

func (p *pionAgent) AddRelayCandidate(addr, base netip.AddrPort, pc net.PacketConn) error {
	cand, err := ice.NewCandidateRelay(&ice.CandidateRelayConfig{
		Network: "udp", Address: addr.Addr().String(), Port: int(addr.Port()), Component: 1,
		RelAddr: base.Addr().String(), RelPort: int(base.Port()), RelayProtocol: "udp",
	})
	if err != nil {
		return fmt.Errorf("relay candidate: %w", err)
	}
	if err := p.a.AddVirtualCandidate(cand, pc); err != nil {
		return fmt.Errorf("add relay candidate: %w", err)
	}
	return nil
}

func (p *pionAgent) Start(controlling bool, remote Credentials) error {
	var err error
	if controlling {
		_, err = p.a.StartDial(remote.Ufrag, remote.Password)
	} else {
		_, err = p.a.StartAccept(remote.Ufrag, remote.Password)
	}
	if err != nil {
		return fmt.Errorf("start ice: %w", err)
	}
	return nil
}

func (p *pionAgent) SelectedRTT() time.Duration {
	if st, ok := p.a.GetSelectedCandidatePairStats(); ok {
		return time.Duration(st.CurrentRoundTripTime * float64(time.Second))
	}
	return 0
}

func (p *pionAgent) Close() { _ = p.a.GracefulClose() }

// fromPion converts a pion candidate (its SDP, address and type).
func fromPion(c ice.Candidate) (connsm.Candidate, bool) {
	addr, ok := candidateAddr(c)
	if !ok {
		return connsm.Candidate{}, false
	}
	var t connsm.CandidateType
	switch c.Type() {
	case ice.CandidateTypeHost:
		t = connsm.CandidateHost
	case ice.CandidateTypeServerReflexive:
		t = connsm.CandidateServerReflexive
	case ice.CandidateTypePeerReflexive:
		t = connsm.CandidatePeerReflexive
	case ice.CandidateTypeRelay:
		t = connsm.CandidateRelay
	default:
		return connsm.Candidate{}, false
	}
	return connsm.Candidate{SDP: c.Marshal(), Addr: addr, Type: t}, true
}

func candidateAddr(c ice.Candidate) (netip.AddrPort, bool) {
	ip, err := netip.ParseAddr(c.Address())
	if err != nil {
		return netip.AddrPort{}, false
	}
	return netip.AddrPortFrom(ip.Unmap(), uint16(c.Port())), true
}

// parseRemoteCandidate parses a signalled SDP candidate (untrusted input from
// the portal): a parser panic becomes an error, and only UDP candidates with
// a literal IP address and a valid port are accepted.
func parseRemoteCandidate(sdp string) (cand ice.Candidate, err error) {
	defer func() {
		if r := recover(); r != nil {
			cand, err = nil, fmt.Errorf("parse candidate: %v", r)
		}
	}()
	cand, err = ice.UnmarshalCandidate(trimCandidate(sdp))
	if err != nil {
		return nil, fmt.Errorf("parse candidate: %w", err)
	}
	if !cand.NetworkType().IsUDP() {
		return nil, fmt.Errorf("parse candidate: %s is not UDP", cand.NetworkType())
	}
	if _, ok := candidateAddr(cand); !ok || cand.Port() <= 0 || cand.Port() > 65535 {
		return nil, fmt.Errorf("parse candidate: bad address %s:%d", cand.Address(), cand.Port())
	}
	return cand, nil
}

// parseCandidate parses a signalled candidate into the core's form.
func parseCandidate(sdp string) (connsm.Candidate, error) {
	cand, err := parseRemoteCandidate(sdp)
	if err != nil {
		return connsm.Candidate{}, err
	}
	c, ok := fromPion(cand)
	if !ok {
		return connsm.Candidate{}, fmt.Errorf("parse candidate: unsupported type %s", cand.Type())
	}
	c.SDP = trimCandidate(sdp)
	return c, nil
}

func trimCandidate(s string) string { return strings.TrimPrefix(s, "candidate:") }

// ---- pion/turn ----

// pionTURN returns the production turnFactory.
func pionTURN(nw transport.Net, lf logging.LoggerFactory, rto time.Duration) turnFactory {
	return func(cfg turnConfig) (turnClient, error) {
		fam := turn.RequestedAddressFamilyIPv4
		if cfg.ipv6 {
			fam = turn.RequestedAddressFamilyIPv6
		}
		c, err := turn.NewClient(&turn.ClientConfig{
			STUNServerAddr:         cfg.server.String(),
			TURNServerAddr:         cfg.server.String(),
			Username:               cfg.relay.Username,
			Password:               cfg.relay.Password,
			Realm:                  cfg.relay.Realm,
			Conn:                   cfg.conn,
			Net:                    nw,
			LoggerFactory:          lf,
			RequestedAddressFamily: fam,
			RTO:                    rto,
		})
		if err != nil {
			return nil, fmt.Errorf("turn client for relay %s at %s: %w", cfg.relay.ID, cfg.server, err)
		}
		return &pionTURNClient{c: c, server: net.UDPAddrFromAddrPort(cfg.server)}, nil
	}
}

// pionTURNClient adapts *turn.Client.
type pionTURNClient struct {
	c      *turn.Client
	server *net.UDPAddr
}

func (p *pionTURNClient) Allocate(ctx context.Context) (relayedConn, error) {
	pc, err := p.c.AllocateWithContext(ctx)
	if err != nil {
		return nil, err
	}
	r := &pionRelayed{PacketConn: pc}
	if cl, ok := pc.(interface {
		FindAddrByChannelNumber(uint16) (net.Addr, bool)
	}); ok {
		r.chans = cl.FindAddrByChannelNumber
	}
	if cl, ok := pc.(pionChannels); ok {
		r.bound = cl
	}
	return r, nil
}

func (p *pionTURNClient) Probe() (netip.AddrPort, error) {
	mapped, err := p.c.SendBindingRequestTo(p.server)
	if err != nil {
		return netip.AddrPort{}, err
	}
	return addrPortOf(mapped), nil
}

func (p *pionTURNClient) HandleInbound(b []byte, from netip.AddrPort) {
	_, _ = p.c.HandleInbound(b, net.UDPAddrFromAddrPort(from))
}

func (p *pionTURNClient) Close() { p.c.Close() }

// pionRelayed adapts the relayed net.PacketConn of a pion allocation.
type pionRelayed struct {
	net.PacketConn
	chans func(uint16) (net.Addr, bool)
	bound pionChannels // nil if pion's conn does not offer it
}

// pionChannels is what pion/turn's relayed UDPConn tells about its channel bindings.
type pionChannels interface {
	FindChannelNumberByAddr(net.Addr) (uint16, bool)
	IsChannelActive(uint16) bool
}

// boundChannel returns the channel bound to peer if pion sends to it as ChannelData (its binding
// confirmed), so that the node may frame and batch them itself (see allocation.writeBatch).
func (r *pionRelayed) boundChannel(peer netip.AddrPort) (uint16, bool) {
	if r.bound == nil {
		return 0, false
	}
	ch, ok := r.bound.FindChannelNumberByAddr(net.UDPAddrFromAddrPort(peer))
	if !ok || !r.bound.IsChannelActive(ch) {
		return 0, false
	}
	return ch, true
}

func (r *pionRelayed) PeerForChannel(ch uint16) (netip.AddrPort, bool) {
	if r.chans == nil {
		return netip.AddrPort{}, false
	}
	a, ok := r.chans(ch)
	if !ok {
		return netip.AddrPort{}, false
	}
	return addrPortOf(a), true
}

// ---- wireguard-go ----

// wgAdapter adapts *device.Device with typed calls: device.SetPrivateKey,
// device.NewPeer and Peer.Start, device.RemovePeer, Peer.SetEndpointFromPacket,
// Peer.SendKeepalive and Peer.SendHandshakeInitiation. Nothing is parsed.
//
// Gap: wireguard-go has no typed setter for a peer's pre-shared key
// (Peer.handshake is unexported) nor access to the device's AllowedIPs table
// (Device.allowedips is unexported; the AllowedIPs type's methods are
// exported, but no instance is reachable). Those two are written as UAPI
// lines (peerUAPI), for a peer the adapter created, with update_only so that
// it never creates one.
type wgAdapter struct {
	dev *device.Device
	// retain, if set, is handed every peer created (see peerRetainer).
	retain func(any)
}

// peerRetainer is an optional interface of Config.Net: a network that
// wants to keep wireguard-go's peers alive. node/nodetest's simulated
// network runs in a synctest bubble, and wireguard-go drains a peer's
// queues (bubbled channels) from a finalizer, which runs outside the bubble:
// that is fatal, so the test network keeps every peer reachable.
type peerRetainer interface{ RetainWireGuardPeer(any) }

func (w wgAdapter) SetPrivateKey(k Key) error {
	if err := w.dev.SetPrivateKey(device.NoisePrivateKey(k)); err != nil {
		return fmt.Errorf("set private key: %w", err)
	}
	return nil
}

func (w wgAdapter) AddPeer(remote, psk Key, allowed []netip.Prefix) (wgPeer, error) {
	p := w.dev.LookupPeer(device.NoisePublicKey(remote))
	if p == nil {
		var err error
		if p, err = w.dev.NewPeer(device.NoisePublicKey(remote)); err != nil {
			return nil, fmt.Errorf("new peer: %w", err)
		}
		if w.retain != nil {
			w.retain(p)
		}
	}
	if err := w.dev.IpcSet(peerUAPI(remote, &psk, allowed)); err != nil {
		w.dev.RemovePeer(device.NoisePublicKey(remote))
		return nil, fmt.Errorf("peer pre-shared key and allowed IPs: %w", err)
	}
	p.Start() // no-op if the device is down (Up starts every peer) or the peer runs
	return wgPeerAdapter{p}, nil
}

func (w wgAdapter) SetAllowedIPs(remote Key, allowed []netip.Prefix) error {
	if w.dev.LookupPeer(device.NoisePublicKey(remote)) == nil {
		return fmt.Errorf("set allowed IPs: no peer %s", remote)
	}
	if err := w.dev.IpcSet(peerUAPI(remote, nil, allowed)); err != nil {
		return fmt.Errorf("set allowed IPs: %w", err)
	}
	return nil
}

func (w wgAdapter) RemovePeer(remote Key) { w.dev.RemovePeer(device.NoisePublicKey(remote)) }
func (w wgAdapter) BindClose() error      { return w.dev.BindClose() }
func (w wgAdapter) BindUpdate() error     { return w.dev.BindUpdate() }
func (w wgAdapter) Close()                { w.dev.Close() }

// peerUAPI is the only UAPI text the node writes (see wgAdapter): an update
// of an existing peer's pre-shared key (psk non-nil) and allowed IPs.
func peerUAPI(remote Key, psk *Key, allowed []netip.Prefix) string {
	var b strings.Builder
	b.WriteString("public_key=" + remote.hex() + "\nupdate_only=true\n")
	if psk != nil {
		b.WriteString("preshared_key=" + psk.hex() + "\n")
	}
	b.WriteString("replace_allowed_ips=true\n")
	for _, p := range allowed {
		b.WriteString("allowed_ip=" + p.Masked().String() + "\n")
	}
	return b.String()
}

// wgPeerAdapter adapts *device.Peer.
type wgPeerAdapter struct{ p *device.Peer }

func (w wgPeerAdapter) SetEndpoint(ep wgconn.Endpoint) { w.p.SetEndpointFromPacket(ep) }
func (w wgPeerAdapter) SendKeepalive()                 { w.p.SendKeepalive() }
func (w wgPeerAdapter) SendHandshakeInitiation()       { _ = w.p.SendHandshakeInitiation(false) }
