package portalapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"

	"github.com/snowgate/snowgate/internal/dnspattern"
)

// ResourceType is the "type" tag of a resource.
type ResourceType string

// Resource types the portal sends. Any other value is an unknown type that receivers ignore.
const (
	ResourceDNS      ResourceType = "dns"
	ResourceCIDR     ResourceType = "cidr"
	ResourceInternet ResourceType = "internet"
)

// IPStack says which address families a DNS resource resolves to.
type IPStack string

// IP stacks of a DNS resource; empty means dual.
const (
	IPStackDual     IPStack = "dual"
	IPStackIPv4Only IPStack = "ipv4_only"
	IPStackIPv6Only IPStack = "ipv6_only"
)

// Site is a group of gateways that serve a resource ("gateway_groups" in older portals).
type Site struct {
	ID   string `json:"id"`
	Name string `json:"name"`
}

// Resource is a resource as the portal describes it: one flat struct for the dns, cidr and internet variants
// (the "type" field says which). Fields a variant does not use are empty.
type Resource struct {
	Type ResourceType `json:"type"`
	ID   string       `json:"id"`
	Name string       `json:"name,omitempty"`
	// Address is a DNS pattern (dns: "host", "*.x", "**.x", "?.x") or a CIDR (cidr); empty for internet.
	Address            string  `json:"address,omitempty"`
	AddressDescription string  `json:"address_description,omitempty"`
	IPStack            IPStack `json:"ip_stack,omitempty"`
	// Sites are sent to clients; the gateway's view of a resource has none.
	Sites   []Site   `json:"sites,omitempty"`
	Filters []Filter `json:"filters,omitempty"`
}

// Known reports whether r has a type this package understands.
func (r Resource) Known() bool {
	switch r.Type {
	case ResourceDNS, ResourceCIDR, ResourceInternet:
		return true
	}
	return false
}

// ErrInvalidResource wraps every validation failure of a resource.
var ErrInvalidResource = errors.New("portalapi: invalid resource")

// Validate checks that r is a well-formed known resource: an id, a valid address for its type, valid filters.
func (r Resource) Validate() error {
	if r.ID == "" {
		return fmt.Errorf("%w: empty id", ErrInvalidResource)
	}
	switch r.Type {
	case ResourceDNS:
		if _, err := dnspattern.Parse(r.Address); err != nil {
			return fmt.Errorf("%w %s: %w", ErrInvalidResource, r.ID, err)
		}
		switch r.IPStack {
		case "", IPStackDual, IPStackIPv4Only, IPStackIPv6Only:
		default:
			return fmt.Errorf("%w %s: ip_stack %q", ErrInvalidResource, r.ID, r.IPStack)
		}
	case ResourceCIDR:
		if _, err := r.Prefix(); err != nil {
			return fmt.Errorf("%w %s: %w", ErrInvalidResource, r.ID, err)
		}
	case ResourceInternet:
	default:
		return fmt.Errorf("%w %s: unknown type %q", ErrInvalidResource, r.ID, r.Type)
	}
	for _, f := range r.Filters {
		if err := f.Validate(); err != nil {
			return fmt.Errorf("%w %s: %w", ErrInvalidResource, r.ID, err)
		}
	}
	return nil
}

// Prefix parses the address of a cidr resource. A bare address is taken as a host prefix (/32 or /128).
func (r Resource) Prefix() (netip.Prefix, error) {
	if p, err := netip.ParsePrefix(r.Address); err == nil {
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(r.Address)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("cidr address %q: %w", r.Address, err)
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// GatewayView returns r as a gateway sees it: without sites.
func (r Resource) GatewayView() Resource {
	r.Sites = nil
	return r
}

// Protocol is the protocol of a filter.
type Protocol string

// Filter protocols.
const (
	ProtocolTCP  Protocol = "tcp"
	ProtocolUDP  Protocol = "udp"
	ProtocolICMP Protocol = "icmp"
)

// Filter allows one protocol (and, for tcp/udp, a port range) to a resource. An empty filter list allows
// everything. JSON: {"protocol":"tcp"|"udp","port_range_start","port_range_end"} (defaults 0 and 65535) or
// {"protocol":"icmp"}.
type Filter struct {
	Protocol       Protocol
	PortRangeStart uint16
	PortRangeEnd   uint16
}

type filterJSON struct {
	Protocol       Protocol `json:"protocol"`
	PortRangeStart *uint16  `json:"port_range_start,omitempty"`
	PortRangeEnd   *uint16  `json:"port_range_end,omitempty"`
}

// UnmarshalJSON applies the defaults 0 and 65535 to missing port bounds of tcp/udp filters.
func (f *Filter) UnmarshalJSON(b []byte) error {
	var j filterJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return fmt.Errorf("portalapi: filter: %w", err)
	}
	*f = Filter{Protocol: j.Protocol}
	if j.Protocol == ProtocolTCP || j.Protocol == ProtocolUDP {
		f.PortRangeEnd = 65535
		if j.PortRangeStart != nil {
			f.PortRangeStart = *j.PortRangeStart
		}
		if j.PortRangeEnd != nil {
			f.PortRangeEnd = *j.PortRangeEnd
		}
	}
	return nil
}

// MarshalJSON writes the port range for tcp/udp only.
func (f Filter) MarshalJSON() ([]byte, error) {
	j := filterJSON{Protocol: f.Protocol}
	if f.Protocol == ProtocolTCP || f.Protocol == ProtocolUDP {
		j.PortRangeStart, j.PortRangeEnd = &f.PortRangeStart, &f.PortRangeEnd
	}
	return json.Marshal(j)
}

// Validate checks the protocol and that start <= end.
func (f Filter) Validate() error {
	switch f.Protocol {
	case ProtocolICMP:
		return nil
	case ProtocolTCP, ProtocolUDP:
		if f.PortRangeStart > f.PortRangeEnd {
			return fmt.Errorf("filter %s: port range %d-%d is empty", f.Protocol, f.PortRangeStart, f.PortRangeEnd)
		}
		return nil
	}
	return fmt.Errorf("filter: unknown protocol %q", f.Protocol)
}
