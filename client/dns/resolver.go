package dns

import (
	"container/heap"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/snowgate/snowgate/internal/dnspattern"
	"github.com/snowgate/snowgate/internal/fifo"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"
)

// ProxyIPTTL is the TTL of every locally answered record (Firezone: 1 s, so that applications re-resolve
// quickly when resources change).
const ProxyIPTTL = 1

// MaxTCPConnsPerSentinel bounds concurrent DNS-over-TCP connections per sentinel address (Firezone: 10).
const MaxTCPConnsPerSentinel = 10

// ErrTCPConnLimit is returned by HandleTCPAccept when a sentinel already has MaxTCPConnsPerSentinel connections.
var ErrTCPConnLimit = errors.New("too many concurrent DNS-over-TCP connections to this sentinel")

// ErrUpstreamTimeout is the error a driver passes to HandleUpstreamError when an upstream did not answer in time.
var ErrUpstreamTimeout = errors.New("upstream DNS query timed out")

// Transport is the transport a query arrived on or is forwarded over.
type Transport uint8

// Transports.
const (
	UDP Transport = iota
	TCP
)

// String returns "udp" or "tcp".
func (t Transport) String() string {
	if t == TCP {
		return "tcp"
	}
	return "udp"
}

// IPStack restricts which address families a DNS resource gets answers for.
type IPStack uint8

// IP stacks (the portal's ip_stack values).
const (
	Dual     IPStack = iota // "dual"
	IPv4Only                // "ipv4_only"
	IPv6Only                // "ipv6_only"
)

// ParseIPStack parses the portal's ip_stack string ("" → Dual).
func ParseIPStack(s string) (IPStack, error) {
	switch s {
	case "", "dual":
		return Dual, nil
	case "ipv4_only":
		return IPv4Only, nil
	case "ipv6_only":
		return IPv6Only, nil
	}
	return Dual, fmt.Errorf("unknown ip_stack %q", s)
}

// Resource is a DNS resource: an address pattern and the id the tunnel routes it by.
type Resource struct {
	ID      string
	Address string // exact name, "*.x", "**.x", "?.x" or any label glob (see dnspattern.Pattern)
	IPStack IPStack
}

// Source identifies where a query came from and where its reply must go.
type Source struct {
	Transport Transport
	Client    netip.AddrPort // the application's socket
	Server    netip.AddrPort // the sentinel address:port the query was sent to
	Handle    uint64         // opaque to the core except for TCP, where it names the connection
}

// Reply is a DNS message to send to Source (for TCP without the length prefix).
type Reply struct {
	To      Source
	Payload []byte
}

// ForwardID names one forwarded query.
type ForwardID uint64

// Forward asks the driver to send Query to Upstream over Transport and to feed the answer (HandleUpstreamResponse)
// or failure (HandleUpstreamError) back with ID. ThroughTunnel says the upstream is inside a CIDR resource, so
// the query must be routed through the tunnel instead of the physical interface.
type Forward struct {
	ID            ForwardID
	Upstream      netip.AddrPort
	Transport     Transport
	Query         []byte
	ThroughTunnel bool
	Deadline      time.Time
	Source        Source
}

// NameAssigned reports "name Name now maps to IPs for resource ResourceID" (once per new assignment).
type NameAssigned struct {
	Name       string
	ResourceID string
	IPs        []netip.Addr
}

// TCPCloseResult lists what the driver must do after HandleTCPClose.
type TCPCloseResult struct {
	// Cancelled lists, in order, the forwards of the closed connection's queries that were handed out
	// (PollForward) and are still in flight: the driver abandons their upstream exchanges (closes their
	// upstream TCP sockets, forgets their pending UDP queries). Nobody waits for them any more: the core never
	// shares a forward between queries, so identical queries on other connections have forwards of their own.
	// Forwards of the connection not handed out yet are dropped from the PollForward queue instead.
	Cancelled []ForwardID
}

// RoamResult lists what the driver must do after Roam.
type RoamResult struct {
	// Cancelled lists, in order, every forward that was in flight: its upstream exchange must be abandoned,
	// its upstream socket closed (TCP ones reset) and never reused, and nothing it returns fed back (a late
	// result for it is ignored anyway). TCP queries are answered SERVFAIL; UDP queries are resent (Resent).
	Cancelled []ForwardID
	// Resent lists, in order, the new forwards that replace the UDP ones in flight: the same queries, sources
	// and upstreams under new IDs, queued for PollForward, for the driver to send from its new sockets. Each
	// keeps its query's original deadline (see Roam).
	Resent []ForwardID
}

