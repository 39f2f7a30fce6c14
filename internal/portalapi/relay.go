package portalapi

import "net/netip"

// RelayTypeTURN is the only relay type.
const RelayTypeTURN = "turn"

// Relay is one relay address as the portal sends it to a client or gateway:
// {"id","type":"turn","addr":"ip:port","username","password","expires_at"}. A dual-stack relay is sent as
// two objects with the same id, one per address family; receivers merge them.
type Relay struct {
	ID       string         `json:"id"`
	Type     string         `json:"type"`
	Addr     netip.AddrPort `json:"addr"`
	Username string         `json:"username"`
	Password string         `json:"password"`
	// ExpiresAt is the credentials' expiry in unix seconds (the number in Username).
	ExpiresAt int64 `json:"expires_at"`
}
