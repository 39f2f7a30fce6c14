// SPDX-License-Identifier: (GPL-2.0-only OR MIT)
//
// turnrouter: snowgate's TURN channel-data fast path in the kernel (XDP).
//
// For channels that userspace (relay/kernelpath) has installed in the maps,
// the program turns
//
//   - ChannelData from a client (UDP to the relay's TURN port) into a UDP
//     datagram from the allocation's relayed port to the peer, and
//   - a UDP datagram from a peer to a relayed port into ChannelData to the
//     client from the TURN port,
//
// rewriting Ethernet, IP and UDP headers in place and sending the frame back
// out of the interface it came in on (XDP_TX). The client and the peer may be
// of either address family (IPv4/IPv6 client × IPv4/IPv6 peer, both
// directions: eight combinations). The UDP checksum is updated incrementally
// from the received one (RFC 1624), so the payload is never summed.
//
// Everything else goes to the network stack untouched (XDP_PASS): unbound
// traffic, STUN, IP options and fragments, IPv6 extension headers, packets
// whose next hop userspace has not resolved or that leave through another
// interface, packets that would exceed the egress MTU, IPv4 datagrams without
// a UDP checksum bound for IPv6, and datagrams whose checksum field holds only
// the pseudo-header sum (CHECKSUM_PARTIAL: sent by a local socket through a
// veth, the checksum is to be filled in later and cannot be updated). The
// stack then delivers them to the relay's sockets, whose userspace path
// handles them exactly as before.
//
// Userspace owns the maps: it resolves the next hop (egress interface, MAC
// addresses, source address, MTU) of each direction when it installs a
// binding, and removes bindings when pion deletes the channel.

#include "defs.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define ETH_HLEN 14
#define IP4_HLEN 20
#define IP6_HLEN 40
#define UDP_HLEN 8
#define CD_HLEN 4
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define PROTO_UDP 17
#define OUT_TTL 64

// Configuration, set by the loader before loading (host byte order):
// datagrams to these ports are looked up as peer datagrams, all others as
// possible ChannelData.
volatile const __u16 relay_port_low = 49152;
volatile const __u16 relay_port_high = 65535;

// Addresses are 16 bytes; IPv4 addresses are IPv4-mapped (::ffff:a.b.c.d).
// Ports and channel numbers are in network byte order.

// hop is where a rewritten frame goes: the egress interface (must be the
// ingress one), the MAC addresses, the source address and the egress MTU.
struct hop {
	__u8 src[16];
	__u8 smac[6];
	__u8 dmac[6];
	__u32 ifindex;
	__u16 mtu;
	__u16 pad;
};

// c2p: client → peer. Keyed by the client's address and channel.
struct c2p_key {
	__u8 client[16];
	__be16 client_port;
	__be16 channel;
};

struct c2p_val {
	struct hop hop;
	__u8 listen[16]; // the relay address the client sends to (zero: any)
	__u8 peer[16];
	__be16 listen_port; // the relay port the client sends to
	__be16 peer_port;
	__be16 relay_port;
	__u16 pad;
	__u32 slot; // index into chan_stats
};

// p2c: peer → client. Keyed by the peer's address and the relayed port.
struct p2c_key {
	__u8 peer[16];
	__be16 peer_port;
	__be16 relay_port;
};

struct p2c_val {
	struct hop hop;
	__u8 relay[16]; // the relayed address the peer sends to (zero: any)
	__u8 client[16];
	__be16 client_port;
	__be16 listen_port;
	__be16 channel;
	__u16 pad;
	__u32 slot;
};

// chan_stats counts payload bytes (ChannelData data, peer datagram) and
// packets per channel and direction, per CPU.
struct chan_stats {
	__u64 c2p_packets;
	__u64 c2p_bytes;
	__u64 p2c_packets;
	__u64 p2c_bytes;
};