type resourceEntry struct {
	id    string
	pat   dnspattern.Pattern
	stack IPStack
}

type assignment struct {
	name     string
	v4       [4]netip.Addr
	v6       [4]netip.Addr
	v4b      [4][4]byte
	v6b      [4][16]byte
	resource *resourceEntry
	gen      uint64
}

type fwdKey struct {
	upstream netip.AddrPort
	id       uint16
}

type inflight struct {
	id       ForwardID
	src      Source
	query    []byte
	q        question
	upstream netip.AddrPort
	deadline time.Time
	heapIdx  int // position in Resolver.deadlines
}

// deadlineHeap orders the forwards in flight by deadline (then ID), so that PollTimeout is O(1) and
// HandleTimeout touches only what expires.
type deadlineHeap []*inflight

func (h deadlineHeap) Len() int { return len(h) }
func (h deadlineHeap) Less(i, j int) bool {
	if !h[i].deadline.Equal(h[j].deadline) {
		return h[i].deadline.Before(h[j].deadline)
	}
	return h[i].id < h[j].id
}
func (h deadlineHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].heapIdx, h[j].heapIdx = i, j
}
func (h *deadlineHeap) Push(x any) {
	f := x.(*inflight)
	f.heapIdx = len(*h)
	*h = append(*h, f)
}
func (h *deadlineHeap) Pop() any {
	old := *h
	f := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	f.heapIdx = -1
	return f
}

// Resolver is the sans-IO stub resolver core. It is not safe for concurrent use; drivers serialise calls
// (ReportDroppedAnswer excepted).
type Resolver struct {
	log     *slog.Logger
	timeout time.Duration

	sentinels   map[netip.Addr]netip.AddrPort
	sentinelLst []Sentinel
	skipped     []error

	gen      uint64
	exact    map[string]*resourceEntry
	wild     []*resourceEntry
	patterns []string
	cidrs    []netip.Prefix

	byName map[string]*assignment
	byIP   map[netip.Addr]*assignment
	next4  uint32
	next6  uint32

	nextID    ForwardID
	inflight  map[ForwardID]*inflight
	deadlines deadlineHeap
	byKey     map[fwdKey][]ForwardID

	tcpConns map[uint64]netip.Addr
	tcpCount map[netip.Addr]int

	forwards fifo.Queue[Forward]
	replies  fifo.Queue[Reply]
	events   fifo.Queue[NameAssigned]

	nameBuf []byte

	counts  [numOutcomes]atomic.Int64    // read by the metric callback
	dropped [numDropReasons]atomic.Int64 // read by the metric callback; written by ReportDroppedAnswer too
}

// outcome labels the snowgate.client.dns.queries metric.
type outcome int

const (
	outLocal outcome = iota
	outForwarded
	outServFail
	outDropped
	outTruncated
	outFormErr
	outNotImp
	numOutcomes
)

var outcomeNames = [numOutcomes]string{"local", "forwarded", "servfail", "dropped", "truncated", "formerr", "notimp"}

func (r *Resolver) count(o outcome) { r.counts[o].Add(1) }

// AnswerDropReason says why an upstream answer was dropped: the reason attribute of the
// snowgate.client.dns.upstream.answers.dropped metric.
type AnswerDropReason uint8

// Reasons for dropping an upstream answer (attribute values in quotes). A dropped answer never reaches the
// application; the query goes on waiting for the real answer (or its deadline).
const (
	// DropWrongSource ("source"): not from the upstream's address and port.
	DropWrongSource AnswerDropReason = iota
	// DropUnknownID ("id"): no query with the answer's DNS id is outstanding to that upstream (on the socket
	// the answer arrived on, for a driver's per-socket ids): late after a timeout, a duplicate, sent to
	// another socket, or spoofed.
	DropUnknownID
	// DropWrongQuestion ("question"): the id of an outstanding query but not its question (see
	// AnswerMatchesQuery), e.g. a spoofing attempt that guessed the id.
	DropWrongQuestion
	// DropMalformed ("malformed"): too short for a DNS header.
	DropMalformed
	// DropLate ("late"): an answer (HandleUpstreamResponse) for a forward that is no longer in flight: timed
	// out, cancelled (roam, the application closed its connection) or already answered.
	DropLate
	numDropReasons
)

