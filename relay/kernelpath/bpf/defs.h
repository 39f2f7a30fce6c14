/* SPDX-License-Identifier: (GPL-2.0-only OR MIT) */
/*
 * The few kernel UAPI definitions turnrouter.c needs, so that it compiles
 * with nothing but clang and libbpf's bpf_helpers.h / bpf_endian.h (Debian
 * libbpf-dev): the system's <linux/bpf.h> pulls in <asm/types.h>, which
 * Debian keeps under an architecture-specific directory. Values are the
 * kernel's (include/uapi/linux/bpf.h), stable ABI.
 */
#ifndef SNOWGATE_DEFS_H
#define SNOWGATE_DEFS_H

typedef unsigned char __u8;
typedef signed char __s8;
typedef unsigned short __u16;
typedef signed short __s16;
typedef unsigned int __u32;
typedef signed int __s32;
typedef unsigned long long __u64;
typedef signed long long __s64;
typedef __u16 __be16;
typedef __u32 __be32;
typedef __u64 __be64;
typedef __u16 __sum16;
typedef __u32 __wsum;

enum bpf_map_type {
	BPF_MAP_TYPE_HASH = 1,
	BPF_MAP_TYPE_ARRAY = 2,
	BPF_MAP_TYPE_PERCPU_HASH = 5,
	BPF_MAP_TYPE_PERCPU_ARRAY = 6,
};

enum xdp_action {
	XDP_ABORTED = 0,
	XDP_DROP,
	XDP_PASS,
	XDP_TX,
	XDP_REDIRECT,
};

struct xdp_md {
	__u32 data;
	__u32 data_end;
	__u32 data_meta;
	__u32 ingress_ifindex;
	__u32 rx_queue_index;
	__u32 egress_ifindex;
};

#endif
