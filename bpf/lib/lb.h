/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/* The hook-independent part of the pipeline: conntrack lookup, and on a miss
 * service lookup, endpoint selection and conntrack creation (ct.h). It
 * decides the translation; the hook's entry file applies it. */
#ifndef LL_LB_H
#define LL_LB_H

#include "ct.h"
#include "fw.h"
#include "fwd.h"

/* The whole decision for one packet; the hook's entry file applies it. */
struct ll_verdict {
	int reason;     /* LL_R_FWD, LL_R_FW_REDIRECT, or why the packet goes to Linux or is dropped */
	int nat_reason; /* LL_R_NAT_NEW / LL_R_NAT_EST when translated, else 0 */
	__u32 mark;     /* TC: the firewall's skb->mark, 0 = leave it */
	struct ll_nat nat;
	struct ll_fwd fwd; /* LL_R_FW_REDIRECT: only ifindex */
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

/* Least active flows per weight among the endpoints. */
static __always_inline int ll_select_lc(const struct ll_svc *svc, __u32 *ep_idx)
{
	__u64 best_load = 0, best_w = 0;
	int found = 0;

	for (__u32 i = 0; i < LL_MAX_ENDPOINTS; i++) {
		__u32 idx = svc->id * LL_MAX_ENDPOINTS + i, *active;
		__u64 w;

		if (i >= svc->n_endpoints)
			break;
		w = svc->endpoints[i].weight;
		active = bpf_map_lookup_elem(&ll_ep_active, &idx);
		if (!w || !active)
			continue;
		/* active/w < best_load/best_w, without division */
		if (!found || (__u64)*active * best_w < best_load * w) {
			best_load = *active;
			best_w = w;
			*ep_idx = i;
			found = 1;
		}
	}
	return found ? 0 : -1;
}

/* The endpoint a client is stuck to, if it has been active recently and that
 * endpoint is still in the list. */
static __always_inline int ll_persist_lookup(const struct ll_svc *svc, __be32 client,
					     __u32 *ep_idx)
{
	struct ll_persist_key pk = {.svc_id = svc->id, .client = client};
	struct ll_persist *ps = bpf_map_lookup_elem(&ll_persist, &pk);
	__u64 now = bpf_ktime_get_ns();
	const struct ll_endpoint *ep;
	__u32 i;

	if (!ps || now - ps->last_ns >= (__u64)svc->persist_s * 1000000000ULL)
		return -1;
	i = ps->ep_idx;
	if (i >= LL_MAX_ENDPOINTS || i >= svc->n_endpoints)
		return -1;
	ep = &svc->endpoints[i];
	if (ep->addr != ps->ep_addr || ep->port != ps->ep_port)
		return -1;
	ps->last_ns = now;
	*ep_idx = i;
	return 0;
}

static __always_inline void ll_persist_store(const struct ll_svc *svc, __be32 client, __u32 i)
{
	struct ll_persist_key pk = {.svc_id = svc->id, .client = client};
	const struct ll_endpoint *ep;
	struct ll_persist *fresh;
	__u32 zero = 0;

	fresh = bpf_map_lookup_elem(&ll_persist_scratch, &zero);
	if (!fresh || i >= LL_MAX_ENDPOINTS)
		return;
	ep = &svc->endpoints[i];
	fresh->ep_addr = ep->addr;
	fresh->ep_port = ep->port;
	fresh->ep_idx = i;
	fresh->last_ns = bpf_ktime_get_ns();
	bpf_map_update_elem(&ll_persist, &pk, fresh, BPF_ANY);
}

/* A subprogram of its own: inlined, its locals would push the pipeline's
 * frame past the 512-byte stack. */
static __noinline int ll_select(const struct ll_svc *svc, const struct ll_ct_key *key,
				__be32 client, __u32 *ep_idx)
{
	__u32 slot, *cur;

	switch (svc->sel) {
	case LL_SEL_HASH:
		slot = ll_flow_hash(key) % svc->n_slots;
		break;
	case LL_SEL_PRIORITY:
		slot = bpf_get_prandom_u32() % svc->n_slots;
		break;
	case LL_SEL_MAGLEV: {
		struct ll_maglev *m = bpf_map_lookup_elem(&ll_maglev, &svc->id);

		slot = ll_flow_hash(key) % LL_MAGLEV_SIZE;
		/* Hide the bound from clang, which would drop the check the
		 * verifier needs (it cannot follow the modulo). */
		asm volatile("" : "+r"(slot));
		if (!m || slot >= LL_MAGLEV_SIZE)
			return -1;
		*ep_idx = m->slots[slot];
		return 0;
	}
	case LL_SEL_LC:
		return ll_select_lc(svc, ep_idx);
	case LL_SEL_PERSIST:
		if (!ll_persist_lookup(svc, client, ep_idx))
			return 0;
		/* not stuck yet: round robin, then stick */
		/* fallthrough */
	default:
		cur = bpf_map_lookup_elem(&ll_rr_cursor, &svc->id);
		if (!cur)
			return -1;
		slot = __sync_fetch_and_add(cur, 1) % svc->n_slots;
	}
	*ep_idx = svc->slots[slot & (LL_MAX_SLOTS - 1)];
	if (svc->sel == LL_SEL_PERSIST)
		ll_persist_store(svc, client, *ep_idx);
	return 0;
}

/* Not load-balancer traffic: not a VIP and not in conntrack. */
#define LL_LB_NONE (-2)

/* How service svc's flows reach endpoint ep, for the first packet p of a
 * flow that came in on interface ingress: fills *nat, or returns the reason
 * to hand p to Linux. */
static __always_inline int ll_lb_translation(const struct ll_svc *svc,
					     const struct ll_endpoint *ep,
					     const struct ll_pkt *p, __u32 ingress,
					     struct ll_nat *nat)
{
	nat->to.saddr = p->saddr;
	nat->to.daddr = ep->addr;
	nat->to.sport = p->sport;
	nat->to.dport = ep->port;
	nat->xlate = LL_XLATE_DST;
	switch (svc->mode) {
	case LL_MODE_DSR:
		/* Routed to the endpoint, which holds the VIP: ports stay. */
		nat->to.dport = p->dport;
		nat->xlate = LL_XLATE_DSR;
		return 0;
	case LL_MODE_ONEARM:
	case LL_MODE_FULLNAT:
		/* The source port is claimed with the flow's entries. */
		nat->xlate = LL_XLATE_BOTH;
		return ll_nat_source(ep->addr, svc->mode == LL_MODE_ONEARM, ingress,
				     &nat->to.saddr);
	default:
		return 0;
	}
}

/* A packet that found no flow: picks the service's endpoint and creates the
 * flow. Returns LL_R_NAT_NEW with *nat filled in, LL_LB_NONE, LL_CT_RACED,
 * or the reason to hand the VIP's packet to Linux as it is. */
static __always_inline int ll_lb_new_flow(const struct ll_pkt *p, __u32 ingress,
					  const struct ll_ct_key *key, struct ll_nat *nat)
{
	struct ll_svc_key skey = {.vip = p->daddr, .port = p->dport, .proto = p->proto};
	struct ll_endpoint *ep;
	struct ll_svc *svc;
	__u32 ep_idx, idx, *active;
	int r;

	svc = bpf_map_lookup_elem(&ll_services, &skey);
	if (!svc)
		return LL_LB_NONE;
	if (svc->n_slots == 0 || svc->n_slots > LL_MAX_SLOTS)
		return LL_R_PASS_NO_ENDPOINT;

	if (ll_select(svc, key, p->saddr, &ep_idx))
		return LL_R_PASS_NO_ENDPOINT;
	if (ep_idx >= LL_MAX_ENDPOINTS || ep_idx >= svc->n_endpoints)
		return LL_R_PASS_NO_ENDPOINT;
	ep = &svc->endpoints[ep_idx];
	r = ll_lb_translation(svc, ep, p, ingress, nat);
	if (r)
		return r;

	r = ll_ct_create(p, key, nat, svc->id, ep_idx);
	if (r)
		return r;
	ll_count_flow(svc->id, ep_idx, p->len);
	/* Least-connections load: the daemon takes ended flows away. */
	idx = svc->id * LL_MAX_ENDPOINTS + ep_idx;
	active = bpf_map_lookup_elem(&ll_ep_active, &idx);
	if (active)
		__sync_fetch_and_add(active, 1);
	return LL_R_NAT_NEW;
}

/* A new flow the firewall let in that is not load balanced: both entries,
 * untranslated (nat is scratch space), with the rule's mark. Returns
 * LL_LB_NONE, LL_CT_RACED or the reason to hand p to Linux. */
static __always_inline int ll_fw_track(const struct ll_pkt *p, const struct ll_ct_key *key,
				       struct ll_nat *nat, __u32 mark)
{
	int r;

