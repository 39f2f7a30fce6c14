// Package portalapi holds the JSON messages of the portal's Phoenix channels in the seed's era ("flow" names,
// V1 paths), shared by the mock portal and its three kinds of peers (client, gateway, relay), and the
// portal's deterministic derivations (relay credentials, ICE credentials, WireGuard PSK, relay id).
//
// Field names follow Firezone's connlib messages (reference/firezone.md §2). Decoding ignores unknown fields;
// unknown events and resources of unknown types decode to [Unknown] (callers log it at debug), never to an
// error.
//
// Two parts are snowgate's own, not Firezone's: the clients' and gateways' report_connections push
// ([ReportConnections]: the path each connection takes, for the dev stack's live page), and validation of
// some payloads at decode time ([ReportConnections.Validate]). The old, non-idempotent gateway exchange
// (request_connection → connection_ready, allow_access) is kept for gateways of that era.
package portalapi

import "net/netip"

// Topics of the three channels.
const (
	TopicClient  = "client"
	TopicGateway = "gateway"
	TopicRelay   = "relay"
)

// Event names of the seed era.
const (
	EventInit                              = "init"
	EventConfigChanged                     = "config_changed"
	EventResourceCreatedOrUpdated          = "resource_created_or_updated"
	EventResourceDeleted                   = "resource_deleted"
	EventResourceUpdated                   = "resource_updated"
	EventRelaysPresence                    = "relays_presence"
	EventCreateFlow                        = "create_flow"
	EventFlowCreated                       = "flow_created"
	EventFlowCreationFailed                = "flow_creation_failed"
	EventBroadcastIceCandidates            = "broadcast_ice_candidates"
	EventBroadcastInvalidatedIceCandidates = "broadcast_invalidated_ice_candidates"
	EventIceCandidates                     = "ice_candidates"
	EventInvalidateIceCandidates           = "invalidate_ice_candidates"
	EventAuthorizeFlow                     = "authorize_flow"
	EventFlowAuthorized                    = "flow_authorized"
	EventRequestConnection                 = "request_connection"
	EventAllowAccess                       = "allow_access"
	EventConnectionReady                   = "connection_ready"
	EventRejectAccess                      = "reject_access"
)

// Message is implemented by every message type of this package; Event is its Phoenix event name.
type Message interface {
	Event() string
}

// Unknown is what the decoders return for an event they do not know, or a resource of an unknown type:
// callers log it at debug and go on.
type Unknown struct {
	// Name is the event name as received.
	Name string
	// Reason says why it was ignored ("unknown event", "unknown resource type \"x\"").
	Reason string
}

// Event returns the received event name.
func (u Unknown) Event() string { return u.Name }

// DNSServer is an upstream DNS server in the seed-era form {"protocol":"ip_port","address":"ip:port"}.
type DNSServer struct {
	Protocol string         `json:"protocol"`
	Address  netip.AddrPort `json:"address"`
}

// DNSProtocolIPPort is the only DNSServer protocol of the seed era.
const DNSProtocolIPPort = "ip_port"

// Do53 is an upstream plain-DNS server in the newer form {"ip"}; the mock sends both forms.
type Do53 struct {
	IP netip.Addr `json:"ip"`
}

// Interface is a peer's tunnel interface: its tunnel addresses and, for clients, the upstream DNS.
type Interface struct {
	IPv4         netip.Addr  `json:"ipv4"`
	IPv6         netip.Addr  `json:"ipv6"`
	UpstreamDNS  []DNSServer `json:"upstream_dns,omitempty"`
	UpstreamDo53 []Do53      `json:"upstream_do53,omitempty"`
	SearchDomain string      `json:"search_domain,omitempty"`
}

// ClientInit is the client's init: its interface, the resources it may reach, and its relays.
type ClientInit struct {
	Interface Interface  `json:"interface"`
	Resources []Resource `json:"resources"`
	Relays    []Relay    `json:"relays"`
	// IgnoredResources lists the types of the resources the decoder dropped as unknown (for a debug log).
	IgnoredResources []string `json:"-"`
}