// Events (indexes of the events map): packets of installed bindings that the
// program left to the stack, and why.
enum event {
	EV_PASS_PARTIAL_CSUM = 0, // checksum field holds the pseudo-header sum
	EV_PASS_NO_CSUM,          // IPv4 without UDP checksum bound for IPv6
	EV_PASS_IFACE,            // the next hop is behind another interface (or unresolved)
	EV_PASS_MTU,              // the rewritten packet exceeds the egress MTU
	EV_PASS_MALFORMED,        // ChannelData length does not match the datagram
	EV_PASS_DEST,             // sent to another address than the binding's
	EV_ADJUST_FAILED,         // bpf_xdp_adjust_head refused (packet untouched)
	EV_TAIL_FAILED,           // bpf_xdp_adjust_tail refused (trailer left)
	// Totals of what the program relayed (the sums of chan_stats, kept
	// here too so that the relay's metrics read one entry).
	EV_C2P_PACKETS,
	EV_C2P_BYTES,
	EV_P2C_PACKETS,
	EV_P2C_BYTES,
	EV_MAX,
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536); // the loader sets the real size
	__type(key, struct c2p_key);
	__type(value, struct c2p_val);
} c2p SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct p2c_key);
	__type(value, struct p2c_val);
} p2c SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct chan_stats);
} chan_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, EV_MAX);
	__type(key, __u32);
	__type(value, __u64);
} events SEC(".maps");

struct eth {
	__u8 dst[6];
	__u8 src[6];
	__be16 proto;
};

struct ip4 {
	__u8 vihl;
	__u8 tos;
	__be16 len;
	__be16 id;
	__be16 frag;
	__u8 ttl;
	__u8 proto;
	__u16 csum;
	__u8 src[4];
	__u8 dst[4];
};

struct ip6 {
	__be32 vtcfl;
	__be16 plen;
	__u8 nexthdr;
	__u8 hlim;
	__u8 src[16];
	__u8 dst[16];
};

struct udp {
	__be16 sport;
	__be16 dport;
	__be16 len;
	__u16 csum;
};

// parsed is what the program keeps of a received UDP datagram: the headers
// are overwritten when the frame is rewritten.
struct parsed {
	__u8 src[16];
	__u8 dst[16];
	__u8 cd[4]; // first four payload bytes (the ChannelData header), if present
	__be16 sport;
	__be16 dport;
	__u16 ulen; // UDP length, host order
	__u16 csum; // UDP checksum field as received
	__u8 v6;
	__u8 has_cd;
};

static __always_inline void count_n(__u32 ev, __u64 v)
{
	__u64 *n = bpf_map_lookup_elem(&events, &ev);
	if (n)
		*n += v;
}

static __always_inline void count(__u32 ev)
{
	count_n(ev, 1);
}

static __always_inline int is_v4mapped(const __u8 *a)
{
	return *(const __u16 *)(a + 0) == 0 && *(const __u16 *)(a + 2) == 0 && *(const __u16 *)(a + 4) == 0 &&
	       *(const __u16 *)(a + 6) == 0 && *(const __u16 *)(a + 8) == 0 && *(const __u16 *)(a + 10) == 0xffff;
}

static __always_inline int is_zero(const __u8 *a)
{
	__u16 acc = 0;
#pragma unroll
	for (int i = 0; i < 16; i += 2)
		acc |= *(const __u16 *)(a + i);
	return acc == 0;
}

static __always_inline int addr_eq(const __u8 *a, const __u8 *b)
{
	__u16 diff = 0;
#pragma unroll
	for (int i = 0; i < 16; i += 2)
		diff |= *(const __u16 *)(a + i) ^ *(const __u16 *)(b + i);
	return diff == 0;
}

// Ones-complement arithmetic on 16-bit words as they lie in memory (RFC
// 1071: the sum does not depend on the byte order as long as every word is
// taken the same way).

static __always_inline __u64 add_addr(__u64 acc, const __u8 *a, int v6)
{
	if (v6) {
#pragma unroll
		for (int i = 0; i < 16; i += 2)
			acc += *(const __u16 *)(a + i);
	} else {
		acc += *(const __u16 *)(a + 12);
		acc += *(const __u16 *)(a + 14);
	}
	return acc;
}

