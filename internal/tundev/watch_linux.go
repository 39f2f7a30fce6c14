//go:build linux

package tundev

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/snowgate/snowgate/internal/telemetry"
)

// subscriptionBuffer is the kernel receive buffer asked for each netlink subscription; a burst
// larger than this (ENOBUFS) ends the subscription, which is then renewed and reported as a change.
const subscriptionBuffer = 1 << 20

// resubscribeDelay is how long a watcher waits before retrying a subscription that failed to start.
const resubscribeDelay = time.Second

// Watch reports changes of the host's network that call for roaming: an IPv4 or IPv6 address
// added to or removed from any interface, or a default route (0.0.0.0/0, ::/0, any table) added,
// changed or removed, except on the interface opts.Exclude (the TUN). It uses netlink multicast
// subscriptions in the network namespace of the calling OS thread: event-driven, no polling, no
// wake-ups while nothing changes.
//
// A burst of changes (an interface coming up brings addresses and routes) is reported once, at the
// end of the opts.Debounce window that the first change opened. The returned channel has a buffer
// of one: a notification not yet received absorbs later ones.
//
// Watch's goroutines stop when ctx is done; the channel is closed after they have all exited (the
// caller can range over it to wait). If a subscription breaks (e.g. the kernel dropped messages),
// it is renewed and a change is reported, since something may have been missed.
func Watch(ctx context.Context, opts WatchOptions) (<-chan struct{}, error) {
	return watch(ctx, opts, nil)
}

// watch is Watch with a test hook that sees every update and how it was classified.
func watch(ctx context.Context, opts WatchOptions, observe func(kind string, linkIndex int, relevant bool)) (<-chan struct{}, error) {
	if opts.Debounce <= 0 {
		opts.Debounce = DefaultWatchDebounce
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	ns, err := netns.Get()
	if err != nil {
		return nil, fmt.Errorf("tundev: watch: current network namespace: %w", err)
	}
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		ns.Close()
		return nil, fmt.Errorf("tundev: watch: netlink: %w", err)
	}
	log := opts.Logger
	w := &watcher{
		debounce: opts.Debounce,
		log:      log,
		excluded: newExclusion(opts.Exclude, h).is,
		addr: subscriber[netlink.AddrUpdate]{name: "address", subscribe: func(ch chan<- netlink.AddrUpdate, done <-chan struct{}) error {
			return netlink.AddrSubscribeWithOptions(ch, done, netlink.AddrSubscribeOptions{
				Namespace: &ns, ReceiveBufferSize: subscriptionBuffer, ErrorCallback: subscriptionError(ctx, log, "address"),
			})
		}},
		route: subscriber[netlink.RouteUpdate]{name: "route", subscribe: func(ch chan<- netlink.RouteUpdate, done <-chan struct{}) error {
			return netlink.RouteSubscribeWithOptions(ch, done, netlink.RouteSubscribeOptions{
				Namespace: &ns, ReceiveBufferSize: subscriptionBuffer, ErrorCallback: subscriptionError(ctx, log, "route"),
			})
		}},
		release: func() {
			h.Close()
			ns.Close()
		},
		observe: observe,
	}
	return w.start(ctx)
}

// subscriptionError returns the ErrorCallback of a netlink subscription: errors after ctx is done
// are the expected end of the socket.
func subscriptionError(ctx context.Context, log *slog.Logger, name string) func(error) {
	return func(err error) {
		if ctx.Err() != nil {
			return
		}
		log.Debug("netlink subscription error", "subscription", name, telemetry.Err(err))
	}
}

// watcher is Watch's event loop; its subscriptions and exclusion test are functions so that tests
// can drive it with fakes.
type watcher struct {
	debounce time.Duration
	log      *slog.Logger
	excluded func(linkIndex int) bool
	addr     subscriber[netlink.AddrUpdate]
	route    subscriber[netlink.RouteUpdate]
	release  func() // frees what the subscriptions need, after they stopped
	// observe, if set (tests), sees every update's link index and whether it counted.
	observe func(kind string, linkIndex int, relevant bool)
}

