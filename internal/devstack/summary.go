package devstack

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/snowgate/snowgate/portalmock"
)

// Row is one line of the stack's summary table.
type Row struct {
	Component, Address, State string
}

// Rows describe the running stack: each component, where it listens and its state.
func (st *Stack) Rows(ctx context.Context) []Row {
	ps := st.Portal.State()
	online := func(peers []portalmock.PeerState) int {
		n := 0
		for _, p := range peers {
			if p.Online {
				n++
			}
		}
		return n
	}
	rows := []Row{{"portal", st.Portal.URL(), fmt.Sprintf("up: %d/%d clients, %d/%d gateways, %d relays online",
		online(ps.Clients), len(ps.Clients), online(ps.Gateways), len(ps.Gateways), len(ps.Relays))}}
	if u := st.Portal.AdminURL(); u != "" {
		rows = append(rows, Row{"portal admin API", u, "up"})
		rows = append(rows, Row{"portal live page", st.PageURL(), "open it in a browser"})
	}
	if st.Metrics != nil {
		state := "not ready"
		if st.Joined() {
			state = "ready"
		}
		rows = append(rows, Row{"health, metrics", "http://" + st.Metrics.String() + "/metrics", state})
	}
	for i, r := range st.Relays {
		state := "joining the portal"
		if r.Ready() {
			state = "joined"
		}
		rows = append(rows, Row{fmt.Sprintf("relay-%d", i+1), "turn:" + r.Addr().String() + " (udp)", state})
	}
	if st.Gateway != nil {
		state := st.Gateway.PortalState().String()
		if st.GatewayRelayed {
			state += ", relay-only"
		}
		rows = append(rows, Row{st.GatewayName + " (userspace)", fmt.Sprintf("udp :%d", st.Gateway.Node.Port()), state})
	}
	for _, c := range st.Clients {
		state := c.Daemon.PortalState().String()
		if s, err := c.Status(ctx); err == nil {
			state = fmt.Sprintf("%s, %d resources", s.Portal, len(s.Resources))
			for _, conn := range s.Connections {
				if conn.State == "established" {
					state += ", connected (" + pathOf(conn.Path, conn.RelayID, st.relayNames()) + ")"
				}
			}
		}
		if c.Relayed {
			state += ", relay-only"
		}
		rows = append(rows, Row{c.Name + " (userspace)", "socks5://" + c.SOCKS.String(), state})
	}
	rows = append(rows, Row{"demo site", fmt.Sprintf("http://%s/, http://%s/", DemoName, DemoAddr4),
		"served from " + st.Demo.String() + " behind " + st.GatewayName})
	return rows
}

// PageURL is the address of the portal's live page (its admin address with the admin token), "" without
// the admin API. A configuration file's token is a secret: the URL then says $ADMIN_TOKEN instead.
func (st *Stack) PageURL() string {
	u := st.Portal.AdminURL()
	switch {
	case u == "":
		return ""
	case st.AdminToken == portalmock.DefaultAdminToken:
		return st.Portal.PageURL()
	}
	return u + "/?token=$ADMIN_TOKEN"
}

// Commands are the commands to try against the running stack.
func (st *Stack) Commands() []string {
	var cmds []string
	if len(st.Clients) > 0 {
		c := st.Clients[0]
		cmds = append(cmds,
			fmt.Sprintf("curl --socks5-hostname %s http://%s/", c.SOCKS, DemoName),
			fmt.Sprintf("curl --socks5-hostname %s http://%s/", c.SOCKS, DemoAddr4),
			"go run ./cmd/snowgate-client status --socket "+c.StatusSocket)
	}
	cmds = append(cmds, "go run ./cmd/snowgate-gateway status --socket "+st.GatewaySocket)
	if u := st.Portal.AdminURL(); u != "" {
		tok := "$ADMIN_TOKEN" // a configuration file's token is a secret: not printed
		if st.AdminToken == portalmock.DefaultAdminToken {
			tok = st.AdminToken
		}
		cmds = append(cmds, fmt.Sprintf("curl -H 'Authorization: Bearer %s' %s/v1/state", tok, u))
	}
	return cmds
}

// WriteSummary writes the listen addresses that moved, the table of Rows and the Commands.
func (st *Stack) WriteSummary(ctx context.Context, w io.Writer) error {
	var b strings.Builder
	for _, m := range st.Moved {
		fmt.Fprintf(&b, "note: %s is busy; %s listens on %s instead\n", m.Wanted, m.What, m.Got)
	}
	if len(st.Moved) > 0 {
		b.WriteString("\n")
	}
	tw := tabwriter.NewWriter(&b, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "COMPONENT\tADDRESS\tSTATE")
	for _, r := range st.Rows(ctx) {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", r.Component, r.Address, r.State)
	}
	_ = tw.Flush()
	b.WriteString("\nTry:\n")
	for _, c := range st.Commands() {
		b.WriteString("  " + c + "\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// relayNames maps the portal's relay ids to the relays' names.
func (st *Stack) relayNames() map[string]string {
	names := map[string]string{}
	for _, r := range st.Portal.State().Relays {
		names[r.ID] = r.Name
	}
	return names
}

// pathOf describes a connection's path: "direct (host)" or "relayed via relay-1".
func pathOf(path, relayID string, names map[string]string) string {
	if path != "relay" {
		return "direct, " + path
	}
	name := names[relayID]
	if name == "" {
		name = relayID
	}
	return "relayed via " + name
}
