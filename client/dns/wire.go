package dns

import (
	"encoding/binary"
	"errors"
)

// DNS wire constants used by the core.
const (
	headerLen = 12

	typeA     = 1
	typePTR   = 12
	typeAAAA  = 28
	typeOPT   = 41
	typeSVCB  = 64
	typeHTTPS = 65

	classIN = 1

	rcodeSuccess  = 0
	rcodeFormErr  = 1
	rcodeServFail = 2
	rcodeNXDomain = 3
	rcodeNotImp   = 4

	// MaxUDPPayload is the largest DNS payload the client sends over UDP (Firezone's 1212: a 1280-byte TUN
	// MTU minus IPv6 and UDP headers minus the tunnel overhead).
	MaxUDPPayload = 1212
	// minUDPPayload is the classic DNS UDP limit, used when a query has no EDNS0 OPT record.
	minUDPPayload = 512
)

var (
	errShort     = errors.New("message too short")
	errMalformed = errors.New("malformed message")
)

// question is what the core needs from a query: the lower-cased name, type, class and EDNS0 data.
type question struct {
	name     []byte // lower case, dotted, no trailing dot ("" for the root); aliases the parse buffer
	matchOK  bool   // false when a label holds a '.' or a byte that cannot be part of a pattern match
	qtype    uint16
	qclass   uint16
	end      int    // offset just past the question section
	hasOPT   bool   // the query carried an EDNS0 OPT record
	udpSize  uint16 // EDNS0 requester's UDP payload size (0 when !hasOPT)
	opcode   uint8
	rd       bool
	qdcount  uint16
	msgID    uint16
	parseErr bool // header fine, body malformed: answer FORMERR
}

// parseHeader reads the fixed header. ok is false when the message cannot be answered at all.
func parseHeader(msg []byte) (id uint16, flags uint16, ok bool) {
	if len(msg) < headerLen {
		return 0, 0, false
	}
	return binary.BigEndian.Uint16(msg[0:]), binary.BigEndian.Uint16(msg[2:]), true
}

// parseQuery parses a query's question and EDNS0 record. nameBuf is reused for the lower-cased name.
// It returns errShort when the header is incomplete (no reply possible).
func parseQuery(msg []byte, nameBuf []byte) (question, error) {
	var q question
	id, flags, ok := parseHeader(msg)
	if !ok {
		return q, errShort
	}
	q.msgID = id
	q.opcode = uint8(flags>>11) & 0xF
	q.rd = flags&(1<<8) != 0
	q.qdcount = binary.BigEndian.Uint16(msg[4:])
	if q.qdcount != 1 {
		q.parseErr = true
		q.end = headerLen
		return q, nil
	}
	off, name, matchOK, err := readQName(msg, headerLen, nameBuf[:0])
	if err != nil || off+4 > len(msg) {
		q.parseErr = true
		q.end = headerLen
		return q, nil
	}
	q.name, q.matchOK = name, matchOK
	q.qtype = binary.BigEndian.Uint16(msg[off:])
	q.qclass = binary.BigEndian.Uint16(msg[off+2:])
	off += 4
	q.end = off
	// Skip answer and authority, look for OPT in additional.
	an := int(binary.BigEndian.Uint16(msg[6:]))
	ns := int(binary.BigEndian.Uint16(msg[8:]))
	ar := int(binary.BigEndian.Uint16(msg[10:]))
	for i := 0; i < an+ns+ar; i++ {
		var rtype, rclass uint16
		var rdlen int
		off, rtype, rclass, rdlen, err = readRRHeader(msg, off)
		if err != nil || off+rdlen > len(msg) {
			q.parseErr = true
			return q, nil
		}
		if i >= an+ns && rtype == typeOPT && !q.hasOPT {
			q.hasOPT = true
			q.udpSize = rclass
		}
		off += rdlen
	}
	return q, nil
}

// readQName reads an uncompressed name at off, appending its lower-cased dotted form to dst.
func readQName(msg []byte, off int, dst []byte) (int, []byte, bool, error) {
	matchOK := true
	total := 0
	for {
		if off >= len(msg) {
			return 0, nil, false, errMalformed
		}
		l := int(msg[off])
		off++
		if l == 0 {
			return off, dst, matchOK, nil
		}
		if l > 63 { // compression pointers (or reserved label types) have no place in a query's question
			return 0, nil, false, errMalformed
		}
		if off+l > len(msg) {
			return 0, nil, false, errMalformed
		}
		total += l + 1
		if total > 254 {
			return 0, nil, false, errMalformed
		}
		if len(dst) > 0 {
			dst = append(dst, '.')
		}
		for _, c := range msg[off : off+l] {
			switch {
			case c >= 'A' && c <= 'Z':
				c += 'a' - 'A'
			case c == '.' || c == '*' || c == '?' || c < 0x21 || c > 0x7e:
				matchOK = false
			}
			dst = append(dst, c)
		}
		off += l
	}
}

