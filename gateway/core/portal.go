package core

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"time"

	"github.com/snowgate/snowgate/internal/p2pcontrol"
	"github.com/snowgate/snowgate/internal/portalapi"
	"github.com/snowgate/snowgate/internal/telemetry"
	"github.com/snowgate/snowgate/internal/tunnel"
	"github.com/snowgate/snowgate/node"
)

// HandlePortalMessage handles a decoded message of the gateway channel. Messages that cannot be acted on
// (bad keys or addresses, an invalid resource, a message before init) are logged at WARN and not answered.
func (g *Gateway) HandlePortalMessage(msg portalapi.Message, now time.Time) {
	g.expireDue(now)
	switch m := msg.(type) {
	case portalapi.GatewayInit:
		g.handleInit(m)
	case portalapi.AuthorizeFlow:
		g.handleAuthorizeFlow(m, now)
	case portalapi.RejectAccess:
		if c := g.clients[m.ClientID]; c != nil {
			g.revoke(c, normID(m.ResourceID), "rejected", now)
		} else {
			g.log.Debug("reject_access for an unknown client", "client", m.ClientID, "resource", m.ResourceID)
		}
	case portalapi.ResourceUpdated:
		g.handleResourceUpdated(m.Resource, now)
	case portalapi.ClientIceCandidates:
		for _, cand := range m.Candidates {
			g.emit(tunnel.NodeAddCandidate{ID: m.ClientID, Candidate: cand})
		}
	case portalapi.InvalidatedClientIceCandidates:
		for _, cand := range m.Candidates {
			g.emit(tunnel.NodeRemoveCandidate{ID: m.ClientID, Candidate: cand})
		}
	case portalapi.RelaysPresence:
		g.handleRelaysPresence(m)
	case portalapi.RequestConnection:
		g.handleRequestConnection(m, now)
	case portalapi.AllowAccess:
		g.handleAllowAccess(m, now)
	case portalapi.Unknown:
		g.log.Debug("unknown portal message ignored", "event", m.Name, "reason", m.Reason)
	default:
		g.log.Debug("portal message not for the gateway ignored", "event", msg.Event())
	}
}

// handleInit takes the tunnel addresses and relays of an init. Clients and their flows survive a repeated
// init (after a portal reconnect): existing connections keep working across portal outages.
func (g *Gateway) handleInit(m portalapi.GatewayInit) {
	v4, v6 := m.Interface.IPv4.Unmap(), m.Interface.IPv6
	if v4 != g.v4 || v6 != g.v6 {
		g.emit(tunnel.SetInterface{IPv4: v4, IPv6: v6})
	}
	if !v4.Is4() || !v6.Is6() || v6.Is4In6() || v6.Zone() != "" {
		g.log.Warn("init without valid tunnel addresses: control protocol disabled", "ipv4", v4, "ipv6", v6)
	} else if v6 != g.v6 || g.p2p == nil {
		p, err := p2pcontrol.NewGateway(p2pcontrol.GatewayConfig{
			Local: v6, MaxDomainsPerPeer: g.cfg.MaxDomainsPerClient, Logger: g.log,
		})
		if err != nil {
			g.log.Warn("control protocol not started", telemetry.Err(err))
		} else {
			if g.p2p != nil {
				g.log.Info("tunnel IPv6 changed; control-protocol state reset", "old", g.v6, "new", v6)
			}
			g.p2p = p
		}
		g.v4, g.v6 = v4, v6
	} else {
		g.v4 = v4
	}
	// Relays are added, none removed (Firezone's connlib): a restarted portal names only the relays that
	// registered again so far, and removing the others would tear down working allocations and the relayed
	// connections on them. relays_presence and the node's liveness checks remove relays that are gone.
	relays := tunnel.MergeRelays(m.Relays)
	for _, r := range relays {
		g.relays[r.ID] = struct{}{}
	}
	g.emit(tunnel.NodeRelays{Add: relays})
	g.reconnectAsked = false
	g.log.Info("portal init", "ipv4", g.v4, "ipv6", g.v6, "relays", len(relays), "clients_kept", len(g.clients))
	g.portalUp()
}

// handleRelaysPresence removes the relays that went away and adds the current ones.
func (g *Gateway) handleRelaysPresence(m portalapi.RelaysPresence) {
	add := tunnel.MergeRelays(m.Connected)
	for _, id := range m.DisconnectedIDs {
		delete(g.relays, id)
	}
	for _, r := range add {
		g.relays[r.ID] = struct{}{}
	}
	g.emit(tunnel.NodeRelays{Remove: slices.Clone(m.DisconnectedIDs), Add: add})
}

// errInvalid marks a portal message the gateway cannot act on.
var errInvalid = errors.New("invalid message")