static __always_inline __u64 sub_addr(__u64 acc, const __u8 *a, int v6)
{
	if (v6) {
#pragma unroll
		for (int i = 0; i < 16; i += 2)
			acc += (__u16)~*(const __u16 *)(a + i);
	} else {
		acc += (__u16)~*(const __u16 *)(a + 12);
		acc += (__u16)~*(const __u16 *)(a + 14);
	}
	return acc;
}

static __always_inline __u16 fold(__u64 acc)
{
#pragma unroll
	for (int i = 0; i < 4; i++)
		acc = (acc & 0xffff) + (acc >> 16);
	return (__u16)acc;
}

// byte_word is a single byte's contribution to the sum at an even (odd = 0)
// or odd offset from the start of the UDP header.
static __always_inline __u16 byte_word(__u8 b, int odd)
{
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
	return odd ? (__u16)b << 8 : b;
#else
	return odd ? b : (__u16)b << 8;
#endif
}

// partial_csum reports whether the checksum field holds only the
// pseudo-header sum, as a socket's CHECKSUM_PARTIAL datagram does before
// the device fills in the checksum. A real checksum equals it once in 65536
// datagrams; those go to the stack too, which costs nothing but speed.
static __always_inline int partial_csum(const struct parsed *p)
{
	__u64 acc = 0;
	acc = add_addr(acc, p->src, p->v6);
	acc = add_addr(acc, p->dst, p->v6);
	acc += bpf_htons(PROTO_UDP);
	acc += bpf_htons(p->ulen);
	__u16 f = fold(acc);
	return p->csum == f || (f == 0 && p->csum == 0xffff);
}

// parse reads a plain Ethernet + IPv4 (no options, not a fragment) or IPv6
// (UDP as the next header) + UDP frame; non-zero for anything else.
static __always_inline int parse(struct xdp_md *ctx, struct parsed *p)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct eth *eth = data;
	struct udp *udp;
	__u32 iplen;

	if ((void *)(eth + 1) > end)
		return -1;
	if (eth->proto == bpf_htons(ETH_P_IP)) {
		struct ip4 *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > end)
			return -1;
		if (ip->vihl != 0x45 || ip->proto != PROTO_UDP || (ip->frag & bpf_htons(0x3fff)))
			return -1;
		udp = (void *)(ip + 1);
		if ((void *)(udp + 1) > end)
			return -1;
		iplen = bpf_ntohs(ip->len);
		if (iplen < IP4_HLEN + UDP_HLEN)
			return -1;
		p->ulen = bpf_ntohs(udp->len);
		if (p->ulen != iplen - IP4_HLEN)
			return -1;
		if ((long)(end - data) < (long)(ETH_HLEN + iplen))
			return -1;
		p->src[10] = 0xff;
		p->src[11] = 0xff;
		__builtin_memcpy(p->src + 12, ip->src, 4);
		p->dst[10] = 0xff;
		p->dst[11] = 0xff;
		__builtin_memcpy(p->dst + 12, ip->dst, 4);
		p->v6 = 0;
		if (p->ulen >= UDP_HLEN + CD_HLEN && (void *)udp + UDP_HLEN + CD_HLEN <= end) {
			__builtin_memcpy(p->cd, (void *)udp + UDP_HLEN, CD_HLEN);
			p->has_cd = 1;
		}
	} else if (eth->proto == bpf_htons(ETH_P_IPV6)) {
		struct ip6 *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > end)
			return -1;
		if (ip->nexthdr != PROTO_UDP)
			return -1;
		udp = (void *)(ip + 1);
		if ((void *)(udp + 1) > end)
			return -1;
		iplen = bpf_ntohs(ip->plen);
		p->ulen = bpf_ntohs(udp->len);
		if (p->ulen < UDP_HLEN || p->ulen != iplen)
			return -1;
		if ((long)(end - data) < (long)(ETH_HLEN + IP6_HLEN + iplen))
			return -1;
		__builtin_memcpy(p->src, ip->src, 16);
		__builtin_memcpy(p->dst, ip->dst, 16);
		// IPv4-mapped addresses on the wire would alias the IPv4 keys.
		if (is_v4mapped(p->src) || is_v4mapped(p->dst))
			return -1;
		p->v6 = 1;
		if (p->ulen >= UDP_HLEN + CD_HLEN && (void *)udp + UDP_HLEN + CD_HLEN <= end) {
			__builtin_memcpy(p->cd, (void *)udp + UDP_HLEN, CD_HLEN);
			p->has_cd = 1;
		}
	} else {
		return -1;
	}
	p->sport = udp->sport;
	p->dport = udp->dport;
	p->csum = udp->csum;
	return 0;
}

