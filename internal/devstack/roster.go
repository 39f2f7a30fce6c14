package devstack

import (
	"errors"
	"fmt"
	"slices"

	"github.com/snowgate/snowgate/portalmock"
)

// MaxClients bounds Options.Clients with the embedded configuration (which gets the clients it lacks).
const MaxClients = 32

// roster is who joins the portal: the tokens and names the stack's relays, gateway and clients use.
type roster struct {
	file        *portalmock.File
	relayToken  string
	gatewayName string
	gatewayTok  string
	clients     []portalmock.ClientConfig
}

// newRoster picks the devices of the stack from the portal configuration: the first relay token, the
// first gateway and the first n clients of the first account. The embedded development configuration
// (f == nil) has two clients; it is given the clients it lacks (client-3, dev-client-token-3, …), who are
// allowed what its "*" policies allow. A configuration file must name enough clients itself.
func newRoster(f *portalmock.File, relays, n int) (*roster, error) {
	embedded := f == nil
	if embedded {
		f = portalmock.DefaultFile()
	}
	if n < 0 || n > MaxClients {
		return nil, fmt.Errorf("devstack: %d clients: want 0..%d", n, MaxClients)
	}
	if len(f.Accounts) == 0 {
		return nil, errors.New("devstack: the portal configuration has no account")
	}
	acc := &f.Accounts[0]
	r := &roster{file: f}
	if relays > 0 {
		if len(f.Relays) == 0 {
			return nil, errors.New("devstack: the portal configuration has no relay token")
		}
		r.relayToken = f.Relays[0].Token
	}
	if len(acc.Gateways) == 0 {
		return nil, fmt.Errorf("devstack: account %q of the portal configuration has no gateway", acc.Slug)
	}
	r.gatewayName, r.gatewayTok = acc.Gateways[0].Name, acc.Gateways[0].Token
	if r.gatewayName == "" {
		r.gatewayName = "gateway-1"
	}
	if len(acc.Clients) < n {
		if !embedded {
			return nil, fmt.Errorf("devstack: %d clients wanted, but account %q of the portal configuration names %d",
				n, acc.Slug, len(acc.Clients))
		}
		for i := len(acc.Clients); i < n; i++ {
			acc.Clients = append(acc.Clients, portalmock.ClientConfig{
				ID:    fmt.Sprintf("c11e0000-0000-4000-8000-%012d", i+1),
				Name:  fmt.Sprintf("client-%d", i+1),
				Token: fmt.Sprintf("dev-client-token-%d", i+1),
			})
		}
	}
	r.clients = slices.Clone(acc.Clients[:n])
	for i := range r.clients {
		if r.clients[i].Name == "" {
			r.clients[i].Name = fmt.Sprintf("client-%d", i+1)
		}
	}
	return r, nil
}