func (w *watcher) start(ctx context.Context) (<-chan struct{}, error) {
	if err := w.addr.start(); err != nil {
		w.release()
		return nil, fmt.Errorf("tundev: watch: subscribe to address changes: %w", err)
	}
	if err := w.route.start(); err != nil {
		w.addr.stop()
		w.release()
		return nil, fmt.Errorf("tundev: watch: subscribe to route changes: %w", err)
	}
	out := make(chan struct{}, 1)
	go w.run(ctx, out)
	return out, nil
}

func (w *watcher) run(ctx context.Context, out chan<- struct{}) {
	defer close(out)
	defer w.release()
	defer w.route.stop()
	defer w.addr.stop()

	debounce := time.NewTimer(time.Hour)
	debounce.Stop()
	defer debounce.Stop()
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	defer retry.Stop()
	pending := false
	changed := func() {
		if !pending {
			pending = true
			debounce.Reset(w.debounce)
		}
	}
	lost := func(name string) {
		w.log.Warn("netlink subscription ended; renewing it", "subscription", name)
		changed()
		retry.Reset(0)
	}
	for {
		select {
		case <-ctx.Done():
			return
		case u, ok := <-w.addr.ch:
			if !ok {
				w.addr.lost()
				lost(w.addr.name)
				continue
			}
			relevant := !w.excluded(u.LinkIndex)
			if w.observe != nil {
				w.observe("address", u.LinkIndex, relevant)
			}
			if relevant {
				changed()
			}
		case u, ok := <-w.route.ch:
			if !ok {
				w.route.lost()
				lost(w.route.name)
				continue
			}
			relevant := isDefaultRoute(&u.Route) && !w.excluded(u.LinkIndex)
			if w.observe != nil {
				w.observe("route", u.LinkIndex, relevant)
			}
			if relevant {
				changed()
			}
		case <-debounce.C:
			pending = false
			select {
			case out <- struct{}{}:
			default: // an unread notification already says "something changed"
			}
		case <-retry.C:
			failed := false
			for _, s := range []interface {
				active() bool
				start() error
			}{&w.addr, &w.route} {
				if s.active() {
					continue
				}
				if err := s.start(); err != nil {
					w.log.Warn("cannot renew netlink subscription; retrying", telemetry.Err(err))
					failed = true
				}
			}
			if failed {
				retry.Reset(resubscribeDelay)
			}
		}
	}
}

// subscriber owns one netlink subscription: the channel the library's receive goroutine writes to
// and the done channel that closes its socket.
type subscriber[T any] struct {
	name      string
	subscribe func(ch chan<- T, done <-chan struct{}) error
	ch        chan T // nil while not subscribed
	done      chan struct{}
}

func (s *subscriber[T]) active() bool { return s.ch != nil }

func (s *subscriber[T]) start() error {
	ch := make(chan T, 64)
	done := make(chan struct{})
	if err := s.subscribe(ch, done); err != nil {
		close(done) // stops the socket closer the library may have started
		return err
	}
	s.ch, s.done = ch, done
	return nil
}

// lost handles the library closing ch after a socket error: its receive goroutine has exited.
func (s *subscriber[T]) lost() {
	close(s.done)
	s.ch, s.done = nil, nil
}

// stop closes the socket and waits for the library's receive goroutine to exit (it closes ch).
func (s *subscriber[T]) stop() {
	if s.ch == nil {
		return
	}
	close(s.done)
	for range s.ch {
	}
	s.ch, s.done = nil, nil
}

// exclusion recognises the excluded interface by index, learning the index from its name.
type exclusion struct {
	name  string
	index int
	h     *netlink.Handle
}

func newExclusion(name string, h *netlink.Handle) *exclusion {
	x := &exclusion{name: name, h: h}
	if name != "" {
		if l, err := h.LinkByName(name); err == nil {
			x.index = l.Attrs().Index
		}
	}
	return x
}

