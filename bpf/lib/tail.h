/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/* Programs entered by tail call from the entry programs (the NAT64 and
 * ICMP-error translators), each verified on its own: the entry programs'
 * verifier budget has no room for them. The entry program hands over the
 * parsed packet in the per-CPU ll_tail; the translator decides, rewrites
 * and forwards. */
#ifndef LL_TAIL_H
#define LL_TAIL_H

#include "lb.h"

/* Slots of ll_tc_tails and ll_xdp_tails. */
#define LL_TAIL_NAT64 0
#define LL_TAIL_ICMP 1
#define LL_TAIL_FIRST 2 /* the first packet of a flow (pipeline.h) */
#define LL_TAILS 3

#define LL_IP4_HLEN 20
#define LL_IP6_HLEN 40
/* How much longer an IPv6 header is than an IPv4 one without options. */
#define LL_NAT64_GROWTH (LL_IP6_HLEN - LL_IP4_HLEN)

/* What an entry program hands its translator, and what the translator
 * decides, per CPU (a tail call keeps the CPU). */
struct ll_tail {
	struct ll_pkt p;    /* as parsed by the entry program */
	struct ll_pkt q;    /* p after translation, for forwarding */
	__u32 ingress;
	__u32 mtu_len;      /* p's L3 length for the MTU check, 0 for GSO */
	__u32 mark;         /* the service's skb->mark (TC), 0: none */
	__u32 pad;
	struct ll_fwd fwd;
	struct ll_ct6_key quoted6; /* an ICMPv6 error's quoted tuple after translation */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ll_tail);
} ll_tail SEC(".maps");

/* The slot of the program that ll_pipeline's verdict hands the packet to,
 * or -1. */
static __always_inline int ll_tail_slot(int reason)
{
	switch (reason) {
	case LL_GO_NAT64:
		return LL_TAIL_NAT64;
	case LL_GO_ICMP:
		return LL_TAIL_ICMP;
	case LL_GO_FIRST:
		return LL_TAIL_FIRST;
	default:
		return -1;
	}
}

/* Hands packet p to the translator: fills ll_tail; 0 when it can go. */
static __always_inline int ll_tail_fill(const struct ll_pkt *p, __u32 ingress, __u32 mtu_len)
{
	__u32 zero = 0;
	struct ll_tail *t = bpf_map_lookup_elem(&ll_tail, &zero);

	if (!t)
		return -1;
	t->p = *p;
	t->ingress = ingress;
	t->mtu_len = mtu_len;
	return 0;
}

static __always_inline __u16 ll_csum_fold(__u32 c)
{
	c = (c & 0xffff) + (c >> 16);
	c = (c & 0xffff) + (c >> 16);
	return (__u16)c;
}

/* Checksum check after adding diff (a bpf_csum_diff result) to what it covers. */
static __always_inline __u16 ll_csum_apply(__u16 check, __u32 diff)
{
	__u64 s = (__u64)(__u16)~check + diff;

	s = (s & 0xffffffff) + (s >> 32);
	return ~ll_csum_fold((__u32)s);
}

/* Where the translated packet t->q (its family, addresses and ports set by
 * the translator) goes: LL_R_FWD with t->fwd, or the reason to hand it,
 * translated, to Linux. */
static __noinline int ll_tail_forward(struct ll_tail *t)
{
	struct ll_pkt *q = &t->q;
	const struct ll_pkt *p = &t->p;
	__u8 daddr[16] = {};
	__u32 mtu_len = t->mtu_len;

	q->l3_off = p->l3_off;
	q->l4_off = p->l3_off + (q->family == LL_AF_INET ? LL_IP4_HLEN : LL_IP6_HLEN);
	q->proto = p->proto;
	q->ttl = p->ttl;
	q->l2_mcast = p->l2_mcast;
	__builtin_memcpy(q->dmac, p->dmac, 6);
	if (q->family == LL_AF_INET)
		__builtin_memcpy(daddr, &q->daddr, 4);
	else
		__builtin_memcpy(daddr, q->daddr6, 16);
	/* A header of the other family: NAT64 grows or shrinks the packet. */
	if (mtu_len && q->family != p->family)
		mtu_len = q->family == LL_AF_INET ? mtu_len - LL_NAT64_GROWTH
						  : mtu_len + LL_NAT64_GROWTH;
	return ll_fwd_lookup(t->ingress, q, daddr, ll_pkt_hash(q, q->daddr), mtu_len, &t->fwd);
}

#endif
