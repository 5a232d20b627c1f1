/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/* NAT64: IPv6 clients of an IPv6 VIP whose endpoints are IPv4 (a service of
 * LL_MODE_NAT64). The source becomes the LB's IPv4 address towards the
 * endpoint, with a port of its own, as in fullnat.
 *
 * The entry programs hand such packets to the translator programs by tail
 * call (ll_tc_nat64, ll_xdp_nat64): rebuilding the header and forwarding in
 * the other family would not fit the entry programs' verifier budget.
 *
 * A flow is kept in ll_conntrack6, its IPv4 side under IPv4-mapped
 * addresses (::ffff:a.b.c.d), so the state machine, ageing and listing see
 * an ordinary IPv6 flow: the client's entry translates to the mapped IPv4
 * tuple, the endpoint's back to the client's. Besides, its IPv4 reply tuple
 * holds a reservation in ll_conntrack: claiming it claims the source port
 * against fullnat's and SNAT's flows, and an IPv4 reply that hits it is sent
 * here. The daemon deletes a reservation whose flow is gone. */
#ifndef LL_NAT64_H
#define LL_NAT64_H

#include "tail.h"

/* a = ::ffff:v4 */
static __always_inline void ll_mapped(__u8 *a, __be32 v4)
{
	__builtin_memset(a, 0, 10);
	a[10] = 0xff;
	a[11] = 0xff;
	__builtin_memcpy(a + 12, &v4, 4);
}

/* The translated tuple t->q of a packet of a NAT64 flow, from its entry
 * ct: IPv4 from the client's entry (the mapped addresses' last 4 bytes),
 * IPv6 from the endpoint's. */
static __always_inline void ll_nat64_to(struct ll_tail *t, const struct ll_ct6 *ct)
{
	struct ll_pkt *q = &t->q;

	q->sport = ct->ct.nat.sport;
	q->dport = ct->ct.nat.dport;
	if (t->p.family == LL_AF_INET6) {
		q->family = LL_AF_INET;
		__builtin_memcpy(&q->saddr, ct->nat6.saddr + 12, 4);
		__builtin_memcpy(&q->daddr, ct->nat6.daddr + 12, 4);
	} else {
		q->family = LL_AF_INET6;
		__builtin_memcpy(q->saddr6, ct->nat6.saddr, 16);
		__builtin_memcpy(q->daddr6, ct->nat6.daddr, 16);
	}
}

/* A packet of a tracked NAT64 flow, whose entry (key, hit) it matched. */
static __always_inline int ll_nat64_follow(struct ll_tail *t, const struct ll_ct6_key *key,
					   struct ll_ct *hit)
{
	ll_ct_touch(1, &t->p, key, hit);
	ll_count_flow(hit->svc_id, hit->ep_idx, t->p.len);
	t->mark = ll_svc_mark(hit->svc_id);
	ll_nat64_to(t, (const struct ll_ct6 *)hit);
	return LL_R_NAT_EST;
}

/* The first packet of a flow to a NAT64 service (its key: *key): picks the
 * endpoint, the LB's source address and port, and creates the flow's
 * reservation and entries. LL_R_NAT_NEW, LL_CT_RACED, or the reason to hand
 * the packet to Linux untranslated (or drop it). */
