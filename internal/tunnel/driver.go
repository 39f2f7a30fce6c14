package tunnel

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/snowgate/snowgate/internal/phoenix"
	"github.com/snowgate/snowgate/internal/portalapi"
	"github.com/snowgate/snowgate/internal/telemetry"
	"github.com/snowgate/snowgate/node"
)

// Node is what a driver needs of the connectivity node: *node.Node, or node/nodetest's fake in tests.
type Node interface {
	PublicKey() node.Key
	UpsertConnection(p node.ConnectionParams) error
	RemoveConnection(id string) error
	SetAllowedIPs(id string, prefixes []netip.Prefix) error
	AddRemoteCandidate(id, sdp string) error
	RemoveRemoteCandidate(id, sdp string) error
	UpdateRelays(remove []string, add []node.Relay)
	Reset() (node.Key, error)
	Stats() []node.ConnStats
	Events() <-chan node.Event
}

// PortalClient is what a driver needs of the portal session: *phoenix.Client.
type PortalClient interface {
	Connect(ctx context.Context, publicKey string) error
	Join(topic string, payload any)
	Push(topic, event string, payload any) (phoenix.Ref, error)
	Reconnect()
	Events() <-chan phoenix.Event
}

// Injector is where a driver sends packets of its own: the TUN wrapper (*tunwrap.Wrapper).
type Injector interface {
	InjectOutbound(pkts ...[]byte) error
	WriteTUN(pkts ...[]byte) error
}

// Decoder decodes a portal push of the daemon's channel (portalapi.DecodeClientIngress or
// portalapi.DecodeGatewayIngress).
type Decoder func(event string, payload json.RawMessage) (portalapi.Message, error)

// ErrPortalRefused wraps the portal session's terminal error (a refused or expired token): the daemon
// stops and says so.
var ErrPortalRefused = errors.New("portal refused the session")

// DriverConfig configures a Driver.
type DriverConfig struct {
	// Core is the state machine to drive.
	Core Core
	// Topic is the portal channel the daemon joins ("client" or "gateway"); Decode decodes its pushes.
	Topic  string
	Decode Decoder
	// Exec carries out the actions of the core's own (role-specific) kinds; nil logs and skips them.
	// It runs on the driver's goroutine, outside the core's lock.
	Exec func(ctx context.Context, a Action) error
	// ReportInterval is the shortest period of connection reports while traffic changes them (see
	// report.go): 0 means DefaultReportInterval, a negative value turns the reports off.
	ReportInterval time.Duration
	// Now is the clock (nil: time.Now).
	Now func() time.Time
	// Logger receives the driver's logs (nil: discarded).
	Logger *slog.Logger
}

// Driver runs a Core: see the package doc. Create it with NewDriver, hand it to tunwrap.New as the filter,
// create the node on that wrapper, then call Run.
type Driver struct {
	cfg DriverConfig
	log *slog.Logger
	now func() time.Time

	mu    sync.Mutex
	core  Core
	rc    *reportingCore // core, when connection reports are on
	queue []Action       // actions drained from the core, not carried out yet

	kick  chan struct{}
	armed atomic.Int64 // unix ns of the deadline the loop sleeps towards; 0: none

	// set by Run
	node   Node
	portal PortalClient
	inj    Injector
	ctx    context.Context
}