var dropReasonNames = [numDropReasons]string{"source", "id", "question", "malformed", "late"}

// String returns the reason's attribute value ("source", "id", "question", "malformed", "late").
func (d AnswerDropReason) String() string {
	if d >= numDropReasons {
		return fmt.Sprintf("AnswerDropReason(%d)", uint8(d))
	}
	return dropReasonNames[d]
}

// ReportDroppedAnswer counts an upstream answer the driver dropped (e.g. on its own UDP sockets) in the
// snowgate.client.dns.upstream.answers.dropped metric. Unlike the other methods it is safe for concurrent use:
// drivers call it without serialising. Unknown reasons are ignored.
func (r *Resolver) ReportDroppedAnswer(reason AnswerDropReason) {
	if reason < numDropReasons {
		r.dropped[reason].Add(1)
	}
}

// New builds a Resolver: it picks the upstreams (portal first, else resolv.conf) and assigns the sentinels.
// An upstream in a reserved range (tunnel, proxy, sentinel, the stub's own addresses, unspecified) is
// skipped, logged at WARN with its *ReservedUpstreamError and listed by Skipped; the others are used. New
// fails with ErrNoUpstreams (wrapping the reasons) when no upstream is left.
func New(cfg Config) (*Resolver, error) {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	sents, skipped, err := buildSentinels(cfg)
	if err != nil {
		return nil, err
	}
	for _, e := range skipped {
		log.Warn("upstream DNS resolver skipped", "error", e)
	}
	mp := cfg.MeterProvider
	if mp == nil {
		mp = noop.NewMeterProvider()
	}
	r := &Resolver{
		log:       log,
		timeout:   cfg.UpstreamTimeout,
		sentinels: make(map[netip.Addr]netip.AddrPort),
		exact:     make(map[string]*resourceEntry),
		byName:    make(map[string]*assignment),
		byIP:      make(map[netip.Addr]*assignment),
		inflight:  make(map[ForwardID]*inflight),
		byKey:     make(map[fwdKey][]ForwardID),
		tcpConns:  make(map[uint64]netip.Addr),
		tcpCount:  make(map[netip.Addr]int),
		nameBuf:   make([]byte, 0, 256),
	}
	var opts [numOutcomes]metric.ObserveOption
	for i, n := range outcomeNames {
		opts[i] = metric.WithAttributeSet(attribute.NewSet(attribute.String("outcome", n)))
	}
	_, err = mp.Meter("github.com/snowgate/snowgate/client/dns").Int64ObservableCounter("snowgate.client.dns.queries",
		metric.WithDescription("DNS queries handled by the stub resolver, by outcome"),
		metric.WithInt64Callback(func(_ context.Context, o metric.Int64Observer) error {
			for i := range r.counts {
				o.Observe(r.counts[i].Load(), opts[i])
			}
			return nil
		}))
	if err != nil {
		return nil, fmt.Errorf("creating dns query counter: %w", err)
	}
	var dropOpts [numDropReasons]metric.ObserveOption
	for i, n := range dropReasonNames {
		dropOpts[i] = metric.WithAttributeSet(attribute.NewSet(attribute.String("reason", n)))
	}
	_, err = mp.Meter("github.com/snowgate/snowgate/client/dns").Int64ObservableCounter("snowgate.client.dns.upstream.answers.dropped",
		metric.WithDescription("Upstream DNS answers the stub resolver dropped (wrong source, id or question, malformed, late), by reason"),
		metric.WithInt64Callback(func(_ context.Context, o metric.Int64Observer) error {
			for i := range r.dropped {
				o.Observe(r.dropped[i].Load(), dropOpts[i])
			}
			return nil
		}))
	if err != nil {
		return nil, fmt.Errorf("creating dns dropped answers counter: %w", err)
	}
	if r.timeout <= 0 {
		r.timeout = 5 * time.Second
	}
	for _, s := range sents {
		r.sentinels[s.Addr] = s.Upstream
	}
	r.sentinelLst = sents
	r.skipped = skipped
	return r, nil
}

// Sentinels returns the sentinel → upstream mapping (put the sentinel addresses into the system's resolver config).
func (r *Resolver) Sentinels() []Sentinel { return slices.Clone(r.sentinelLst) }

// Skipped returns why configured upstreams were left out (each a *ReservedUpstreamError, or an error wrapping
// ErrTooManySentinels), in configuration order, for the caller to report; nil when every upstream is used.
func (r *Resolver) Skipped() []error { return slices.Clone(r.skipped) }