	nat->to.saddr = p->saddr;
	nat->to.daddr = p->daddr;
	nat->to.sport = p->sport;
	nat->to.dport = p->dport;
	nat->xlate = LL_XLATE_NONE;
	r = ll_ct_create(p, key, nat, LL_SVC_NONE, mark);
	return r ? r : LL_LB_NONE;
}

/* ll_lb_decide: the packet belongs to no tracked flow. */
#define LL_CT_MISS (-6)

/* A packet of a tracked flow, whose entry (*key, hit) it matched:
 * LL_R_NAT_EST with v->nat filled in, or LL_LB_NONE for a flow the firewall
 * let in untranslated. Flows the firewall let in set v->mark. */
static __always_inline int ll_ct_follow(const struct ll_pkt *p, const struct ll_ct_key *key,
					struct ll_ct *hit, struct ll_verdict *v)
{
	ll_ct_touch(p, key, hit);
	if (hit->svc_id == LL_SVC_NONE) {
		v->mark = hit->ep_idx;
		if (hit->xlate == LL_XLATE_NONE)
			return LL_LB_NONE;
	} else {
		ll_count_flow(hit->svc_id, hit->ep_idx, p->len);
	}
	v->nat.to = hit->nat;
	v->nat.xlate = hit->xlate;
	return LL_R_NAT_EST;
}

static __always_inline void ll_ct_key_of(const struct ll_pkt *p, struct ll_ct_key *key)
{
	key->saddr = p->saddr;
	key->daddr = p->daddr;
	key->sport = p->sport;
	key->dport = p->dport;
	key->proto = p->proto;
}

/* For an IPv4 packet of a tracked flow: as ll_ct_follow; otherwise
 * LL_CT_MISS. Packets without ports are tracked by protocol and addresses
 * (ports 0). */
static __noinline int ll_lb_decide(const struct ll_pkt *p, struct ll_verdict *v)
{
	struct ll_ct_key key = {};
	struct ll_ct *hit;

	ll_ct_key_of(p, &key);
	hit = bpf_map_lookup_elem(&ll_conntrack, &key);
	if (!hit)
		return LL_CT_MISS;
	return ll_ct_follow(p, &key, hit, v);
}

/* A new flow that a firewall SNAT or masquerade rule let in and that is not
 * load balanced: v->nat.to holds the source to translate to (ll_fw_first);
 * the port is claimed with the flow's entries. LL_R_NAT_NEW, LL_CT_RACED or
 * the reason to drop p or hand it to Linux. */
static __always_inline int ll_fw_snat(const struct ll_pkt *p, const struct ll_ct_key *key,
				      struct ll_verdict *v)
{
	int r = 0;