// Event returns "init".
func (ClientInit) Event() string { return EventInit }

// ConfigChanged (client, inbound) carries a new interface configuration.
type ConfigChanged struct {
	Interface Interface `json:"interface"`
}

// Event returns "config_changed".
func (ConfigChanged) Event() string { return EventConfigChanged }

// ResourceCreatedOrUpdated (client, inbound): the payload is the resource itself.
type ResourceCreatedOrUpdated struct {
	Resource
}

// Event returns "resource_created_or_updated".
func (ResourceCreatedOrUpdated) Event() string { return EventResourceCreatedOrUpdated }

// ResourceDeleted (client, inbound): the payload is the resource id as a JSON string.
type ResourceDeleted string

// Event returns "resource_deleted".
func (ResourceDeleted) Event() string { return EventResourceDeleted }

// ResourceUpdated (gateway, inbound): a resource the gateway has flows for changed (gateway view).
type ResourceUpdated struct {
	Resource
}

// Event returns "resource_updated".
func (ResourceUpdated) Event() string { return EventResourceUpdated }

// RelaysPresence (client and gateway, inbound): relays that went away and the peer's current relays.
type RelaysPresence struct {
	DisconnectedIDs []string `json:"disconnected_ids"`
	Connected       []Relay  `json:"connected"`
}

// Event returns "relays_presence".
func (RelaysPresence) Event() string { return EventRelaysPresence }

// CreateFlow (client, outbound) asks for access to a resource.
type CreateFlow struct {
	ResourceID          string   `json:"resource_id"`
	ConnectedGatewayIDs []string `json:"connected_gateway_ids"`
}

// Event returns "create_flow".
func (CreateFlow) Event() string { return EventCreateFlow }

// IceCredentials are one side's ICE ufrag ("username") and password.
type IceCredentials struct {
	Username string `json:"username"`
	Password string `json:"password"`
}

// FlowCreated (client, inbound) answers create_flow: which gateway, its key, the PSK and both ICE
// credentials.
type FlowCreated struct {
	ResourceID            string         `json:"resource_id"`
	GatewayID             string         `json:"gateway_id"`
	SiteID                string         `json:"site_id"`
	GatewayPublicKey      string         `json:"gateway_public_key"`
	GatewayIPv4           netip.Addr     `json:"gateway_ipv4"`
	GatewayIPv6           netip.Addr     `json:"gateway_ipv6"`
	PresharedKey          string         `json:"preshared_key"`
	ClientIceCredentials  IceCredentials `json:"client_ice_credentials"`
	GatewayIceCredentials IceCredentials `json:"gateway_ice_credentials"`
}

// Event returns "flow_created".
func (FlowCreated) Event() string { return EventFlowCreated }

// FailReason says why a flow could not be created.
type FailReason string

// Flow failure reasons.
const (
	FailOffline         FailReason = "offline"
	FailNotFound        FailReason = "not_found"
	FailForbidden       FailReason = "forbidden"
	FailVersionMismatch FailReason = "version_mismatch"
)

// FlowCreationFailed (client, inbound) answers create_flow with a reason.
type FlowCreationFailed struct {
	ResourceID string     `json:"resource_id"`
	Reason     FailReason `json:"reason"`
}

// Event returns "flow_creation_failed".
func (FlowCreationFailed) Event() string { return EventFlowCreationFailed }

// BroadcastGatewayIceCandidates (client, outbound "broadcast_ice_candidates") sends candidates to gateways.
type BroadcastGatewayIceCandidates struct {
	GatewayIDs []string `json:"gateway_ids"`
	Candidates []string `json:"candidates"`
}

// Event returns "broadcast_ice_candidates".
func (BroadcastGatewayIceCandidates) Event() string { return EventBroadcastIceCandidates }

// BroadcastInvalidatedGatewayIceCandidates (client, outbound "broadcast_invalidated_ice_candidates").
type BroadcastInvalidatedGatewayIceCandidates struct {
	GatewayIDs []string `json:"gateway_ids"`
	Candidates []string `json:"candidates"`
}

