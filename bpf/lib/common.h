/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/* Shared definitions: map keys and values, limits, verdict reasons.
 * The daemon uses the Rust types that libbpf-cargo generates from this BTF,
 * so every struct here is the single definition of its layout. */
#ifndef LL_COMMON_H
#define LL_COMMON_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

/* Endpoints per service and selection slots per service. Weights are
 * expanded by the daemon into slots, so rr and hash both honour them. */
#define LL_MAX_ENDPOINTS 32
#define LL_MAX_SLOTS 128

/* Default sizes; the daemon overrides max_entries from its config before load. */
#define LL_DEFAULT_SERVICES 4096
#define LL_DEFAULT_CT 65536

enum ll_selection {
	LL_SEL_RR = 0,
	LL_SEL_HASH = 1,
};

/* Why a packet left the pipeline; counted per CPU in ll_reasons. */
enum ll_reason {
	LL_R_PASS_NOT_IP = 0,    /* not IPv4 (ARP, IPv6, ...): Linux's job */
	LL_R_PASS_TRUNCATED,     /* header shorter than it says: Linux decides */
	LL_R_PASS_BAD_HEADER,    /* IPv4 version, IHL or total length inconsistent */
	LL_R_PASS_FRAGMENT,      /* non-first fragment or MF set: no L4 header to NAT */
	LL_R_PASS_L4_PROTO,      /* neither TCP nor UDP */
	LL_R_PASS_NO_SERVICE,    /* not a VIP and not in conntrack */
	LL_R_PASS_NO_ENDPOINT,   /* VIP with no usable endpoint */
	LL_R_PASS_CT_FULL,       /* conntrack insert failed: untranslated to Linux */
	LL_R_NAT_NEW,            /* new flow, endpoint chosen, translated */
	LL_R_NAT_EST,            /* conntrack hit, translated */
	LL_R_DROP_REWRITE,       /* a rewrite helper failed midway: packet is corrupt */
	LL_R_PASS_CT_CLASH,      /* the endpoint-side tuple belongs to another live flow */
	LL_R_MAX,
};

struct ll_svc_key {
	__be32 vip;
	__be16 port;
	__u8 proto;
	__u8 pad;
};

struct ll_endpoint {
	__be32 addr;
	__be16 port;
	__u8 weight;
	__u8 pad;
};

/* One service: replaced whole by a single hash update, so the datapath never
 * sees a half-written endpoint set. */
struct ll_svc {
	__u32 id;           /* index into the per-service counter arrays */
	enum ll_selection sel;
	__u16 n_slots;      /* 0: no usable endpoint */
	__u8 n_endpoints;
	__u8 pad;
	struct ll_endpoint endpoints[LL_MAX_ENDPOINTS];
	__u8 slots[LL_MAX_SLOTS]; /* slot -> endpoint index */
};

struct ll_ct_key {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 pad[3];
};

enum ll_ct_dir {
	LL_CT_ORIGINAL = 0, /* client -> VIP: rewrite destination */
	LL_CT_REPLY = 1,    /* endpoint -> client: rewrite source */
};

enum ll_ct_state {
	LL_CT_NEW = 0,     /* first packet seen, no reply yet */
	LL_CT_EST = 1,     /* a reply was seen */
	LL_CT_FIN = 2,     /* FIN seen in either direction */
	LL_CT_CLOSED = 3,  /* RST seen */
};

/* Enum-typed fields (not __u8) so that the enums reach BTF and the skeleton.
 * Each direction is its own entry carrying its own translation; both share
 * the state, which the datapath writes into both on transitions. */
struct ll_ct {
	__be32 nat_addr;    /* new daddr (original) or new saddr (reply) */
	__be16 nat_port;
	__u16 pad;
	enum ll_ct_dir dir;
	enum ll_ct_state state;
	__u32 svc_id;
	__u32 ep_idx;
	__u64 packets;
	__u64 bytes;
	__u64 last_seen_ns;
};

struct ll_counters {
	__u64 packets;
	__u64 bytes;
};

#endif
