package nodetest

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/snowgate/snowgate/node"
)

// Node is the method set of *node.Node that the client and gateway daemons
// use; *node.Node and *Fake both have it.
type Node interface {
	PublicKey() node.Key
	UpsertConnection(node.ConnectionParams) error
	RemoveConnection(id string) error
	SetAllowedIPs(id string, prefixes []netip.Prefix) error
	AddRemoteCandidate(id, sdp string) error
	RemoveRemoteCandidate(id, sdp string) error
	UpdateRelays(remove []string, add []node.Relay)
	Reset() (node.Key, error)
	Stats() []node.ConnStats
	Events() <-chan node.Event
	Close() error
}

var (
	_ Node = (*node.Node)(nil)
	_ Node = (*Fake)(nil)
)

// Fake stands in for *node.Node in the daemons' tests. It has the methods
// of *node.Node the daemons use, records every call, keeps the connections
// the calls describe (so Stats answers like a node), lets the test inject
// events and errors, and is safe for concurrent use.
//
// It does nothing by itself: no candidates, no connection is ever
// established unless the test says so (Establish, Fail, Candidate, …).
type Fake struct {
	mu      sync.Mutex
	priv    node.Key
	calls   []Call
	conns   map[string]*fakeConn
	errs    map[string][]error // method → errors to return, in order
	events  chan node.Event
	closed  bool
	changed chan struct{}
}

type fakeConn struct {
	params  node.ConnectionParams
	allowed []netip.Prefix
	remote  []string
	stats   node.ConnStats
}

// Call is one recorded method call.
type Call struct {
	// Method is the method's name ("UpsertConnection", …).
	Method string
	// ID is the connection id, if the method takes one.
	ID string
	// Params is UpsertConnection's argument.
	Params node.ConnectionParams
	// Prefixes is SetAllowedIPs' argument.
	Prefixes []netip.Prefix
	// Candidate is the candidate of Add/RemoveRemoteCandidate.
	Candidate string
	// Remove and Add are UpdateRelays' arguments.
	Remove []string
	Add    []node.Relay
	// Err is what the call returned.
	Err error
}

// NewFake returns a Fake whose event channel holds up to 1024 events.
func NewFake() *Fake {
	priv, err := node.GeneratePrivateKey()
	if err != nil {
		panic(fmt.Sprintf("nodetest: key: %v", err)) // crypto/rand failing is not a test condition
	}
	return &Fake{
		priv:    priv,
		conns:   make(map[string]*fakeConn),
		errs:    make(map[string][]error),
		events:  make(chan node.Event, 1024),
		changed: make(chan struct{}, 1),
	}
}

// FailNext makes the next call of method (e.g. "UpsertConnection") return
// err instead of doing anything; calling it several times queues errors.
func (f *Fake) FailNext(method string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.errs[method] = append(f.errs[method], err)
}

// record appends a call, taking a queued error for its method. f.mu is held.
func (f *Fake) record(c Call) error {
	if q := f.errs[c.Method]; len(q) > 0 {
		c.Err = q[0]
		f.errs[c.Method] = q[1:]
	} else if f.closed && c.Method != "Close" && c.Method != "Stats" && c.Method != "PublicKey" {
		c.Err = node.ErrClosed
	}
	f.calls = append(f.calls, c)
	select {
	case f.changed <- struct{}{}:
	default:
	}
	return c.Err
}

// PublicKey returns the fake's current public key.
func (f *Fake) PublicKey() node.Key {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.priv.PublicKey()
}

// UpsertConnection records the call and keeps the connection.
func (f *Fake) UpsertConnection(p node.ConnectionParams) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.record(Call{Method: "UpsertConnection", ID: p.ID, Params: p}); err != nil {
		return err
	}
	if c := f.conns[p.ID]; c != nil && c.params == p {
		return nil
	}
	f.conns[p.ID] = &fakeConn{params: p, stats: node.ConnStats{ID: p.ID}}
	return nil
}

// RemoveConnection records the call and forgets the connection.
func (f *Fake) RemoveConnection(id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	err := f.record(Call{Method: "RemoveConnection", ID: id})
	if err == nil && f.conns[id] == nil {
		err = fmt.Errorf("remove connection %s: %w", id, node.ErrUnknownConnection)
		f.calls[len(f.calls)-1].Err = err
	}
	if err != nil {
		return err
	}
	delete(f.conns, id)
	return nil
}

// SetAllowedIPs records the call and keeps the prefixes.
func (f *Fake) SetAllowedIPs(id string, prefixes []netip.Prefix) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	err := f.record(Call{Method: "SetAllowedIPs", ID: id, Prefixes: slices.Clone(prefixes)})
	if err == nil && f.conns[id] == nil {
		err = fmt.Errorf("set allowed IPs of %s: %w", id, node.ErrUnknownConnection)
		f.calls[len(f.calls)-1].Err = err
	}
	if err != nil {
		return err
	}
	f.conns[id].allowed = slices.Clone(prefixes)
	return nil
}

// AddRemoteCandidate records the call.
func (f *Fake) AddRemoteCandidate(id, sdp string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.record(Call{Method: "AddRemoteCandidate", ID: id, Candidate: sdp}); err != nil {
		return err
	}
	if c := f.conns[id]; c != nil && !slices.Contains(c.remote, sdp) {
		c.remote = append(c.remote, sdp)
	}
	return nil
}