// NewDriver returns a driver for cfg.Core.
func NewDriver(cfg DriverConfig) (*Driver, error) {
	if cfg.Core == nil || cfg.Topic == "" || cfg.Decode == nil {
		return nil, errors.New("tunnel: DriverConfig needs Core, Topic and Decode")
	}
	now := cfg.Now
	if now == nil {
		now = time.Now
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	d := &Driver{cfg: cfg, log: log, now: now, core: cfg.Core, kick: make(chan struct{}, 1)}
	if cfg.ReportInterval >= 0 {
		interval := cfg.ReportInterval
		if interval == 0 {
			interval = DefaultReportInterval
		}
		d.rc = &reportingCore{Core: cfg.Core, rep: newReporter(interval)}
		d.core = d.rc
	}
	return d, nil
}

// Outbound implements tunwrap.Filter: packets read from the TUN device go through HandleTunInput.
func (d *Driver) Outbound(pkts [][]byte, keep []bool) {
	d.mu.Lock()
	now := d.now()
	for i, p := range pkts {
		keep[i] = d.core.HandleTunInput(p, now) == Pass
	}
	d.afterLocked()
	d.mu.Unlock()
}

// Inbound implements tunwrap.Filter: packets decrypted from the network go through HandleNetworkInput.
func (d *Driver) Inbound(pkts [][]byte, keep []bool) {
	d.mu.Lock()
	now := d.now()
	for i, p := range pkts {
		keep[i] = d.core.HandleNetworkInput(p, now) == Pass
	}
	d.afterLocked()
	d.mu.Unlock()
}

// Do runs f with the core, under its lock, from any goroutine (answers of DNS upstreams, resolved names,
// network changes), then wakes the loop if f left actions or an earlier deadline.
func (d *Driver) Do(f func(now time.Time)) {
	d.mu.Lock()
	f(d.now())
	d.afterLocked()
	d.mu.Unlock()
}

// afterLocked drains the core's actions into the queue and wakes the loop when it has work or must wake
// earlier than it planned. d.mu is held.
func (d *Driver) afterLocked() {
	wake := false
	for {
		a, ok := d.core.PollAction()
		if !ok {
			break
		}
		d.queue = append(d.queue, a)
		wake = true
	}
	if t, ok := d.core.PollTimeout(); ok {
		if armed := d.armed.Load(); armed == 0 || t.UnixNano() < armed {
			wake = true
		}
	}
	if wake {
		select {
		case d.kick <- struct{}{}:
		default:
		}
	}
}

// Run connects the portal with the node's key and drives the core until ctx ends, a Fatal action, or a
// terminal portal error (wrapped in ErrPortalRefused). It returns nil when ctx ends.
func (d *Driver) Run(ctx context.Context, n Node, portal PortalClient, inj Injector) error {
	d.mu.Lock()
	d.node, d.portal, d.inj, d.ctx = n, portal, inj, ctx
	d.mu.Unlock()
	portal.Join(d.cfg.Topic, nil)
	if err := portal.Connect(ctx, n.PublicKey().String()); err != nil {
		return fmt.Errorf("tunnel: connect portal: %w", err)
	}
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	portalEvents, nodeEvents := portal.Events(), n.Events()
	for {
		if err := d.flush(ctx); err != nil {
			return err
		}
		d.arm(timer)
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-portalEvents:
			if !ok {
				portalEvents = nil
				continue
			}
			if err := d.portalEvent(ev); err != nil {
				return err
			}
		case ev, ok := <-nodeEvents:
			if !ok {
				nodeEvents = nil
				continue
			}
			d.Do(func(now time.Time) { d.core.HandleNodeEvent(ev, now) })
		case <-timer.C:
			d.armed.Store(0)
			d.Do(func(now time.Time) { d.core.HandleTimeout(now) })
		case <-d.kick:
		}
	}
}

// Finish runs f (a core's shutdown: Goodbyes, …) and carries out what it emitted; the daemon calls it
// after Run returned, before leaving the portal. ctx bounds the node and portal calls.
func (d *Driver) Finish(ctx context.Context, f func(now time.Time)) error {
	d.Do(f)
	return d.flush(ctx)
}

// arm points the timer at the core's next deadline.
func (d *Driver) arm(timer *time.Timer) {
	d.mu.Lock()
	t, ok := d.core.PollTimeout()
	d.mu.Unlock()
	if !timer.Stop() {
		select {
		case <-timer.C:
		default:
		}
	}
	if !ok {
		d.armed.Store(0)
		return
	}
	d.armed.Store(t.UnixNano())
	timer.Reset(max(t.Sub(d.now()), 0))
}

// portalEvent feeds one event of the portal session to the core.
func (d *Driver) portalEvent(ev phoenix.Event) error {
	switch ev.Kind {
	case phoenix.EventJoined:
		if ev.Topic == d.cfg.Topic {
			d.Do(func(now time.Time) { d.core.HandlePortalState(PortalJoined, now) })
		}
	case phoenix.EventDisconnected:
		d.log.Info("portal connection lost; reconnecting", telemetry.Err(ev.Err))
		d.Do(func(now time.Time) { d.core.HandlePortalState(PortalDisconnected, now) })
	case phoenix.EventFatal:
		return fmt.Errorf("%w: %w", ErrPortalRefused, ev.Err)
	case phoenix.EventReplied:
		if ev.Status != phoenix.StatusOK {
			d.log.Warn("portal answered a push with an error", "topic", ev.Topic, "status", ev.Status, "response", string(ev.Payload))
		}
	case phoenix.EventMessage:
		if ev.Topic != d.cfg.Topic {
			return nil
		}
		msg, err := d.cfg.Decode(ev.Event, ev.Payload)
		if err != nil {
			d.log.Warn("malformed portal message ignored", "event", ev.Event, telemetry.Err(err))
			return nil
		}
		if u, ok := msg.(portalapi.Unknown); ok {
			d.log.Debug("unknown portal message ignored", "event", u.Name, "reason", u.Reason)
			return nil
		}
		d.Do(func(now time.Time) { d.core.HandlePortalMessage(msg, now) })
	}
	return nil
}