static __noinline int ll_nat64_new(struct ll_tail *t, const struct ll_ct6_key *key)
{
	const struct ll_pkt *p = &t->p;
	struct ll_ct_key rkey4 = {.proto = p->proto, .dport = p->sport};
	struct ll_svc6_key sk = {.port = p->dport, .proto = p->proto};
	struct ll_tuple back = {.sport = p->dport, .dport = p->sport};
	struct ll_tuple to = {};
	struct ll_ct *res, *ct;
	struct ll_ct6_keys *k6;
	struct ll_endpoint *ep;
	struct ll_svc6 *svc6;
	struct ll_ct6 *ct6;
	__u32 ep_idx, idx, *active, zero = 0;
	__be32 src;
	int r;

	__builtin_memcpy(sk.vip, p->daddr6, 16);
	svc6 = bpf_map_lookup_elem(&ll_services6, &sk);
	k6 = bpf_map_lookup_elem(&ll_ct6_keys, &zero);
	if (!svc6 || !k6 || svc6->svc.mode != LL_MODE_NAT64)
		return LL_R_PASS_NO_ENDPOINT;
	if (svc6->svc.n_slots == 0 || svc6->svc.n_slots > LL_MAX_SLOTS)
		return LL_R_PASS_NO_ENDPOINT;
	if (ll_select(&svc6->svc, ll_pkt_hash(p, 0), ll_fold6(p->saddr6), &ep_idx))
		return LL_R_PASS_NO_ENDPOINT;
	if (ep_idx >= LL_MAX_ENDPOINTS || ep_idx >= svc6->svc.n_endpoints)
		return LL_R_PASS_NO_ENDPOINT;
	ep = &svc6->svc.endpoints[ep_idx];
	r = ll_nat_source(0, (const __u8 *)&ep->addr, 0, 0, (__u8 *)&src);
	if (r)
		return r;

	/* The reservation: untranslated, the endpoint's reply tuple. */
	res = ll_ct_build(0, p, svc6->svc.id, ep_idx);
	if (!res)
		return LL_R_PASS_CT_FULL;
	rkey4.saddr = ep->addr;
	rkey4.daddr = src;
	rkey4.sport = ep->port;
	ll_ct_set_dir(res, p, &to, LL_XLATE_64, LL_CT_REPLY);
	r = ll_nat_claim_port(0, &rkey4, res);
	if (r)
		return r;
	ll_ct_stat(0, LL_CT_STAT_CREATED);

	ct = ll_ct_build(1, p, svc6->svc.id, ep_idx);
	if (!ct)
		goto unreserve;
	ct6 = (struct ll_ct6 *)ct;
	/* The endpoint's entry, under the mapped reply tuple, back to the
	 * client's tuple. The reservation makes it ours: a stale one is
	 * replaced. */
	__builtin_memset(&k6->partner, 0, sizeof(k6->partner));
	ll_mapped(k6->partner.saddr, ep->addr);
	ll_mapped(k6->partner.daddr, src);
	k6->partner.sport = ep->port;
	k6->partner.dport = rkey4.dport;
	k6->partner.proto = p->proto;
	ll_ct_set_dir(ct, p, &back, LL_XLATE_64 | LL_XLATE_BOTH, LL_CT_REPLY);
	__builtin_memcpy(ct6->nat6.saddr, p->daddr6, 16);
	__builtin_memcpy(ct6->nat6.daddr, p->saddr6, 16);
	if (bpf_map_update_elem(&ll_conntrack6, &k6->partner, ct, BPF_ANY))
		goto unreserve;
	ll_ct_stat(1, LL_CT_STAT_CREATED);

	/* The client's entry, to the mapped IPv4 tuple. */
	to.sport = rkey4.dport;
	to.dport = ep->port;
	ll_ct_set_dir(ct, p, &to, LL_XLATE_64 | LL_XLATE_BOTH, LL_CT_ORIGINAL);
	ll_mapped(ct6->nat6.saddr, src);
	ll_mapped(ct6->nat6.daddr, ep->addr);
	r = bpf_map_update_elem(&ll_conntrack6, key, ct, BPF_NOEXIST);
	if (r) {
		ll_ct_undo(1, &k6->partner);
		ll_ct_undo(0, &rkey4);
		return r == -LL_EEXIST ? LL_CT_RACED : LL_R_PASS_CT_FULL;
	}
	ll_ct_stat(1, LL_CT_STAT_CREATED);

	ll_count_flow(svc6->svc.id, ep_idx, p->len);
	idx = svc6->svc.id * LL_MAX_ENDPOINTS + ep_idx;
	active = bpf_map_lookup_elem(&ll_ep_active, &idx);
	if (active)
		__sync_fetch_and_add(active, 1);
	t->mark = ll_svc_mark(svc6->svc.id);
	ll_nat64_to(t, ct6);
	return LL_R_NAT_NEW;
unreserve:
	ll_ct_undo(0, &rkey4);
	return LL_R_PASS_CT_FULL;
}

/* The translation of the packet in t->p: LL_R_NAT_NEW or LL_R_NAT_EST with
 * t->q and t->mark filled in, or the reason to hand it to Linux
 * untranslated (or drop it). A subprogram of its own. */