// skipName skips a possibly compressed name at off.
func skipName(msg []byte, off int) (int, error) {
	for {
		if off >= len(msg) {
			return 0, errMalformed
		}
		l := int(msg[off])
		switch {
		case l == 0:
			return off + 1, nil
		case l&0xC0 == 0xC0:
			if off+2 > len(msg) {
				return 0, errMalformed
			}
			return off + 2, nil
		case l > 63:
			return 0, errMalformed
		}
		off += 1 + l
	}
}

// readRRHeader reads a resource record header, returning the offset of its RDATA.
func readRRHeader(msg []byte, off int) (next int, rtype, rclass uint16, rdlen int, err error) {
	off, err = skipName(msg, off)
	if err != nil || off+10 > len(msg) {
		return 0, 0, 0, 0, errMalformed
	}
	rtype = binary.BigEndian.Uint16(msg[off:])
	rclass = binary.BigEndian.Uint16(msg[off+2:])
	rdlen = int(binary.BigEndian.Uint16(msg[off+8:]))
	return off + 10, rtype, rclass, rdlen, nil
}

// udpLimit is the largest UDP reply allowed for a query: min(MaxUDPPayload, max(512, EDNS0 size)).
func (q *question) udpLimit() int {
	if !q.hasOPT || q.udpSize < minUDPPayload {
		return minUDPPayload
	}
	return min(int(q.udpSize), MaxUDPPayload)
}

// appendHeader appends a reply header for query q.
func appendHeader(dst []byte, q *question, rcode int, qd, an, ar uint16) []byte {
	flags := uint16(1)<<15 | uint16(q.opcode&0xF)<<11 | 1<<7 | uint16(rcode&0xF)
	if q.rd {
		flags |= 1 << 8
	}
	dst = binary.BigEndian.AppendUint16(dst, q.msgID)
	dst = binary.BigEndian.AppendUint16(dst, flags)
	dst = binary.BigEndian.AppendUint16(dst, qd)
	dst = binary.BigEndian.AppendUint16(dst, an)
	dst = binary.BigEndian.AppendUint16(dst, 0)
	return binary.BigEndian.AppendUint16(dst, ar)
}

// appendOPT appends an EDNS0 OPT record advertising MaxUDPPayload.
func appendOPT(dst []byte) []byte {
	return append(dst, 0, 0, typeOPT, byte(MaxUDPPayload>>8), byte(MaxUDPPayload&0xFF), 0, 0, 0, 0, 0, 0)
}

// buildError builds a reply with rcode for query msg (question copied when it parsed).
func buildError(dst []byte, msg []byte, q *question, rcode int) []byte {
	var qd, ar uint16
	if !q.parseErr {
		qd = 1
	}
	if q.hasOPT && !q.parseErr {
		ar = 1
	}
	dst = appendHeader(dst, q, rcode, qd, 0, ar)
	if qd == 1 {
		dst = append(dst, msg[headerLen:q.end]...)
	}
	if ar == 1 {
		dst = appendOPT(dst)
	}
	return dst
}

// appendAddrRR appends an A or AAAA record whose owner is the question name (pointer to offset 12).
func appendAddrRR(dst []byte, rtype uint16, ttl uint32, ip []byte) []byte {
	dst = append(dst, 0xC0, headerLen)
	dst = binary.BigEndian.AppendUint16(dst, rtype)
	dst = binary.BigEndian.AppendUint16(dst, classIN)
	dst = binary.BigEndian.AppendUint32(dst, ttl)
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(ip)))
	return append(dst, ip...)
}

// appendPTR appends a PTR record (owner: the question) pointing at name (dotted, no trailing dot).
func appendPTR(dst []byte, ttl uint32, name string) []byte {
	dst = append(dst, 0xC0, headerLen)
	dst = binary.BigEndian.AppendUint16(dst, typePTR)
	dst = binary.BigEndian.AppendUint16(dst, classIN)
	dst = binary.BigEndian.AppendUint32(dst, ttl)
	lenAt := len(dst)
	dst = append(dst, 0, 0)
	start := len(dst)
	dst = appendWireName(dst, name)
	binary.BigEndian.PutUint16(dst[lenAt:], uint16(len(dst)-start))
	return dst
}

// appendWireName appends a dotted name in wire format.
func appendWireName(dst []byte, name string) []byte {
	for len(name) > 0 {
		i := 0
		for i < len(name) && name[i] != '.' {
			i++
		}
		dst = append(dst, byte(i))
		dst = append(dst, name[:i]...)
		if i == len(name) {
			break
		}
		name = name[i+1:]
	}
	return append(dst, 0)
}