// flush carries out queued actions until none is left (failures feed the core, which may queue more).
func (d *Driver) flush(ctx context.Context) error {
	for {
		d.mu.Lock()
		q := d.queue
		d.queue = nil
		d.mu.Unlock()
		if len(q) == 0 {
			return nil
		}
		for _, a := range q {
			if err := d.exec(ctx, a); err != nil {
				return err
			}
		}
	}
}

// exec carries out one action; only Fatal (and a failing role-specific Exec) stops the driver.
func (d *Driver) exec(ctx context.Context, a Action) error {
	switch a := a.(type) {
	case PortalPush:
		if _, err := d.portal.Push(d.cfg.Topic, a.Event, a.Payload); err != nil {
			d.log.Warn("portal push failed", "event", a.Event, telemetry.Err(err))
		}
	case PortalReconnect:
		d.log.Info("reconnecting to the portal", "reason", a.Reason)
		d.portal.Reconnect()
	case NodeUpsert:
		err := d.node.UpsertConnection(a.Params)
		if err == nil && a.AllowedIPs != nil {
			err = d.node.SetAllowedIPs(a.Params.ID, a.AllowedIPs)
		}
		if err != nil {
			d.failed(a, err)
			return nil
		}
		for _, then := range a.Then {
			if err := d.exec(ctx, then); err != nil {
				return err
			}
		}
	case NodeRemove:
		if err := d.node.RemoveConnection(a.ID); err != nil && !errors.Is(err, node.ErrUnknownConnection) {
			d.failed(a, err)
		}
	case NodeAllowedIPs:
		if err := d.node.SetAllowedIPs(a.ID, a.Prefixes); err != nil {
			d.failed(a, err)
		}
	case NodeAddCandidate:
		if err := d.node.AddRemoteCandidate(a.ID, a.Candidate); err != nil {
			d.log.Debug("remote candidate not added", "connection", a.ID, telemetry.Err(err))
		}
	case NodeRemoveCandidate:
		if err := d.node.RemoveRemoteCandidate(a.ID, a.Candidate); err != nil && !errors.Is(err, node.ErrUnknownConnection) {
			d.log.Debug("remote candidate not removed", "connection", a.ID, telemetry.Err(err))
		}
	case NodeRelays:
		d.node.UpdateRelays(a.Remove, a.Add)
	case NodeReset:
		key, err := d.node.Reset()
		if err != nil {
			d.failed(a, err)
			return nil
		}
		if err := d.portal.Connect(d.ctx, key.String()); err != nil {
			return fmt.Errorf("tunnel: reconnect portal with the new key: %w", err)
		}
	case SendToTunnel:
		if err := d.inj.InjectOutbound(a.Packets...); err != nil {
			d.log.Debug("packets for the tunnel dropped", "count", len(a.Packets), telemetry.Err(err))
		}
	case WriteToTUN:
		if err := d.inj.WriteTUN(a.Packets...); err != nil {
			d.log.Debug("packets for the TUN device dropped", "count", len(a.Packets), telemetry.Err(err))
		}
	case checkConnections:
		stats := d.node.Stats()
		d.Do(func(now time.Time) { d.rc.handleStats(stats, now) })
	case Fatal:
		return a.Err
	default:
		if d.cfg.Exec == nil {
			d.log.Warn("action of unknown kind skipped", "kind", a.Kind())
			return nil
		}
		return d.cfg.Exec(ctx, a)
	}
	return nil
}

// failed reports a failed action to the core.
func (d *Driver) failed(a Action, err error) {
	d.log.Debug("action failed", "kind", a.Kind(), telemetry.Err(err))
	d.Do(func(now time.Time) { d.core.HandleActionFailed(a, err, now) })
}

// Failed reports that a role-specific action failed (for Exec implementations).
func (d *Driver) Failed(a Action, err error) { d.failed(a, err) }

// NodeStats returns the node's per-connection statistics (nil before Run).
func (d *Driver) NodeStats() []node.ConnStats {
	d.mu.Lock()
	n := d.node
	d.mu.Unlock()
	if n == nil {
		return nil
	}
	return n.Stats()
}

// Inspect runs f with the core under its lock, for status output; f must not change the core.
func (d *Driver) Inspect(f func(now time.Time)) {
	d.mu.Lock()
	defer d.mu.Unlock()
	f(d.now())
}
