package tunnel

import (
	"cmp"
	"slices"

	"github.com/snowgate/snowgate/internal/portalapi"
	"github.com/snowgate/snowgate/node"
)

// RelayRealm is the TURN realm of the portal's relay credentials (Firezone's "firezone").
const RelayRealm = "firezone"

// MergeRelays turns the portal's relay objects, one per address family under the same id, into one
// node.Relay per id with both addresses (Firezone's connlib does the same). Objects of a type other than
// "turn", without a valid address, or whose id has two addresses of one family (the first wins) are
// skipped; the credentials of the first object of an id are used. The result is sorted by id.
func MergeRelays(rs []portalapi.Relay) []node.Relay {
	byID := make(map[string]*node.Relay)
	var order []string
	for _, r := range rs {
		if r.Type != "" && r.Type != portalapi.RelayTypeTURN {
			continue
		}
		if r.ID == "" || !r.Addr.IsValid() || r.Addr.Port() == 0 {
			continue
		}
		nr := byID[r.ID]
		if nr == nil {
			nr = &node.Relay{ID: r.ID, Username: r.Username, Password: r.Password, Realm: RelayRealm}
			byID[r.ID] = nr
			order = append(order, r.ID)
		}
		addr := r.Addr
		addr = netipUnmap(addr)
		if addr.Addr().Is4() {
			if !nr.Addr4.IsValid() {
				nr.Addr4 = addr
			}
		} else if !nr.Addr6.IsValid() {
			nr.Addr6 = addr
		}
	}
	out := make([]node.Relay, 0, len(order))
	for _, id := range order {
		out = append(out, *byID[id])
	}
	slices.SortFunc(out, func(a, b node.Relay) int { return cmp.Compare(a.ID, b.ID) })
	return out
}