// SetResources replaces the DNS and CIDR resources. Invalid patterns are skipped and reported in the error
// (wrapping dnspattern.ErrInvalidPattern); the valid ones still apply. Proxy IPs already handed out stay stable.
func (r *Resolver) SetResources(dnsRes []Resource, cidrs []netip.Prefix) error {
	r.gen++
	r.exact = make(map[string]*resourceEntry)
	r.wild = r.wild[:0]
	r.patterns = r.patterns[:0]
	var errs []error
	for _, res := range dnsRes {
		p, err := dnspattern.Parse(res.Address)
		if err != nil {
			errs = append(errs, fmt.Errorf("resource %s: %w", res.ID, err))
			continue
		}
		e := &resourceEntry{id: res.ID, pat: p, stack: res.IPStack}
		r.patterns = append(r.patterns, p.String())
		if p.Exact() {
			if old, ok := r.exact[p.String()]; !ok || res.ID < old.id {
				r.exact[p.String()] = e
			}
			continue
		}
		r.wild = append(r.wild, e)
	}
	r.cidrs = make([]netip.Prefix, 0, len(cidrs))
	for _, c := range cidrs {
		r.cidrs = append(r.cidrs, c.Masked())
	}
	return errors.Join(errs...)
}

// match finds the most specific resource for a lower-case name.
func (r *Resolver) match(name string) *resourceEntry {
	if e, ok := r.exact[name]; ok {
		return e
	}
	var best *resourceEntry
	for _, e := range r.wild {
		if e.pat.Match(name) && (best == nil || e.pat.MoreSpecificThan(best.pat)) {
			best = e
		}
	}
	return best
}

// lookup returns the assignment for a matched resource name, creating it (and its event) on first use.
// It returns nil, nil when no resource matches.
func (r *Resolver) lookup(name []byte) (*assignment, error) {
	a := r.byName[string(name)]
	if a != nil && a.gen == r.gen && a.resource != nil {
		return a, nil
	}
	e := r.match(string(name))
	if e == nil {
		if a != nil {
			a.resource, a.gen = nil, r.gen
		}
		if r.log.Enabled(context.Background(), slog.LevelDebug) {
			r.log.Debug("no resources matched", "name", string(name), "patterns", r.patterns)
		}
		return nil, nil
	}
	if a == nil {
		var err error
		if a, err = r.allocate(string(name)); err != nil {
			return nil, err
		}
	}
	changed := a.resource == nil || a.resource.id != e.id || a.resource.stack != e.stack
	a.resource, a.gen = e, r.gen
	if changed {
		ev := NameAssigned{Name: a.name, ResourceID: e.id}
		if e.stack != IPv6Only {
			ev.IPs = append(ev.IPs, a.v4[:]...)
		}
		if e.stack != IPv4Only {
			ev.IPs = append(ev.IPs, a.v6[:]...)
		}
		r.events.Push(ev)
		r.log.Debug("name now maps to proxy IPs", "name", a.name, "resource", e.id, "ips", ev.IPs)
	}
	return a, nil
}

var errProxyIPsExhausted = errors.New("proxy IP range exhausted")

// allocate hands out the next 4 IPv4 and 4 IPv6 proxy addresses, skipping the sentinel ranges.
func (r *Resolver) allocate(name string) (*assignment, error) {
	a := &assignment{name: name}
	max4 := uint32(1)<<(32-ProxyRangeV4.Bits()) - 2
	max6 := uint32(1)<<(128-ProxyRangeV6.Bits()) - 2
	base4 := binary.BigEndian.Uint32(ProxyRangeV4.Addr().AsSlice())
	for i := 0; i < 4; i++ {
		for {
			if r.next4 >= max4 {
				return nil, errProxyIPsExhausted
			}
			r.next4++
			var b [4]byte
			binary.BigEndian.PutUint32(b[:], base4+r.next4)
			ip := netip.AddrFrom4(b)
			if !SentinelRangeV4.Contains(ip) {
				a.v4[i], a.v4b[i] = ip, b
				break
			}
		}
	}
	for i := 0; i < 4; i++ {
		for {
			if r.next6 >= max6 {
				return nil, errProxyIPsExhausted
			}
			r.next6++
			b := ProxyRangeV6.Addr().As16()
			binary.BigEndian.PutUint32(b[12:], binary.BigEndian.Uint32(b[12:])+r.next6)
			ip := netip.AddrFrom16(b)
			if !SentinelRangeV6.Contains(ip) {
				a.v6[i], a.v6b[i] = ip, b
				break
			}
		}
	}
	r.byName[name] = a
	for _, ip := range a.v4 {
		r.byIP[ip] = a
	}
	for _, ip := range a.v6 {
		r.byIP[ip] = a
	}
	return a, nil
}