// truncateUDP makes an upstream reply fit into limit bytes: if it is larger, it keeps the header and the
// question, sets TC and drops the answer and authority sections (RFC 1035 §4.2.1, as Firezone does) so that
// the application retries over TCP. With keepOPT (the query carried an OPT record) the reply's OPT record
// is kept as well (RFC 6891 §7), holding the extended RCODE, EDNS version and flags; without its options when
// they would not fit. It returns ok=false when resp is too malformed to truncate.
func truncateUDP(dst, resp []byte, limit int, keepOPT bool) ([]byte, bool) {
	if len(resp) <= limit {
		return append(dst, resp...), true
	}
	if len(resp) < headerLen || binary.BigEndian.Uint16(resp[4:]) != 1 {
		return dst, false
	}
	off, err := skipName(resp, headerLen)
	// A compressed question name cannot be copied alone; treat it as malformed.
	if err != nil || off+4 > len(resp) || hasPointer(resp[headerLen:off]) {
		return dst, false
	}
	off += 4
	if off > limit {
		return dst, false
	}
	var opt []byte
	if keepOPT {
		opt = findOPT(resp, off)
		if len(opt) > optFixedLen && (off+len(opt) > limit || !validOptions(opt[optFixedLen:])) {
			opt = opt[:optFixedLen] // the fixed part alone: its options would not fit, or do not parse
		}
		if off+len(opt) > limit {
			opt = nil
		}
	}
	start := len(dst)
	dst = append(dst, resp[:off]...)
	dst[start+2] |= 0x02 // TC
	binary.BigEndian.PutUint16(dst[start+4:], 1)
	binary.BigEndian.PutUint16(dst[start+6:], 0)
	binary.BigEndian.PutUint16(dst[start+8:], 0)
	binary.BigEndian.PutUint16(dst[start+10:], 0)
	if opt != nil {
		binary.BigEndian.PutUint16(dst[start+10:], 1)
		optAt := len(dst)
		dst = append(dst, opt...)
		if len(opt) == optFixedLen {
			binary.BigEndian.PutUint16(dst[optAt+9:], 0) // RDLENGTH: no options
		}
	}
	return dst, true
}

// optFixedLen is the size of an OPT record without options: root name, type, class (UDP size), TTL
// (extended RCODE, version, flags) and RDLENGTH.
const optFixedLen = 11

// findOPT returns the OPT record (RFC 6891 §6.1.2: owner the root name) in the additional section of msg,
// whose records start at off, or nil when it has none or the sections do not parse.
func findOPT(msg []byte, off int) []byte {
	an := int(binary.BigEndian.Uint16(msg[6:]))
	ns := int(binary.BigEndian.Uint16(msg[8:]))
	ar := int(binary.BigEndian.Uint16(msg[10:]))
	for i := 0; i < an+ns+ar; i++ {
		start := off
		next, rtype, _, rdlen, err := readRRHeader(msg, off)
		if err != nil || next+rdlen > len(msg) {
			return nil
		}
		off = next + rdlen
		if i >= an+ns && rtype == typeOPT && msg[start] == 0 && next-start == optFixedLen {
			return msg[start:off]
		}
	}
	return nil
}

// validOptions reports whether rdata is a well-formed sequence of EDNS0 options (code, length, data).
func validOptions(rdata []byte) bool {
	for len(rdata) > 0 {
		if len(rdata) < 4 {
			return false
		}
		n := 4 + int(binary.BigEndian.Uint16(rdata[2:]))
		if n > len(rdata) {
			return false
		}
		rdata = rdata[n:]
	}
	return true
}

// hasPointer reports whether an encoded name (as delimited by skipName) ends in a compression pointer.
func hasPointer(name []byte) bool {
	for i := 0; i < len(name); {
		l := int(name[i])
		if l&0xC0 == 0xC0 {
			return true
		}
		if l == 0 {
			return false
		}
		i += 1 + l
	}
	return false
}

// AnswerMatchesQuery reports whether answer is a response to query as RFC 5452 §9.1 asks a resolver to check
// besides the id and the upstream's address and port: the answer carries exactly one question, the query's,
// with the same name (compared case-insensitively, byte for byte: a question name is never compressed), type
// and class. query must be a query with one question (as every query the core forwards is); ids are not
// compared (drivers rewrite them). It never panics on any bytes.
func AnswerMatchesQuery(query, answer []byte) bool {
	if len(query) < headerLen || len(answer) < headerLen || binary.BigEndian.Uint16(answer[4:]) != 1 ||
		binary.BigEndian.Uint16(query[4:]) != 1 || answer[2]&0x80 == 0 {
		return false
	}
	end, ok := questionEnd(query)
	if !ok || len(answer) < end {
		return false
	}
	// The name's length bytes are at most 63, below 'A', so folding letters keeps the label structure exact.
	for i := headerLen; i < end-4; i++ {
		a, b := query[i], answer[i]
		if a != b && lower(a) != lower(b) {
			return false
		}
	}
	return string(query[end-4:end]) == string(answer[end-4:end])
}

// questionEnd returns the offset just past the first question (an uncompressed name, type and class).
func questionEnd(msg []byte) (int, bool) {
	off := headerLen
	for n := 0; n < 128; n++ { // a name has at most 127 labels
		if off >= len(msg) {
			return 0, false
		}
		l := int(msg[off])
		off++
		if l == 0 {
			if off+4 > len(msg) {
				return 0, false
			}
			return off + 4, true
		}
		if l > 63 {
			return 0, false
		}
		off += l
	}
	return 0, false
}

func lower(c byte) byte {
	if c >= 'A' && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}