// out describes the frame to build.
struct out {
	const struct hop *hop;
	const __u8 *dst;
	__be16 sport;
	__be16 dport;
	__u16 payload; // bytes after the UDP (and ChannelData) header
	__u16 csum;    // UDP checksum to write
	__be16 channel;
	__u8 v6;
	__u8 add_cd; // prepend a ChannelData header (peer → client)
};

static __always_inline __u32 ip_hlen(int v6)
{
	return v6 ? IP6_HLEN : IP4_HLEN;
}

// emit moves the frame's start by delta (the payload stays where it is),
// writes the new headers in front of the payload, trims the tail to the new
// length and returns XDP_TX; XDP_PASS if the frame could not be moved (it is
// untouched then).
static __always_inline int emit(struct xdp_md *ctx, int delta, const struct out *o)
{
	if (bpf_xdp_adjust_head(ctx, delta)) {
		count(EV_ADJUST_FAILED);
		return XDP_PASS;
	}
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	__u16 udplen = UDP_HLEN + (o->add_cd ? CD_HLEN : 0) + o->payload;
	struct eth *eth = data;
	struct udp *udp;

	if ((void *)(eth + 1) > end)
		return XDP_ABORTED;
	__builtin_memcpy(eth->dst, o->hop->dmac, 6);
	__builtin_memcpy(eth->src, o->hop->smac, 6);
	if (o->v6) {
		struct ip6 *ip = (void *)(eth + 1);
		udp = (void *)(ip + 1);
		if ((void *)(udp + 1) > end)
			return XDP_ABORTED;
		eth->proto = bpf_htons(ETH_P_IPV6);
		ip->vtcfl = bpf_htonl(0x60000000);
		ip->plen = bpf_htons(udplen);
		ip->nexthdr = PROTO_UDP;
		ip->hlim = OUT_TTL;
		__builtin_memcpy(ip->src, o->hop->src, 16);
		__builtin_memcpy(ip->dst, o->dst, 16);
	} else {
		struct ip4 *ip = (void *)(eth + 1);
		udp = (void *)(ip + 1);
		if ((void *)(udp + 1) > end)
			return XDP_ABORTED;
		eth->proto = bpf_htons(ETH_P_IP);
		ip->vihl = 0x45;
		ip->tos = 0;
		ip->len = bpf_htons(IP4_HLEN + udplen);
		ip->id = 0;
		ip->frag = bpf_htons(0x4000); // DF, as the relay's sockets send
		ip->ttl = OUT_TTL;
		ip->proto = PROTO_UDP;
		ip->csum = 0;
		__builtin_memcpy(ip->src, o->hop->src + 12, 4);
		__builtin_memcpy(ip->dst, o->dst + 12, 4);
		__u64 acc = 0;
		const __u16 *w = (const __u16 *)ip;
#pragma unroll
		for (int i = 0; i < IP4_HLEN / 2; i++)
			acc += w[i];
		ip->csum = (__u16)~fold(acc);
	}
	udp->sport = o->sport;
	udp->dport = o->dport;
	udp->len = bpf_htons(udplen);
	udp->csum = o->csum;
	if (o->add_cd) {
		__u8 *cd = (void *)(udp + 1);
		if ((void *)(cd + CD_HLEN) > end)
			return XDP_ABORTED;
		*(__be16 *)cd = o->channel;
		*(__be16 *)(cd + 2) = bpf_htons(o->payload);
	}
	long want = ETH_HLEN + ip_hlen(o->v6) + udplen;
	long have = end - data;
	if (have > want && bpf_xdp_adjust_tail(ctx, (int)(want - have)))
		count(EV_TAIL_FAILED);
	return XDP_TX;
}