	if (!v->nat.to.saddr)
		r = ll_nat_source(p->daddr, 0, 0, &v->nat.to.saddr);
	if (r)
		return r;
	v->nat.to.daddr = p->daddr;
	v->nat.to.dport = p->dport;
	v->nat.xlate = LL_XLATE_SRC;
	r = ll_ct_create(p, key, &v->nat, LL_SVC_NONE, v->mark);
	return r ? r : LL_R_NAT_NEW;
}

/* For the first packet of an IPv4 flow that came in on interface ingress,
 * once the firewall has let it in (fw: LL_FW_OFF, LL_FW_ALLOWED or
 * LL_FW_TRANSLATE): LL_R_NAT_NEW with v->nat filled in, LL_LB_NONE, or the
 * reason to hand the packet to Linux as it is (or drop it). With the
 * firewall active every flow is tracked, so that replies pass without a
 * rule walk and the other side cannot open flows of its own. Load-balanced
 * flows are translated as their service says, never by SNAT rules. */
static __noinline int ll_lb_first(const struct ll_pkt *p, __u32 ingress, struct ll_verdict *v,
				  int fw)
{
	struct ll_ct_key key = {};
	struct ll_ct *hit;
	int r;

	ll_ct_key_of(p, &key);
	r = p->has_ports ? ll_lb_new_flow(p, ingress, &key, &v->nat) : LL_LB_NONE;
	if (r == LL_LB_NONE && fw == LL_FW_TRANSLATE)
		r = ll_fw_snat(p, &key, v);
	else if (r == LL_LB_NONE && fw == LL_FW_ALLOWED)
		r = ll_fw_track(p, &key, &v->nat, v->mark);
	if (r != LL_CT_RACED)
		return r;
	/* Another CPU created this flow first: follow its choice. */
	hit = bpf_map_lookup_elem(&ll_conntrack, &key);
	if (!hit)
		return LL_R_PASS_CT_FULL;
	return ll_ct_follow(p, &key, hit, v);
}

/* A packet of a tracked IPv6 flow, whose entry (*key, hit) it matched. */
static __always_inline int ll_ct6_follow(const struct ll_pkt *p, const struct ll_ct6_key *key,
					 struct ll_ct *hit, struct ll_verdict *v)
{
	ll_ct6_touch(p, key, hit);
	v->mark = hit->ep_idx;
	return LL_LB_NONE;
}

/* For an IPv6 packet of a tracked flow: LL_LB_NONE (v->mark set);
 * otherwise LL_CT_MISS. */
static __noinline int ll_ct6_decide(const struct ll_pkt *p, struct ll_verdict *v)
{
	struct ll_ct6_key key = {};
	struct ll_ct *hit;

	ll_ct6_key_of(p, &key);
	hit = bpf_map_lookup_elem(&ll_conntrack6, &key);
	return hit ? ll_ct6_follow(p, &key, hit, v) : LL_CT_MISS;
}

/* For the first packet of an IPv6 flow the firewall let in: tracks the
 * flow. LL_LB_NONE, or the reason to hand the packet to Linux. */
static __noinline int ll_ct6_first(const struct ll_pkt *p, struct ll_verdict *v)
{
	struct ll_ct6_key key = {};
	struct ll_ct *hit;
	int r;

	ll_ct6_key_of(p, &key);
	r = ll_ct6_create(p, &key, v->mark);
	if (r != LL_CT_RACED)
		return r ? r : LL_LB_NONE;
	/* Another CPU created this flow first. */
	hit = bpf_map_lookup_elem(&ll_conntrack6, &key);
	return hit ? ll_ct6_follow(p, &key, hit, v) : LL_R_PASS_CT_FULL;
}

#endif