// HandleQuery handles one DNS query from src. A reply produced at once is appended to dst and returned with
// ok=true (the local-answer path allocates nothing when dst has room); otherwise the query was forwarded
// (see PollForward) or dropped because it cannot be answered (shorter than a header, or not a query).
func (r *Resolver) HandleQuery(src Source, msg []byte, now time.Time, dst []byte) (reply []byte, ok bool) {
	q, err := parseQuery(msg, r.nameBuf)
	if err != nil {
		r.count(outDropped)
		return dst, false
	}
	if len(q.name) <= cap(r.nameBuf) {
		r.nameBuf = q.name[:0]
	}
	if _, flags, _ := parseHeader(msg); flags&(1<<15) != 0 {
		r.count(outDropped)
		return dst, false // a response, not a query: never answer it
	}
	switch {
	case q.opcode != 0:
		q.parseErr = true
		r.count(outNotImp)
		return buildError(dst, msg, &q, rcodeNotImp), true
	case q.parseErr:
		r.count(outFormErr)
		return buildError(dst, msg, &q, rcodeFormErr), true
	}
	if q.qclass == classIN && q.matchOK {
		if out, done := r.answerLocal(dst, msg, &q); done {
			r.count(outLocal)
			return out, true
		}
	}
	upstream, known := r.sentinels[src.Server.Addr().Unmap()]
	if !known {
		r.log.Debug("query to an address without upstream", "server", src.Server)
		r.count(outServFail)
		return buildError(dst, msg, &q, rcodeServFail), true
	}
	r.forward(src, msg, q, upstream, now)
	r.count(outForwarded)
	return dst, false
}

// answerLocal answers resource names and PTR queries for proxy IPs; done=false means "forward it".
func (r *Resolver) answerLocal(dst, msg []byte, q *question) ([]byte, bool) {
	if q.qtype == typePTR {
		ip, isRev := parseReverse(q.name)
		if !isRev || !(ProxyRangeV4.Contains(ip) || ProxyRangeV6.Contains(ip)) {
			return dst, false
		}
		a := r.byIP[ip]
		if a == nil {
			return r.finish(appendHeader(dst, q, rcodeNXDomain, 1, 0, r.arCount(q)), msg, q), true
		}
		dst = appendHeader(dst, q, rcodeSuccess, 1, 1, r.arCount(q))
		dst = append(dst, msg[headerLen:q.end]...)
		dst = appendPTR(dst, ProxyIPTTL, a.name)
		return r.opt(dst, q), true
	}
	a, err := r.lookup(q.name)
	if err != nil {
		r.log.Warn("cannot assign proxy IPs", "name", string(q.name), "error", err)
		return buildError(dst, msg, q, rcodeServFail), true
	}
	if a == nil {
		return dst, false
	}
	var n uint16
	switch q.qtype {
	case typeA:
		if a.resource.stack != IPv6Only {
			n = 4
		}
	case typeAAAA:
		if a.resource.stack != IPv4Only {
			n = 4
		}
	}
	// Every other type, SRV and TXT included, is NOERROR with no answers: forwarding them to the client's
	// upstream would leak resource names to public DNS and answer with public records. (Firezone recurses
	// SRV/TXT through the resource's site; that needs the gateway and belongs to the tunnel layer.)
	dst = appendHeader(dst, q, rcodeSuccess, 1, n, r.arCount(q))
	dst = append(dst, msg[headerLen:q.end]...)
	for i := uint16(0); i < n; i++ {
		if q.qtype == typeA {
			dst = appendAddrRR(dst, typeA, ProxyIPTTL, a.v4b[i][:])
		} else {
			dst = appendAddrRR(dst, typeAAAA, ProxyIPTTL, a.v6b[i][:])
		}
	}
	return r.opt(dst, q), true
}

func (r *Resolver) arCount(q *question) uint16 {
	if q.hasOPT {
		return 1
	}
	return 0
}

func (r *Resolver) finish(dst, msg []byte, q *question) []byte {
	dst = append(dst, msg[headerLen:q.end]...)
	return r.opt(dst, q)
}