// check_hop: the frame may leave through the hop (same interface, fits).
static __always_inline int check_hop(struct xdp_md *ctx, const struct hop *h, int v6, __u32 udplen)
{
	if (h->ifindex != ctx->ingress_ifindex) {
		count(EV_PASS_IFACE);
		return 0;
	}
	if (ip_hlen(v6) + udplen > h->mtu) {
		count(EV_PASS_MTU);
		return 0;
	}
	return 1;
}

static __always_inline int client_to_peer(struct xdp_md *ctx, struct parsed *p)
{
	if (!p->has_cd || (p->cd[0] & 0xc0) != 0x40)
		return XDP_PASS;
	struct c2p_key key = {};
	__builtin_memcpy(key.client, p->src, 16);
	key.client_port = p->sport;
	key.channel = *(__be16 *)p->cd;
	struct c2p_val *v = bpf_map_lookup_elem(&c2p, &key);
	if (!v)
		return XDP_PASS;
	if (v->listen_port != p->dport || (!is_zero(v->listen) && !addr_eq(v->listen, p->dst))) {
		count(EV_PASS_DEST);
		return XDP_PASS;
	}
	__u16 len = ((__u16)p->cd[2] << 8) | p->cd[3];
	__u32 payload = p->ulen - UDP_HLEN;
	// ChannelData over UDP may be padded to a multiple of four bytes.
	if (CD_HLEN + (__u32)len > payload || payload - CD_HLEN - len > 3) {
		count(EV_PASS_MALFORMED);
		return XDP_PASS;
	}
	__u32 npad = payload - CD_HLEN - len;
	int out6 = !is_v4mapped(v->peer);
	if (!check_hop(ctx, &v->hop, out6, UDP_HLEN + len))
		return XDP_PASS;

	struct out o = {
		.hop = &v->hop,
		.dst = v->peer,
		.sport = v->relay_port,
		.dport = v->peer_port,
		.payload = len,
		.v6 = out6,
	};
	if (p->csum == 0) {
		// Only IPv4 may omit the checksum; IPv6 must have one.
		if (out6) {
			count(EV_PASS_NO_CSUM);
			return XDP_PASS;
		}
	} else {
		if (partial_csum(p)) {
			count(EV_PASS_PARTIAL_CSUM);
			return XDP_PASS;
		}
		__u8 pad[3] = {};
		__u32 padoff = ETH_HLEN + ip_hlen(p->v6) + UDP_HLEN + CD_HLEN + len;
		if (npad > 0 && bpf_xdp_load_bytes(ctx, padoff, &pad[0], 1))
			return XDP_PASS;
		if (npad > 1 && bpf_xdp_load_bytes(ctx, padoff + 1, &pad[1], 1))
			return XDP_PASS;
		if (npad > 2 && bpf_xdp_load_bytes(ctx, padoff + 2, &pad[2], 1))
			return XDP_PASS;
		__u16 ulen_in = bpf_htons(p->ulen), ulen_out = bpf_htons(UDP_HLEN + len);
		__u64 acc = (__u16)~p->csum;
		acc = sub_addr(acc, p->src, p->v6);
		acc = sub_addr(acc, p->dst, p->v6);
		acc += (__u16)~ulen_in; // pseudo-header
		acc += (__u16)~ulen_in; // UDP header
		acc += (__u16)~p->sport;
		acc += (__u16)~p->dport;
		acc += (__u16)~*(__u16 *)p->cd;
		acc += (__u16)~*(__u16 *)(p->cd + 2);
		// Padding starts at UDP offset 12 + len: odd when len is.
		if (npad > 0)
			acc += (__u16)~byte_word(pad[0], len & 1);
		if (npad > 1)
			acc += (__u16)~byte_word(pad[1], (len + 1) & 1);
		if (npad > 2)
			acc += (__u16)~byte_word(pad[2], len & 1);
		acc = add_addr(acc, v->hop.src, out6);
		acc = add_addr(acc, v->peer, out6);
		acc += ulen_out;
		acc += ulen_out;
		acc += v->relay_port;
		acc += v->peer_port;
		o.csum = (__u16)~fold(acc);
		if (o.csum == 0)
			o.csum = 0xffff;
	}
	__u32 slot = v->slot;
	int delta = (int)ip_hlen(p->v6) - (int)ip_hlen(out6) + CD_HLEN;
	int act = emit(ctx, delta, &o);
	if (act == XDP_TX) {
		struct chan_stats *s = bpf_map_lookup_elem(&chan_stats, &slot);
		if (s) {
			s->c2p_packets += 1;
			s->c2p_bytes += len;
		}
		count(EV_C2P_PACKETS);
		count_n(EV_C2P_BYTES, len);
	}
	return act;
}