// is reports whether linkIndex is the excluded interface. An unknown index is looked up once per
// event (changes are rare); a link that no longer exists is not excluded unless its index was
// learned before.
func (x *exclusion) is(linkIndex int) bool {
	if x.name == "" || linkIndex == 0 {
		return false
	}
	if linkIndex == x.index {
		return true
	}
	l, err := x.h.LinkByIndex(linkIndex)
	if err != nil || l.Attrs().Name != x.name {
		return false
	}
	x.index = linkIndex
	return true
}

// LinkEvents reports the TUN's state, starting with the current one, then every change of its
// running flag or MTU, from a netlink link subscription (no polling; the unmonitored TUN has no
// other source). The daemon forwards them to wireguard-go (device.Up/Down, or a tun.EventMTUUpdate
// from its TUN wrapper's Events channel). If the interface is deleted, an event with Up false is
// sent. The goroutine stops when ctx is done and the channel is closed after it exited.
func (d *Device) LinkEvents(ctx context.Context) (<-chan LinkEvent, error) {
	d.mu.Lock()
	closed := d.closed
	var ns netns.NsHandle
	var err error
	if !closed {
		// The watcher gets its own copy of the namespace handle so it may outlive Close.
		var fd int
		fd, err = unix.FcntlInt(uintptr(d.ns), unix.F_DUPFD_CLOEXEC, 0)
		ns = netns.NsHandle(fd)
	}
	d.mu.Unlock()
	if closed {
		return nil, ErrClosed
	}
	if err != nil {
		return nil, fmt.Errorf("tundev: link events: %w", err)
	}
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		ns.Close()
		return nil, fmt.Errorf("tundev: link events: netlink: %w", err)
	}
	log := d.log
	sub := subscriber[netlink.LinkUpdate]{name: "link", subscribe: func(ch chan<- netlink.LinkUpdate, done <-chan struct{}) error {
		return netlink.LinkSubscribeWithOptions(ch, done, netlink.LinkSubscribeOptions{
			Namespace: &ns, ReceiveBufferSize: subscriptionBuffer, ErrorCallback: subscriptionError(ctx, log, "link"),
		})
	}}
	if err := sub.start(); err != nil {
		h.Close()
		ns.Close()
		return nil, fmt.Errorf("tundev: link events: subscribe: %w", err)
	}
	out := make(chan LinkEvent, 1)
	go func() {
		defer close(out)
		defer ns.Close()
		defer h.Close()
		defer sub.stop()
		index := d.index
		var last LinkEvent
		sent := false
		emit := func(ev LinkEvent) bool {
			if sent && ev == last {
				return true
			}
			select {
			case out <- ev:
				last, sent = ev, true
				return true
			case <-ctx.Done():
				return false
			}
		}
		query := func() (LinkEvent, bool) {
			l, err := h.LinkByIndex(index)
			if err != nil {
				return LinkEvent{MTU: last.MTU}, false
			}
			return linkEvent(l), true
		}
		ev, _ := query()
		if !emit(ev) {
			return
		}
		retry := time.NewTimer(time.Hour)
		retry.Stop()
		defer retry.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case u, ok := <-sub.ch:
				if !ok {
					sub.lost()
					log.Warn("netlink subscription ended; renewing it", "subscription", "link")
					retry.Reset(0)
					continue
				}
				if int(u.Index) != index {
					continue
				}
				ev := LinkEvent{MTU: last.MTU}
				if u.Header.Type != unix.RTM_DELLINK {
					ev = linkEvent(u.Link)
				}
				if !emit(ev) {
					return
				}
			case <-retry.C:
				if err := sub.start(); err != nil {
					log.Warn("cannot renew netlink subscription; retrying", "subscription", "link", telemetry.Err(err))
					retry.Reset(resubscribeDelay)
					continue
				}
				ev, _ := query() // a change may have been missed
				if !emit(ev) {
					return
				}
			}
		}
	}()
	return out, nil
}

func linkEvent(l netlink.Link) LinkEvent {
	a := l.Attrs()
	return LinkEvent{Up: a.RawFlags&unix.IFF_RUNNING != 0, MTU: a.MTU}
}
