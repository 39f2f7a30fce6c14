// Package dns is the client's stub resolver for DNS resources: a sans-IO core (no goroutines, no sockets,
// the clock passed in) that the tunnel and the driver in client/dns/server feed with DNS queries sent to the
// sentinel addresses. A driver that owns the core itself performs its forwards with client/dns/server's
// Exchanger.
//
// Configuration: each upstream resolver (the portal's upstream_dns, else the nameservers of the system's
// resolv.conf) gets a sentinel of its family, 100.100.111.n or fd00:2021:1111:8000:100:100:111:n. An upstream
// inside the tunnel, proxy or sentinel ranges, or on the stub's own listen addresses, is skipped (WARN, and
// listed by Resolver.Skipped as a *ReservedUpstreamError, errors.Is ErrReservedUpstream) and the others are
// used; New fails with ErrNoUpstreams only when none is left.
//
// Queries for resource names (see dnspattern.Pattern for the exact wildcard rules; the most specific pattern wins):
//
//	A / AAAA      4 proxy IPs from 100.96.0.0/11 / fd00:2021:1111:8000::/107, stable for the name for the life
//	              of the Resolver, TTL 1 s; the family excluded by the resource's ip_stack → NOERROR, empty
//	HTTPS / SVCB  NOERROR, no answers (RFC 9460 client fallback to A/AAAA)
//	other types   NOERROR, empty; SRV and TXT too (never forwarded: that would leak resource names to public
//	              DNS; Firezone recurses them through the resource's site, a job for the tunnel layer)
//	PTR           for an assigned proxy IP → the name; for an unassigned proxy IP → NXDOMAIN; else forwarded
//
// Every new (name, resource) assignment is reported once as a NameAssigned event (PollEvent).
//
// Everything else is forwarded: PollForward yields "query Q to upstream U over UDP|TCP" (ThroughTunnel when U
// lies inside a CIDR resource); the driver answers with HandleUpstreamResponse / HandleUpstreamError, or, for
// answers that arrive as raw packets, HandleUpstreamPacket (matched by upstream, DNS id and question, see
// AnswerMatchesQuery). Every query gets an answer except a UDP query whose upstream timed out (the application
// retries, as without snowgate):
// upstream errors, malformed answers and answers to another question become SERVFAIL, malformed queries
// FORMERR, other opcodes NOTIMP.
// UDP answers larger than min(1212, max(512, the query's EDNS0 size)) are cut after the question with TC set,
// keeping the answer's OPT record when the query had one (RFC 6891 §7; without its options if they do not fit).
// Nothing is cached, so truncated answers are never cached either.
//
// DNS over TCP: HandleTCPAccept enforces MaxTCPConnsPerSentinel. An upstream TCP error (refused, reset, closed
// mid-query, timeout) answers SERVFAIL on the application's connection, which stays open.
//
// Roam (a network change) lists every in-flight forward to abandon (the driver resets its upstream sockets;
// later queries get new ones, with new local ports). TCP queries in flight are answered SERVFAIL; UDP ones
// are forwarded again under new IDs, keeping their original deadlines, so that the application never sees
// the roam (glibc's resolver fails a lookup on SERVFAIL). The applications' TCP connections to the
// sentinels are kept for their next queries.
//
// Timeouts: every forward carries a deadline (Config.UpstreamTimeout after the query); PollTimeout gives the
// earliest and HandleTimeout expires what is due, listing the forwards whose exchanges the driver abandons.
// These deadlines are the one source of upstream timeouts: drivers keep no timers of their own. When an application closes
// its connection (HandleTCPClose), its queries in flight are dropped unanswered and their forwards listed for
// the driver to cancel (it closes their upstream sockets); no forward is shared between queries, so identical
// queries elsewhere keep theirs.
//
// Metrics (Config.MeterProvider): snowgate.client.dns.queries by outcome (local, forwarded, servfail, dropped,
// truncated, formerr, notimp) and snowgate.client.dns.upstream.answers.dropped by reason (source, id,
// question, malformed, late; see AnswerDropReason): upstream answers dropped by the core, or by a driver that
// reports them with ReportDroppedAnswer.
package dns