static __noinline int ll_nat64_decide(struct ll_tail *t)
{
	const struct ll_pkt *p = &t->p;
	struct ll_ct6_keys *k6;
	struct ll_ct *hit;
	__u32 zero = 0;
	int r;

	/* Header rebuilds assume the fixed headers right after Ethernet. */
	if (p->ip_options || p->vlan || p->l3_off != ETH_HLEN || !ll_l4_rewritable(p->proto))
		return LL_R_PASS_NAT64;
	k6 = bpf_map_lookup_elem(&ll_ct6_keys, &zero);
	if (!k6)
		return LL_R_PASS_CT_FULL;
	__builtin_memset(&k6->key, 0, sizeof(k6->key));
	if (p->family == LL_AF_INET6) {
		ll_ct6_key_of(p, &k6->key);
	} else {
		ll_mapped(k6->key.saddr, p->saddr);
		ll_mapped(k6->key.daddr, p->daddr);
		k6->key.sport = p->sport;
		k6->key.dport = p->dport;
		k6->key.proto = p->proto;
	}
	hit = bpf_map_lookup_elem(&ll_conntrack6, &k6->key);
	if (hit)
		return hit->xlate & LL_XLATE_64 ? ll_nat64_follow(t, &k6->key, hit) : LL_R_PASS_NAT64;
	/* An IPv4 reply whose flow is gone (its reservation outlived it). */
	if (p->family != LL_AF_INET6)
		return LL_R_PASS_NAT64;
	r = ll_nat64_new(t, &k6->key);
	if (r != LL_CT_RACED)
		return r;
	/* Another CPU created this flow first: follow its choice. */
	hit = bpf_map_lookup_elem(&ll_conntrack6, &k6->key);
	return hit ? ll_nat64_follow(t, &k6->key, hit) : LL_R_PASS_CT_FULL;
}

/* The IPv4 header of t->q, ready to be written: checksum computed, TTL as
 * the packet had it (forwarding decrements it), DF set as IPv6 forbids
 * fragmenting on the way. */
static __always_inline void ll_nat64_ip4(const struct ll_tail *t, __u8 tos, struct iphdr *ip)
{
	__s64 sum;

	__builtin_memset(ip, 0, sizeof(*ip));
	ip->version = 4;
	ip->ihl = 5;
	ip->tos = tos;
	ip->tot_len = bpf_htons(t->p.len - t->p.l3_off - LL_NAT64_GROWTH);
	ip->frag_off = bpf_htons(0x4000);
	ip->ttl = t->p.ttl;
	ip->protocol = t->p.proto;
	ip->saddr = t->q.saddr;
	ip->daddr = t->q.daddr;
	sum = bpf_csum_diff(0, 0, (__be32 *)ip, sizeof(*ip), 0);
	ip->check = ~ll_csum_fold((__u32)sum);
}

static __always_inline void ll_nat64_ip6(const struct ll_tail *t, __u8 tos, struct ipv6hdr *ip6)
{
	__builtin_memset(ip6, 0, sizeof(*ip6));
	ip6->version = 6;
	ip6->priority = tos >> 4;
	ip6->flow_lbl[0] = (tos & 0xf) << 4;
	ip6->payload_len = bpf_htons(t->p.len - t->p.l3_off - LL_IP4_HLEN);
	ip6->nexthdr = t->p.proto;
	ip6->hop_limit = t->p.ttl;
	__builtin_memcpy(&ip6->saddr, t->q.saddr6, 16);
	__builtin_memcpy(&ip6->daddr, t->q.daddr6, 16);
}

/* The L4 checksum change of the translation: the pseudo-header's addresses
 * (its length and protocol words sum the same in both families), as a
 * bpf_csum_diff value. The ports are patched on their own. */
static __always_inline __s64 ll_nat64_pseudo_diff(const struct ll_tail *t)
{
	__be32 v4[2];

	if (t->p.family == LL_AF_INET6) {
		v4[0] = t->q.saddr;
		v4[1] = t->q.daddr;
		/* saddr6 and daddr6 are adjacent in ll_pkt. */
		return bpf_csum_diff((__be32 *)t->p.saddr6, 32, v4, 8, 0);
	}
	v4[0] = t->p.saddr;
	v4[1] = t->p.daddr;
	return bpf_csum_diff(v4, 8, (__be32 *)t->q.saddr6, 32, 0);
}

#endif