func (r *Resolver) opt(dst []byte, q *question) []byte {
	if q.hasOPT {
		return appendOPT(dst)
	}
	return dst
}

func (r *Resolver) forward(src Source, msg []byte, q question, upstream netip.AddrPort, now time.Time) {
	q.name = nil // aliases the parse buffer
	r.send(&inflight{src: src, query: slices.Clone(msg), q: q, upstream: upstream, deadline: now.Add(r.timeout)})
}

// send gives f a new ID, registers it in flight and queues its Forward.
func (r *Resolver) send(f *inflight) {
	r.nextID++
	f.id = r.nextID
	r.inflight[f.id] = f
	heap.Push(&r.deadlines, f)
	k := fwdKey{f.upstream, f.q.msgID}
	r.byKey[k] = append(r.byKey[k], f.id)
	through := false
	for _, c := range r.cidrs {
		if c.Contains(f.upstream.Addr()) {
			through = true
			break
		}
	}
	r.forwards.Push(Forward{
		ID: f.id, Upstream: f.upstream, Transport: f.src.Transport, Query: f.query,
		ThroughTunnel: through, Deadline: f.deadline, Source: f.src,
	})
}

func (r *Resolver) remove(f *inflight) {
	delete(r.inflight, f.id)
	if f.heapIdx >= 0 && f.heapIdx < len(r.deadlines) && r.deadlines[f.heapIdx] == f {
		heap.Remove(&r.deadlines, f.heapIdx)
	}
	k := fwdKey{f.upstream, f.q.msgID}
	ids := slices.DeleteFunc(r.byKey[k], func(id ForwardID) bool { return id == f.id })
	if len(ids) == 0 {
		delete(r.byKey, k)
	} else {
		r.byKey[k] = ids
	}
}

func (r *Resolver) servfail(f *inflight) {
	r.count(outServFail)
	r.replies.Push(Reply{To: f.src, Payload: buildError(nil, f.query, &f.q, rcodeServFail)})
}

// HandleUpstreamResponse delivers the upstream's answer to forward id. Answers for unknown (finished, timed out
// or cancelled) forwards are ignored and counted as dropped (DropLate). UDP answers larger than the application's limit are truncated (TC set);
// malformed answers or answers with the wrong id or question (see AnswerMatchesQuery) become SERVFAIL. A
// driver reading UDP answers should drop a mismatching one itself and keep waiting for the real answer.
func (r *Resolver) HandleUpstreamResponse(id ForwardID, resp []byte, now time.Time) {
	f := r.inflight[id]
	if f == nil {
		r.dropped[DropLate].Add(1)
		r.log.Debug("upstream response for a finished query", "forward", uint64(id))
		return
	}
	r.remove(f)
	rid, flags, ok := parseHeader(resp)
	if !ok || rid != f.q.msgID || flags&(1<<15) == 0 || !AnswerMatchesQuery(f.query, resp) {
		r.log.Debug("malformed upstream response", "upstream", f.upstream, "len", len(resp))
		r.servfail(f)
		return
	}
	if f.src.Transport == TCP {
		if len(resp) > 0xFFFF {
			r.servfail(f)
			return
		}
		r.replies.Push(Reply{To: f.src, Payload: slices.Clone(resp)})
		return
	}
	limit := f.q.udpLimit()
	out, ok := truncateUDP(make([]byte, 0, min(len(resp), limit)), resp, limit, f.q.hasOPT)
	if !ok {
		r.log.Debug("cannot truncate upstream response", "upstream", f.upstream, "len", len(resp))
		r.servfail(f)
		return
	}
	if len(resp) > limit {
		r.count(outTruncated)
	}
	r.replies.Push(Reply{To: f.src, Payload: out})
}

// HandleUpstreamPacket delivers a raw answer that arrived from upstream (e.g. through the tunnel) without a
// ForwardID: it is matched by (upstream, DNS id, question; see AnswerMatchesQuery) to the oldest such in-flight
// query. It reports whether one matched; an answer that matches none (late, duplicate or spoofed) is dropped
// and counted (DropMalformed, DropUnknownID, DropWrongQuestion).
func (r *Resolver) HandleUpstreamPacket(upstream netip.AddrPort, resp []byte, now time.Time) bool {
	id, _, ok := parseHeader(resp)
	if !ok {
		r.dropped[DropMalformed].Add(1)
		return false
	}
	ids := r.byKey[fwdKey{upstream, id}]
	for _, fid := range ids {
		if f := r.inflight[fid]; f != nil && AnswerMatchesQuery(f.query, resp) {
			r.HandleUpstreamResponse(fid, resp, now)
			return true
		}
	}
	if len(ids) == 0 {
		r.dropped[DropUnknownID].Add(1)
	} else {
		r.dropped[DropWrongQuestion].Add(1)
	}
	r.log.Debug("upstream response for an unknown query", "upstream", upstream, "id", id)
	return false
}

