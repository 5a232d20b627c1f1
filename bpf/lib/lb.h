/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/* The hook-independent part of the pipeline: conntrack lookup, and on a miss
 * service lookup, endpoint selection and conntrack creation (ct.h). It
 * decides the translation; the hook's entry file applies it. */
#ifndef LL_LB_H
#define LL_LB_H

#include "ct.h"
#include "stats.h"

/* The translation to apply to one packet. */
struct ll_nat {
	__be32 addr;
	__be16 port;
	__u8 rewrite_dst; /* 1: destination (original direction), 0: source (reply) */
};

static __always_inline __u32 ll_flow_hash(const struct ll_ct_key *k)
{
	__u32 h = k->saddr * 0x9e3779b1u;

	h ^= k->daddr;
	h ^= ((__u32)k->sport << 16) | k->dport;
	h ^= k->proto;
	/* murmur3 finaliser: spreads the bits so that % n_slots is fair */
	h ^= h >> 16;
	h *= 0x85ebca6bu;
	h ^= h >> 13;
	h *= 0xc2b2ae35u;
	h ^= h >> 16;
	return h;
}

static __always_inline void ll_count_flow(__u32 svc_id, __u32 ep_idx, __u32 len)
{
	ll_count(&ll_svc_stats, svc_id, len);
	ll_count(&ll_ep_stats, svc_id * LL_MAX_ENDPOINTS + ep_idx, len);
}

/* Not load-balancer traffic: not a VIP and not in conntrack. */
#define LL_LB_NONE (-2)

/* A packet that found no flow: picks the service's endpoint and creates the
 * flow. Returns LL_R_NAT_NEW with *nat filled in, LL_LB_NONE, LL_CT_RACED,
 * or the reason to hand the VIP's packet to Linux as it is. */
static __always_inline int ll_lb_new_flow(const struct ll_pkt *p, const struct ll_ct_key *key,
					  struct ll_nat *nat)
{
	struct ll_svc_key skey = {.vip = p->daddr, .port = p->dport, .proto = p->proto};
	struct ll_endpoint *ep;
	struct ll_svc *svc;
	__u32 slot, ep_idx;
	int r;

	svc = bpf_map_lookup_elem(&ll_services, &skey);
	if (!svc)
		return LL_LB_NONE;
	if (svc->n_slots == 0 || svc->n_slots > LL_MAX_SLOTS)
		return LL_R_PASS_NO_ENDPOINT;

	if (svc->sel == LL_SEL_HASH) {
		slot = ll_flow_hash(key) % svc->n_slots;
	} else {
		__u32 *cur = bpf_map_lookup_elem(&ll_rr_cursor, &svc->id);

		if (!cur)
			return LL_R_PASS_NO_ENDPOINT;
		slot = __sync_fetch_and_add(cur, 1) % svc->n_slots;
	}
	ep_idx = svc->slots[slot & (LL_MAX_SLOTS - 1)];
	if (ep_idx >= LL_MAX_ENDPOINTS || ep_idx >= svc->n_endpoints)
		return LL_R_PASS_NO_ENDPOINT;
	ep = &svc->endpoints[ep_idx];

	r = ll_ct_create(p, key, ep, svc->id, ep_idx);
	if (r)
		return r;
	ll_count_flow(svc->id, ep_idx, p->len);
	nat->addr = ep->addr;
	nat->port = ep->port;
	nat->rewrite_dst = 1;
	return LL_R_NAT_NEW;
}

/* For an IPv4 TCP/UDP packet: LL_R_NAT_NEW or LL_R_NAT_EST with *nat filled
 * in, LL_LB_NONE, or the reason to hand the VIP's packet to Linux as it is. */
static __noinline int ll_lb_decide(const struct ll_pkt *p, struct ll_nat *nat)
{
	struct ll_ct_key key = {
		.saddr = p->saddr,
		.daddr = p->daddr,
		.sport = p->sport,
		.dport = p->dport,
		.proto = p->proto,
	};
	struct ll_ct *hit;
	int r;

	hit = bpf_map_lookup_elem(&ll_conntrack, &key);
	if (!hit) {
		r = ll_lb_new_flow(p, &key, nat);
		if (r != LL_CT_RACED)
			return r;
		/* Another CPU created this flow first: follow its choice. */
		hit = bpf_map_lookup_elem(&ll_conntrack, &key);
		if (!hit)
			return LL_R_PASS_CT_FULL;
	}
	ll_ct_touch(p, &key, hit);
	ll_count_flow(hit->svc_id, hit->ep_idx, p->len);
	nat->addr = hit->nat_addr;
	nat->port = hit->nat_port;
	nat->rewrite_dst = hit->dir == LL_CT_ORIGINAL;
	return LL_R_NAT_EST;
}

#endif