// Event returns "broadcast_invalidated_ice_candidates".
func (BroadcastInvalidatedGatewayIceCandidates) Event() string {
	return EventBroadcastInvalidatedIceCandidates
}

// GatewayIceCandidates (client, inbound "ice_candidates") are a gateway's candidates.
type GatewayIceCandidates struct {
	GatewayID  string   `json:"gateway_id"`
	Candidates []string `json:"candidates"`
}

// Event returns "ice_candidates".
func (GatewayIceCandidates) Event() string { return EventIceCandidates }

// InvalidatedGatewayIceCandidates (client, inbound "invalidate_ice_candidates").
type InvalidatedGatewayIceCandidates struct {
	GatewayID  string   `json:"gateway_id"`
	Candidates []string `json:"candidates"`
}

// Event returns "invalidate_ice_candidates".
func (InvalidatedGatewayIceCandidates) Event() string { return EventInvalidateIceCandidates }

// GatewayConfig is the gateway's masquerading configuration.
type GatewayConfig struct {
	IPv4MasqueradeEnabled bool `json:"ipv4_masquerade_enabled"`
	IPv6MasqueradeEnabled bool `json:"ipv6_masquerade_enabled"`
}

// GatewayInit is the gateway's init.
type GatewayInit struct {
	Interface   Interface     `json:"interface"`
	Config      GatewayConfig `json:"config"`
	Relays      []Relay       `json:"relays"`
	AccountSlug string        `json:"account_slug,omitempty"`
}

// Event returns "init".
func (GatewayInit) Event() string { return EventInit }

// FlowClient is the client as authorize_flow describes it to the gateway.
type FlowClient struct {
	ID           string     `json:"id"`
	PublicKey    string     `json:"public_key"`
	PresharedKey string     `json:"preshared_key"`
	IPv4         netip.Addr `json:"ipv4"`
	IPv6         netip.Addr `json:"ipv6"`
}

// AuthorizeFlow (gateway, inbound) authorizes a client for a resource; the gateway answers flow_authorized
// with the same ref.
type AuthorizeFlow struct {
	Ref                   string         `json:"ref"`
	Resource              Resource       `json:"resource"`
	Client                FlowClient     `json:"client"`
	ClientIceCredentials  IceCredentials `json:"client_ice_credentials"`
	GatewayIceCredentials IceCredentials `json:"gateway_ice_credentials"`
	// ExpiresAt is the authorization's expiry in unix seconds (0: none).
	ExpiresAt int64 `json:"expires_at,omitempty"`
}

// Event returns "authorize_flow".
func (AuthorizeFlow) Event() string { return EventAuthorizeFlow }

// FlowAuthorized (gateway, outbound) confirms an authorize_flow.
type FlowAuthorized struct {
	Ref string `json:"ref"`
}

// Event returns "flow_authorized".
func (FlowAuthorized) Event() string { return EventFlowAuthorized }

// RejectAccess (gateway, inbound) revokes a client's access to a resource.
type RejectAccess struct {
	ClientID   string `json:"client_id"`
	ResourceID string `json:"resource_id"`
}

// Event returns "reject_access".
func (RejectAccess) Event() string { return EventRejectAccess }

// ClientIceCandidates (gateway, inbound "ice_candidates") are a client's candidates.
type ClientIceCandidates struct {
	ClientID   string   `json:"client_id"`
	Candidates []string `json:"candidates"`
}

// Event returns "ice_candidates".
func (ClientIceCandidates) Event() string { return EventIceCandidates }

// InvalidatedClientIceCandidates (gateway, inbound "invalidate_ice_candidates").
type InvalidatedClientIceCandidates struct {
	ClientID   string   `json:"client_id"`
	Candidates []string `json:"candidates"`
}

// Event returns "invalidate_ice_candidates".
func (InvalidatedClientIceCandidates) Event() string { return EventInvalidateIceCandidates }

