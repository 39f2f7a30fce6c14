package relay

import (
	"net"
	"net/netip"
	"time"

	"github.com/pion/stun/v4"
)

// interceptor returns the listener's pre-pion hook for two replies pion
// gets wrong:
//
//   - a ChannelBind request for a peer the policy refuses gets 403 Forbidden
//     (RFC 8656 §12); pion maps every PermissionHandler refusal of a
//     ChannelBind to 401 Unauthorized, which clients take for a credential
//     problem;
//   - an Allocate request whose REQUESTED-ADDRESS-FAMILY this relay does not
//     serve gets 440 Address Family not Supported (RFC 8656 §7.2); pion
//     would try the allocation and answer 508.
//
// The request must carry valid MESSAGE-INTEGRITY for our credentials;
// otherwise it goes on to pion, which sends the 401/438 challenge as usual.
// Every other datagram costs a few byte compares.
func (s *Server) interceptor(lc *listenerConn) func(b []byte, from net.Addr) bool {
	return func(b []byte, from net.Addr) bool {
		if len(b) < 20 || b[0] != 0x00 || (b[1] != 0x09 && b[1] != 0x03) { // ChannelBind or Allocate request
			return false
		}
		m := &stun.Message{Raw: append([]byte(nil), b...)}
		if err := m.Decode(); err != nil {
			return false
		}
		var code stun.ErrorCode
		var peerAddr netip.Addr
		switch m.Type.Method {
		case stun.MethodChannelBind:
			var peer stun.XORMappedAddress
			if err := peer.GetFromAs(m, stun.AttrXORPeerAddress); err != nil {
				return false
			}
			addr, ok := netip.AddrFromSlice(peer.IP)
			if !ok || s.policy.Allowed(addr) {
				return false
			}
			code, peerAddr = stun.CodeForbidden, addr
		case stun.MethodAllocate:
			fam, err := m.Get(stun.AttrRequestedAddressFamily)
			if err != nil || len(fam) != 4 {
				return false // absent: the listener's family, always served; malformed: pion's 400
			}
			if (fam[0] == 0x01 && s.cfg.PublicIP4.IsValid()) || (fam[0] == 0x02 && s.cfg.PublicIP6.IsValid()) {
				return false
			}
			code = stun.CodeAddrFamilyNotSupported
		default:
			return false
		}
		var user stun.Username
		var realm stun.Realm
		if user.GetFrom(m) != nil || realm.GetFrom(m) != nil {
			return false
		}
		_, key, err := s.auth.Key(user.String(), realm.String(), time.Now())
		if err != nil {
			return false
		}
		integrity := stun.MessageIntegrity(key)
		if integrity.Check(m) != nil {
			return false
		}
		if code == stun.CodeForbidden {
			s.stats.refusedPeers.Add(1)
			s.log.Debug("peer refused by policy", "client", addrString(from), "peer", peerAddr.String(), "method", "ChannelBind")
		}
		resp, err := stun.Build(&stun.Message{TransactionID: m.TransactionID},
			stun.NewType(m.Type.Method, stun.ClassErrorResponse),
			&stun.ErrorCodeAttribute{Code: code}, integrity)
		if to, ok := udpAddrPort(from); err == nil && ok {
			_ = lc.sock.sendTo(resp.Raw, to)
		}
		return true
	}
}