// HandleUpstreamError reports that forward id failed. A UDP timeout (ErrUpstreamTimeout or a net.Error with
// Timeout()) produces no answer at all, as without snowgate; every other failure answers SERVFAIL.
func (r *Resolver) HandleUpstreamError(id ForwardID, err error, now time.Time) {
	f := r.inflight[id]
	if f == nil {
		return
	}
	r.remove(f)
	if f.src.Transport == UDP && isTimeout(err) {
		r.count(outDropped)
		return
	}
	r.log.Debug("upstream query failed", "upstream", f.upstream, "transport", f.src.Transport.String(), "error", err)
	r.servfail(f)
}

func isTimeout(err error) bool {
	if errors.Is(err, ErrUpstreamTimeout) || errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// PollTimeout returns the earliest deadline of the forwards in flight: when HandleTimeout must next run. The
// core's deadlines are the one source of upstream timeouts; a driver needs no timers of its own.
func (r *Resolver) PollTimeout() (time.Time, bool) {
	if len(r.deadlines) == 0 {
		return time.Time{}, false
	}
	return r.deadlines[0].deadline, true
}

// TimeoutResult lists what the driver must do after HandleTimeout.
type TimeoutResult struct {
	// Expired lists, in deadline order, the forwards whose deadline passed: the core gave up on them (UDP
	// queries silently, TCP ones with SERVFAIL), and the driver abandons their upstream exchanges (closes
	// their sockets, forgets their pending UDP queries) so that their sockets do not wait for answers
	// nobody takes any more.
	Expired []ForwardID
}

// HandleTimeout expires the forwards whose deadline is at or before now: UDP queries silently (the
// application retries, as without snowgate), TCP ones with SERVFAIL.
func (r *Resolver) HandleTimeout(now time.Time) TimeoutResult {
	var res TimeoutResult
	for len(r.deadlines) > 0 && !r.deadlines[0].deadline.After(now) {
		id := r.deadlines[0].id
		res.Expired = append(res.Expired, id)
		r.HandleUpstreamError(id, ErrUpstreamTimeout, now)
	}
	return res
}

// PollForward returns the next query to send upstream.
func (r *Resolver) PollForward() (Forward, bool) {
	return r.forwards.Pop()
}

// PollReply returns the next asynchronous reply (answers to forwarded queries, SERVFAILs).
func (r *Resolver) PollReply() (Reply, bool) {
	return r.replies.Pop()
}

// PollEvent returns the next "name now maps to IPs" event.
func (r *Resolver) PollEvent() (NameAssigned, bool) {
	return r.events.Pop()
}

// HandleTCPAccept registers a new DNS-over-TCP connection (handle) to sentinel server. It returns
// ErrTCPConnLimit when the sentinel already has MaxTCPConnsPerSentinel connections: reset the new one.
func (r *Resolver) HandleTCPAccept(server netip.Addr, handle uint64) error {
	server = server.Unmap()
	if _, dup := r.tcpConns[handle]; dup {
		return nil
	}
	if r.tcpCount[server] >= MaxTCPConnsPerSentinel {
		return fmt.Errorf("sentinel %s: %w", server, ErrTCPConnLimit)
	}
	r.tcpConns[handle] = server
	r.tcpCount[server]++
	return nil
}

// HandleTCPClose forgets a closed connection and the queries still in flight on it (they get no answer and
// count as dropped). It lists the forwards whose upstream exchanges the driver must cancel (see
// TCPCloseResult); forwards of the connection not handed out yet are dropped from the PollForward queue.
func (r *Resolver) HandleTCPClose(handle uint64) TCPCloseResult {
	var res TCPCloseResult
	s, ok := r.tcpConns[handle]
	if !ok {
		return res
	}
	delete(r.tcpConns, handle)
	if r.tcpCount[s]--; r.tcpCount[s] <= 0 {
		delete(r.tcpCount, s)
	}
	ofConn := func(src Source) bool { return src.Transport == TCP && src.Handle == handle }
	var queued map[ForwardID]bool // rarely any: drivers poll right after HandleQuery
	r.forwards.DeleteFunc(func(f Forward) bool {
		if ofConn(f.Source) {
			if queued == nil {
				queued = map[ForwardID]bool{}
			}
			queued[f.ID] = true
			return true
		}
		return false
	})
	for _, f := range r.inflight {
		if !ofConn(f.src) {
			continue
		}
		r.remove(f)
		r.count(outDropped)
		if !queued[f.id] {
			res.Cancelled = append(res.Cancelled, f.id)
		}
	}
	slices.Sort(res.Cancelled)
	if len(res.Cancelled)+len(queued) > 0 {
		r.log.Debug("DNS-over-TCP connection closed: its queries are abandoned", "conn", handle,
			"cancelled", len(res.Cancelled), "not_sent", len(queued))
	}
	return res
}

// TCPConns returns how many DNS-over-TCP connections sentinel server has.
func (r *Resolver) TCPConns(server netip.Addr) int { return r.tcpCount[server.Unmap()] }

// Roam handles a network change. Every upstream exchange in flight is to be abandoned (Cancelled: the driver
// closes its upstream sockets, and later queries get new ones with new local ports). TCP queries in flight
// are answered SERVFAIL on the application's own connection (seed: upstream TCP connections are reset on a
// roam and their queries fail). UDP queries in flight are forwarded again instead (Resent, via
// PollForward): a SERVFAIL would make glibc's resolver fail the lookup, and the application must not notice
// the roam. A resent forward keeps its query's original deadline: the application's own retry timer runs
// from when it asked, so waiting longer would only hold a query it may have retried already, and roaming
// again and again cannot keep a query alive for ever. A UDP query whose deadline has already passed is not
// resent: it is dropped silently, as HandleTimeout would have. The applications' DNS-over-TCP connections
// to the sentinels are kept, and go on counting against MaxTCPConnsPerSentinel: the application sends its
// next query on the same connection.
func (r *Resolver) Roam(now time.Time) RoamResult {
	var res RoamResult
	for _, f := range r.inflight {
		res.Cancelled = append(res.Cancelled, f.id)
	}
	slices.Sort(res.Cancelled)
	r.forwards.Clear() // every queued forward is in flight, and handled below
	expired := 0
	for _, id := range res.Cancelled {
		f := r.inflight[id]
		r.remove(f)
		switch {
		case f.src.Transport == TCP:
			r.servfail(f)
		case !f.deadline.After(now):
			r.count(outDropped)
			expired++
		default:
			nf := *f
			r.send(&nf)
			res.Resent = append(res.Resent, nf.id)
		}
	}
	r.log.Debug("roamed: upstream exchanges abandoned, UDP queries resent", "cancelled", len(res.Cancelled),
		"resent", len(res.Resent), "expired", expired, "tcp_conns", len(r.tcpConns))
	return res
}

// InFlight returns how many forwarded queries await an answer.
func (r *Resolver) InFlight() int { return len(r.inflight) }

// parseReverse parses an in-addr.arpa or ip6.arpa name (lower case, no trailing dot).
func parseReverse(name []byte) (netip.Addr, bool) {
	s := string(name)
	if rest, ok := strings.CutSuffix(s, ".in-addr.arpa"); ok {
		parts := strings.Split(rest, ".")
		if len(parts) != 4 {
			return netip.Addr{}, false
		}
		slices.Reverse(parts)
		a, err := netip.ParseAddr(strings.Join(parts, "."))
		return a, err == nil && a.Is4()
	}
	if rest, ok := strings.CutSuffix(s, ".ip6.arpa"); ok {
		nib := strings.Split(rest, ".")
		if len(nib) != 32 {
			return netip.Addr{}, false
		}
		var b [16]byte
		for i, n := range nib {
			if len(n) != 1 {
				return netip.Addr{}, false
			}
			var v byte
			switch c := n[0]; {
			case c >= '0' && c <= '9':
				v = c - '0'
			case c >= 'a' && c <= 'f':
				v = c - 'a' + 10
			default:
				return netip.Addr{}, false
			}
			pos := 31 - i
			if pos%2 == 0 {
				b[pos/2] |= v << 4
			} else {
				b[pos/2] |= v
			}
		}
		return netip.AddrFrom16(b), true
	}
	return netip.Addr{}, false
}