static __always_inline int peer_to_client(struct xdp_md *ctx, struct parsed *p)
{
	struct p2c_key key = {};
	__builtin_memcpy(key.peer, p->src, 16);
	key.peer_port = p->sport;
	key.relay_port = p->dport;
	struct p2c_val *v = bpf_map_lookup_elem(&p2c, &key);
	if (!v)
		return XDP_PASS;
	if (!is_zero(v->relay) && !addr_eq(v->relay, p->dst)) {
		count(EV_PASS_DEST);
		return XDP_PASS;
	}
	__u32 len = p->ulen - UDP_HLEN;
	if (len > 0xffff - UDP_HLEN - CD_HLEN) {
		count(EV_PASS_MTU);
		return XDP_PASS;
	}
	int out6 = !is_v4mapped(v->client);
	if (!check_hop(ctx, &v->hop, out6, UDP_HLEN + CD_HLEN + len))
		return XDP_PASS;

	struct out o = {
		.hop = &v->hop,
		.dst = v->client,
		.sport = v->listen_port,
		.dport = v->client_port,
		.payload = len,
		.channel = v->channel,
		.v6 = out6,
		.add_cd = 1,
	};
	if (p->csum == 0) {
		if (out6) {
			count(EV_PASS_NO_CSUM);
			return XDP_PASS;
		}
	} else {
		if (partial_csum(p)) {
			count(EV_PASS_PARTIAL_CSUM);
			return XDP_PASS;
		}
		__u16 ulen_in = bpf_htons(p->ulen), ulen_out = bpf_htons(UDP_HLEN + CD_HLEN + len);
		__u64 acc = (__u16)~p->csum;
		acc = sub_addr(acc, p->src, p->v6);
		acc = sub_addr(acc, p->dst, p->v6);
		acc += (__u16)~ulen_in;
		acc += (__u16)~ulen_in;
		acc += (__u16)~p->sport;
		acc += (__u16)~p->dport;
		acc = add_addr(acc, v->hop.src, out6);
		acc = add_addr(acc, v->client, out6);
		acc += ulen_out;
		acc += ulen_out;
		acc += v->listen_port;
		acc += v->client_port;
		acc += v->channel;
		acc += bpf_htons((__u16)len);
		o.csum = (__u16)~fold(acc);
		if (o.csum == 0)
			o.csum = 0xffff;
	}
	__u32 slot = v->slot;
	int delta = (int)ip_hlen(p->v6) - (int)ip_hlen(out6) - CD_HLEN;
	int act = emit(ctx, delta, &o);
	if (act == XDP_TX) {
		struct chan_stats *s = bpf_map_lookup_elem(&chan_stats, &slot);
		if (s) {
			s->p2c_packets += 1;
			s->p2c_bytes += len;
		}
		count(EV_P2C_PACKETS);
		count_n(EV_P2C_BYTES, len);
	}
	return act;
}

SEC("xdp")
int turn_router(struct xdp_md *ctx)
{
	struct parsed p = {};
	if (parse(ctx, &p))
		return XDP_PASS;
	__u16 dport = bpf_ntohs(p.dport);
	if (dport >= relay_port_low && dport <= relay_port_high)
		return peer_to_client(ctx, &p);
	return client_to_peer(ctx, &p);
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