// BroadcastClientIceCandidates (gateway, outbound "broadcast_ice_candidates").
type BroadcastClientIceCandidates struct {
	ClientIDs  []string `json:"client_ids"`
	Candidates []string `json:"candidates"`
}

// Event returns "broadcast_ice_candidates".
func (BroadcastClientIceCandidates) Event() string { return EventBroadcastIceCandidates }

// BroadcastInvalidatedClientIceCandidates (gateway, outbound "broadcast_invalidated_ice_candidates").
type BroadcastInvalidatedClientIceCandidates struct {
	ClientIDs  []string `json:"client_ids"`
	Candidates []string `json:"candidates"`
}

// Event returns "broadcast_invalidated_ice_candidates".
func (BroadcastInvalidatedClientIceCandidates) Event() string {
	return EventBroadcastInvalidatedIceCandidates
}

// ResolveRequest is the DNS part of the old protocol: a name and the proxy IPs the client assigned to it.
type ResolveRequest struct {
	Name     string       `json:"name"`
	ProxyIPs []netip.Addr `json:"proxy_ips"`
}

// Peer is the WireGuard peer of the old protocol.
type Peer struct {
	PersistentKeepalive uint64     `json:"persistent_keepalive,omitempty"`
	PublicKey           string     `json:"public_key"`
	PresharedKey        string     `json:"preshared_key"`
	IPv4                netip.Addr `json:"ipv4"`
	IPv6                netip.Addr `json:"ipv6"`
}

// ClientPayload is the client's offer in the old protocol. Domain is sent as null when absent, as the
// portal did.
type ClientPayload struct {
	IceParameters IceCredentials  `json:"ice_parameters"`
	Domain        *ResolveRequest `json:"domain"`
}

// RequestClient is the client of an old-protocol request_connection.
type RequestClient struct {
	ID      string        `json:"id"`
	Payload ClientPayload `json:"payload"`
	Peer    Peer          `json:"peer"`
}

// RequestConnection (gateway, inbound; old non-idempotent protocol) asks the gateway to accept a connection;
// it answers connection_ready.
type RequestConnection struct {
	Resource  Resource      `json:"resource"`
	Client    RequestClient `json:"client"`
	Ref       string        `json:"ref"`
	ExpiresAt int64         `json:"expires_at,omitempty"`
}

// Event returns "request_connection".
func (RequestConnection) Event() string { return EventRequestConnection }

// AllowAccess (gateway, inbound; old protocol) authorizes a client that already has a connection.
type AllowAccess struct {
	ClientID   string          `json:"client_id"`
	Resource   Resource        `json:"resource"`
	ExpiresAt  int64           `json:"expires_at,omitempty"`
	Payload    *ResolveRequest `json:"payload,omitempty"`
	Ref        string          `json:"ref"`
	ClientIPv4 netip.Addr      `json:"client_ipv4"`
	ClientIPv6 netip.Addr      `json:"client_ipv6"`
}

// Event returns "allow_access".
func (AllowAccess) Event() string { return EventAllowAccess }

// ConnectionAccepted is the gateway's answer in the old protocol.
type ConnectionAccepted struct {
	IceParameters  IceCredentials  `json:"ice_parameters"`
	DomainResponse *ResolveRequest `json:"domain_response"`
}

// GatewayResponse is the externally tagged answer of connection_ready.
type GatewayResponse struct {
	ConnectionAccepted *ConnectionAccepted `json:"connection_accepted,omitempty"`
}

// ConnectionReady (gateway, outbound; old protocol) answers request_connection.
type ConnectionReady struct {
	Ref            string          `json:"ref"`
	GatewayPayload GatewayResponse `json:"gateway_payload"`
}

// Event returns "connection_ready".
func (ConnectionReady) Event() string { return EventConnectionReady }

// RelayJoin is the relay's phx_join payload on topic "relay".
type RelayJoin struct {
	StampSecret string `json:"stamp_secret"`
}

// RelayInit is the relay's (empty) init.
type RelayInit struct{}

// Event returns "init".
func (RelayInit) Event() string { return EventInit }
