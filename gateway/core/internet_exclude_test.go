package core_test

import (
	"net/netip"
	"testing"
	"time"

	"github.com/snowgate/snowgate/internal/tunnel"
)

// TestInternetDoesNotLiftExcludedCIDRFilters (a bug found here, fixed in gateway/filter): gateway/filter.Table gave a CIDR resource
// the union of the filters of every CIDR or Internet resource whose prefix contains it, and the Internet
// resource's 0.0.0.0/0 contains every prefix, even one inside Options.InternetExcludes, where the
// Internet resource covers nothing. So a client holding the Internet resource (which excludes the
// gateway's LAN) and a LAN CIDR resource restricted to tcp/80 reaches every port of that LAN resource: the
// Internet resource's permit-all lifts the CIDR resource's filters exactly where the Internet resource
// does not apply. Expected: inside the excludes, only the covering CIDR resources' filters count.
func TestInternetDoesNotLiftExcludedCIDRFilters(t *testing.T) {
	c := mkClient(1)
	h := authorized(t, c, cidrRes(1, "169.254.7.0/24", tcpF(80, 80))) // link-local: in DefaultInternetExcludes
	lan := netip.MustParseAddrPort("169.254.7.1:53")
	if v, _ := h.net(udpPkt(netip.AddrPortFrom(c.v4, 5000), lan, nil)); v != tunnel.Stop {
		t.Fatal("UDP to a tcp/80-only resource passed")
	}
	h.msg(c.authorize("r2", internetRes(2), time.Time{}))
	if v, _ := h.net(udpPkt(netip.AddrPortFrom(c.v4, 5000), lan, nil)); v != tunnel.Stop {
		t.Fatal("with the Internet resource (which excludes 169.254.0.0/16), " +
			"UDP to a tcp/80-only CIDR resource inside the excluded range passes")
	}
}