// RemoveRemoteCandidate records the call.
func (f *Fake) RemoveRemoteCandidate(id, sdp string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.record(Call{Method: "RemoveRemoteCandidate", ID: id, Candidate: sdp}); err != nil {
		return err
	}
	if c := f.conns[id]; c != nil {
		c.remote = slices.DeleteFunc(c.remote, func(s string) bool { return s == sdp })
	}
	return nil
}

// UpdateRelays records the call.
func (f *Fake) UpdateRelays(remove []string, add []node.Relay) {
	f.mu.Lock()
	defer f.mu.Unlock()
	_ = f.record(Call{Method: "UpdateRelays", Remove: slices.Clone(remove), Add: slices.Clone(add)})
}

// Reset records the call, forgets every connection and rotates the key.
func (f *Fake) Reset() (node.Key, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.record(Call{Method: "Reset"}); err != nil {
		return node.Key{}, err
	}
	priv, err := node.GeneratePrivateKey()
	if err != nil {
		return node.Key{}, err
	}
	f.priv = priv
	f.conns = make(map[string]*fakeConn)
	return priv.PublicKey(), nil
}

// Stats returns the connections' stats (as set by Establish, SetStats, …).
func (f *Fake) Stats() []node.ConnStats {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]node.ConnStats, 0, len(f.conns))
	for _, c := range f.conns {
		out = append(out, c.stats)
	}
	slices.SortFunc(out, func(a, b node.ConnStats) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// Events returns the injected events; Close closes the channel.
func (f *Fake) Events() <-chan node.Event { return f.events }

// Close records the call and closes the event channel (once).
func (f *Fake) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	_ = f.record(Call{Method: "Close"})
	if !f.closed {
		f.closed = true
		close(f.events)
	}
	return nil
}

// Calls returns the recorded calls, oldest first.
func (f *Fake) Calls() []Call {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

// CallsOf returns the recorded calls of one method.
func (f *Fake) CallsOf(method string) []Call {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []Call
	for _, c := range f.calls {
		if c.Method == method {
			out = append(out, c)
		}
	}
	return out
}

// WaitCall waits up to timeout for a recorded call matching match (made
// before or after WaitCall) and returns the first.
func (f *Fake) WaitCall(timeout time.Duration, match func(Call) bool) (Call, bool) {
	end := time.After(timeout)
	for {
		f.mu.Lock()
		for _, c := range f.calls {
			if match(c) {
				f.mu.Unlock()
				return c, true
			}
		}
		f.mu.Unlock()
		select {
		case <-f.changed:
		case <-end:
			return Call{}, false
		}
	}
}

// Connection returns what the calls made of connection id: its parameters,
// allowed IPs and remote candidates.
func (f *Fake) Connection(id string) (p node.ConnectionParams, allowed []netip.Prefix, remote []string, ok bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := f.conns[id]
	if c == nil {
		return node.ConnectionParams{}, nil, nil, false
	}
	return c.params, slices.Clone(c.allowed), slices.Clone(c.remote), true
}

// ErrEventsFull is returned by Inject when the event channel is full.
var ErrEventsFull = errors.New("nodetest: fake event channel full")

// Inject delivers an event as the node would (it does not change the
// connections: see Establish and Fail for that).
func (f *Fake) Inject(e node.Event) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return node.ErrClosed
	}
	select {
	case f.events <- e:
		return nil
	default:
		return ErrEventsFull
	}
}

// Candidate injects a local candidate of connection id to signal.
func (f *Fake) Candidate(id, sdp string) error {
	return f.Inject(node.Event{Kind: node.EventCandidateAdded, ConnectionID: id, Candidate: sdp})
}

// InvalidateCandidate injects the invalidation of a local candidate.
func (f *Fake) InvalidateCandidate(id, sdp, relayID string) error {
	return f.Inject(node.Event{Kind: node.EventCandidateInvalidated, ConnectionID: id, Candidate: sdp, RelayID: relayID})
}

// Establish marks connection id established on path (local → remote) and
// injects EventConnectionEstablished.
func (f *Fake) Establish(id string, path node.Path, local, remote netip.AddrPort) error {
	f.mu.Lock()
	if c := f.conns[id]; c != nil {
		c.stats.Established = true
		c.stats.Path, c.stats.LocalAddr, c.stats.RemoteAddr = path, local, remote
	}
	f.mu.Unlock()
	return f.Inject(node.Event{Kind: node.EventConnectionEstablished, ConnectionID: id, Path: path, LocalAddr: local, RemoteAddr: remote})
}

// Fail marks connection id not established and injects
// EventConnectionFailed with err (node.ErrICEFailed if nil).
func (f *Fake) Fail(id string, err error) error {
	if err == nil {
		err = node.ErrICEFailed
	}
	f.mu.Lock()
	if c := f.conns[id]; c != nil {
		c.stats.Established = false
	}
	f.mu.Unlock()
	return f.Inject(node.Event{Kind: node.EventConnectionFailed, ConnectionID: id, Err: err})
}

// NoRelays injects EventNoRelays.
func (f *Fake) NoRelays() error { return f.Inject(node.Event{Kind: node.EventNoRelays}) }

// RelayReady injects EventRelayReady.
func (f *Fake) RelayReady(id string, relayed netip.AddrPort) error {
	return f.Inject(node.Event{Kind: node.EventRelayReady, RelayID: id, RelayedAddr: relayed})
}

// SetStats replaces the stats of connection id (its ID is kept).
func (f *Fake) SetStats(id string, s node.ConnStats) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if c := f.conns[id]; c != nil {
		s.ID = id
		c.stats = s
	}
}