// peerOf validates a client's key, PSK and tunnel addresses.
func peerOf(id, publicKey, psk string, v4, v6 netip.Addr) (key, pskKey node.Key, a4, a6 netip.Addr, err error) {
	if id == "" {
		return key, pskKey, a4, a6, fmt.Errorf("%w: empty client id", errInvalid)
	}
	if key, err = node.ParseKey(publicKey); err != nil || key.IsZero() {
		return key, pskKey, a4, a6, fmt.Errorf("%w: client public key: %v", errInvalid, errOr(err, "zero key"))
	}
	if pskKey, err = node.ParseKey(psk); err != nil {
		return key, pskKey, a4, a6, fmt.Errorf("%w: preshared key: %w", errInvalid, err)
	}
	a4, a6 = v4.Unmap(), v6
	if !a4.Is4() || !a6.Is6() || a6.Is4In6() || a6.Zone() != "" {
		return key, pskKey, a4, a6, fmt.Errorf("%w: client tunnel addresses %v, %v", errInvalid, v4, v6)
	}
	return key, pskKey, a4, a6, nil
}

func errOr(err error, s string) any {
	if err != nil {
		return err
	}
	return s
}

// expiryOf turns the portal's unix seconds into a time (zero: no expiry).
func expiryOf(unix int64) (time.Time, error) {
	switch {
	case unix < 0:
		return time.Time{}, fmt.Errorf("%w: expires_at %d", errInvalid, unix)
	case unix == 0:
		return time.Time{}, nil
	}
	return time.Unix(unix, 0), nil
}

func checkResource(r portalapi.Resource) error {
	if err := r.Validate(); err != nil {
		return fmt.Errorf("%w: %w", errInvalid, err)
	}
	return nil
}

func checkCreds(c portalapi.IceCredentials, whose string) error {
	if c.Username == "" || c.Password == "" {
		return fmt.Errorf("%w: empty %s ICE credentials", errInvalid, whose)
	}
	return nil
}

// handleAuthorizeFlow upserts the client's connection (idempotent: the same flow twice emits the same
// upsert and answers again), authorises the resource and answers flow_authorized once the upsert was
// carried out (NodeUpsert.Then).
func (g *Gateway) handleAuthorizeFlow(m portalapi.AuthorizeFlow, now time.Time) {
	log := g.log.With("client", m.Client.ID, "resource", m.Resource.ID)
	if !g.initialised() {
		log.Warn("authorize_flow before init ignored")
		return
	}
	key, psk, v4, v6, err := peerOf(m.Client.ID, m.Client.PublicKey, m.Client.PresharedKey, m.Client.IPv4, m.Client.IPv6)
	if err == nil {
		err = errors.Join(checkResource(m.Resource), checkCreds(m.ClientIceCredentials, "client"),
			checkCreds(m.GatewayIceCredentials, "gateway"))
	}
	expires, eerr := expiryOf(m.ExpiresAt)
	if err = errors.Join(err, eerr); err != nil {
		log.Warn("authorize_flow refused", telemetry.Err(err))
		return
	}
	params := node.ConnectionParams{
		ID: m.Client.ID, RemoteKey: key, PresharedKey: psk,
		Local:  node.Credentials{Ufrag: m.GatewayIceCredentials.Username, Password: m.GatewayIceCredentials.Password},
		Remote: node.Credentials{Ufrag: m.ClientIceCredentials.Username, Password: m.ClientIceCredentials.Password},
		Role:   node.RoleControlled,
	}
	c, ok := g.clientWith(params, v4, v6, false, m.Resource, expires, now)
	if !ok {
		return
	}
	c.legacy = false
	g.upsert(c, tunnel.PortalPush{Event: portalapi.EventFlowAuthorized, Payload: portalapi.FlowAuthorized{Ref: m.Ref}})
}

// clientWith finds or creates the client and authorises the resource; a new client whose authorisation
// fails is dropped again.
func (g *Gateway) clientWith(params node.ConnectionParams, v4, v6 netip.Addr, replace bool, res portalapi.Resource,
	expires, now time.Time,
) (*client, bool) {
	_, existed := g.clients[params.ID]
	c := g.ensureClient(params, v4, v6, replace)
	if c == nil {
		return nil, false
	}
	if err := g.authorize(c, res, expires, now); err != nil {
		g.log.Warn("authorisation refused", "client", c.id, telemetry.Err(err))
		if len(c.auths) == 0 {
			g.removeClient(c, false, existed)
		}
		return nil, false
	}
	return c, true
}

// handleResourceUpdated applies a resource's new description to every client authorised for it.
func (g *Gateway) handleResourceUpdated(r portalapi.Resource, now time.Time) {
	if err := checkResource(r); err != nil {
		g.log.Warn("resource_updated ignored", "resource", r.ID, telemetry.Err(err))
		return
	}
	rid := normID(r.ID)
	n := 0
	for _, c := range g.clients {
		a := c.auths[rid]
		if a == nil {
			continue
		}
		if err := g.authorize(c, r, a.expires, now); err != nil {
			g.log.Warn("resource update not applied", "client", c.id, "resource", rid, telemetry.Err(err))
			continue
		}
		n++
	}
	g.log.Info("resource updated", "resource", rid, "clients", n)
}

// handleRequestConnection is the old protocol's new connection: non-idempotent, it replaces the client's
// connection and state, with ICE credentials the gateway makes up, and answers connection_ready once the
// upsert was carried out (NodeUpsert.Then).
func (g *Gateway) handleRequestConnection(m portalapi.RequestConnection, now time.Time) {
	log := g.log.With("client", m.Client.ID, "resource", m.Resource.ID)
	if !g.initialised() {
		log.Warn("request_connection before init ignored")
		return
	}
	p := m.Client.Peer
	key, psk, v4, v6, err := peerOf(m.Client.ID, p.PublicKey, p.PresharedKey, p.IPv4, p.IPv6)
	if err == nil {
		err = errors.Join(checkResource(m.Resource), checkCreds(m.Client.Payload.IceParameters, "client"))
	}
	expires, eerr := expiryOf(m.ExpiresAt)
	if err = errors.Join(err, eerr); err != nil {
		log.Warn("request_connection refused", telemetry.Err(err))
		return
	}
	local, err := newCredentials(g.rand)
	if err != nil {
		log.Warn("request_connection refused: no ICE credentials", telemetry.Err(err))
		return
	}
	params := node.ConnectionParams{
		ID: m.Client.ID, RemoteKey: key, PresharedKey: psk, Local: local,
		Remote: node.Credentials{Ufrag: m.Client.Payload.IceParameters.Username, Password: m.Client.Payload.IceParameters.Password},
		Role:   node.RoleControlled,
	}
	c, ok := g.clientWith(params, v4, v6, true, m.Resource, expires, now)
	if !ok {
		return
	}
	c.legacy = true
	g.upsert(c, tunnel.PortalPush{Event: portalapi.EventConnectionReady, Payload: portalapi.ConnectionReady{
		Ref: m.Ref,
		GatewayPayload: portalapi.GatewayResponse{ConnectionAccepted: &portalapi.ConnectionAccepted{
			IceParameters: portalapi.IceCredentials{Username: local.Ufrag, Password: local.Password},
		}},
	}})
	if d := m.Client.Payload.Domain; d != nil {
		g.legacyDomain(c, normID(m.Resource.ID), *d, now)
	}
}

// handleAllowAccess is the old protocol's authorisation for a client that has a connection; no answer.
func (g *Gateway) handleAllowAccess(m portalapi.AllowAccess, now time.Time) {
	log := g.log.With("client", m.ClientID, "resource", m.Resource.ID)
	c := g.clients[m.ClientID]
	if c == nil {
		log.Warn("allow_access for a client without connection ignored")
		return
	}
	if (m.ClientIPv4.IsValid() && m.ClientIPv4.Unmap() != c.v4) || (m.ClientIPv6.IsValid() && m.ClientIPv6 != c.v6) {
		log.Warn("allow_access with other tunnel addresses than the client's ignored", "ipv4", m.ClientIPv4, "ipv6", m.ClientIPv6)
		return
	}
	expires, err := expiryOf(m.ExpiresAt)
	if err = errors.Join(checkResource(m.Resource), err); err != nil {
		log.Warn("allow_access refused", telemetry.Err(err))
		return
	}
	if err := g.authorize(c, m.Resource, expires, now); err != nil {
		log.Warn("allow_access refused", telemetry.Err(err))
		return
	}
	if m.Payload != nil {
		g.legacyDomain(c, normID(m.Resource.ID), *m.Payload, now)
	}
}

// credAlphabet has 32 symbols, so a random byte maps onto it without bias (b & 31); all are ICE chars.
const credAlphabet = "abcdefghijklmnopqrstuvwxyz234567"

// newCredentials makes up ICE credentials: an 8-character ufrag and a 24-character password (RFC 8445
// asks for at least 4 and 22), 5 bits of entropy each.
func newCredentials(r io.Reader) (node.Credentials, error) {
	var b [8 + 24]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return node.Credentials{}, fmt.Errorf("random ICE credentials: %w", err)
	}
	for i := range b {
		b[i] = credAlphabet[b[i]&31]
	}
	return node.Credentials{Ufrag: string(b[:8]), Password: string(b[8:])}, nil
}
