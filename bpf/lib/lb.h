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

static __always_inline __u32 ll_svc_mark(__u32 svc_id)
{
	struct ll_svc_opts *o = bpf_map_lookup_elem(&ll_svc_opts, &svc_id);

	return o ? o->mark : 0;
}

/* Whether a service takes new flows from this client: always, unless it
 * lists allowed sources. A subprogram: the LPM key stays off the
 * pipeline's frame. */
static __noinline int ll_source_allowed(__u32 svc_id, __be32 saddr)
{
	struct ll_svc_opts *o = bpf_map_lookup_elem(&ll_svc_opts, &svc_id);
	struct ll_src_key k = {.prefixlen = 64, .svc_id = bpf_htonl(svc_id)};

	if (!o || !(o->flags & LL_SVC_F_SOURCES))
		return 1;
	__builtin_memcpy(k.addr, &saddr, 4);
	return bpf_map_lookup_elem(&ll_svc_sources, &k) != NULL;
}

/* Whether the rewrite touches the L4 header: TCP and UDP, whose checksums
 * cover the addresses (pseudo-header) and the ports. The others keep theirs:
 * ICMP echo has no ports and its checksum covers no address; SCTP's CRC32c
 * covers no address either, and its ports never change (the daemon refuses
 * SCTP services that translate ports). */
static __always_inline int ll_l4_rewritable(__u8 proto)
{
	return proto == IPPROTO_TCP || proto == IPPROTO_UDP;
}

/* Whether p is an ICMP or ICMPv6 echo, whose identifier is its port. */
static __always_inline int ll_is_echo(const struct ll_pkt *p)
{
	return p->has_ports && (p->proto == IPPROTO_ICMP || p->proto == IPPROTO_ICMPV6);
}

/* The identifier ICMP echo p gets from translation nat: the port of the
 * side that holds it (a request's source, a reply's destination; the
 * other is 0, see ll_echo_ports). */
static __always_inline __be16 ll_echo_id(const struct ll_pkt *p, const struct ll_nat *nat)
{
	return (nat->xlate & LL_XLATE_SRC ? nat->to.sport : p->sport) |
	       (nat->xlate & LL_XLATE_DST ? nat->to.dport : p->dport);
}

/* The flow hash of a 5-tuple (selection, ECMP); ports: sport << 16 | dport. */
static __always_inline __u32 ll_flow_hash(__be32 saddr, __be32 daddr, __u32 ports, __u8 proto)
{
	__u32 h = saddr * 0x9e3779b1u;

	h ^= daddr;
	h ^= ports;
	h ^= proto;
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
	/* weight 0: the endpoint is down or draining, so the client moves */
	if (ep->addr != ps->ep_addr || ep->port != ps->ep_port || !ep->weight)
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
static __noinline int ll_select(const struct ll_svc *svc, __u32 hash, __be32 client,
				__u32 *ep_idx)
{
	__u32 slot, *cur;

	switch (svc->sel) {
	case LL_SEL_HASH:
		slot = hash % svc->n_slots;
		break;
	case LL_SEL_PRIORITY:
		slot = bpf_get_prandom_u32() % svc->n_slots;
		break;
	case LL_SEL_MAGLEV: {
		struct ll_maglev *m = bpf_map_lookup_elem(&ll_maglev, &svc->id);

		slot = hash % LL_MAGLEV_SIZE;
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

/* The first port (network order) of the port-range service of VIP vip and
 * protocol proto that holds dport, or 0. */
static __noinline __u32 ll_range_start(__be32 vip, __u32 proto, __u32 dport)
{
	struct ll_range_key k = {.vip = vip, .proto = proto};
	__u16 port = bpf_ntohs((__be16)dport);
	__u32 zero = 0, bit = ll_range_bit(vip);
	struct ll_range_vips *vips = bpf_map_lookup_elem(&ll_range_vips, &zero);
	struct ll_ranges *r;

	if (!vips || !((vips->bits[(bit >> 6) & (LL_RANGE_BITS / 64 - 1)] >> (bit & 63)) & 1))
		return 0;
	r = bpf_map_lookup_elem(&ll_svc_ranges, &k);
	if (!r)
		return 0;
	for (__u32 i = 0; i < LL_MAX_RANGES; i++) {
		if (i >= r->n)
			break;
		if (r->min[i] <= port && port <= r->max[i])
			return bpf_htons(r->min[i]);
	}
	return 0;
}

/* How service svc's flows reach endpoint ep, for the first packet p of a
 * flow that came in on interface ingress: fills *nat (an IPv6 flow's
 * addresses: to6, holding the client and the endpoint), or returns the
 * reason to hand p to Linux. */
static __always_inline int ll_lb_translation(int v6, const struct ll_svc *svc,
					     const struct ll_endpoint *ep,
					     const struct ll_pkt *p, __u32 ingress,
					     struct ll_nat *nat, struct ll_addrs6 *to6)
{
	int onearm = svc->mode == LL_MODE_ONEARM;

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
		if (v6)
			return ll_nat_source(1, to6->daddr, onearm, ingress, to6->saddr);
		return ll_nat_source(0, (const __u8 *)&ep->addr, onearm, ingress,
				     (__u8 *)&nat->to.saddr);
	default:
		return 0;
	}
}

/* Not load-balancer traffic: not a VIP and not in conntrack. */
#define LL_LB_NONE (-2)
/* A packet of a NAT64 service or flow: the translator's (nat64.h). */
#define LL_GO_NAT64 (-7)
/* An ICMP error about a tracked flow: the ICMP translator's (icmp.h). */
#define LL_GO_ICMP (-8)
/* A packet of no tracked flow: the first-packet program's (pipeline.h). */
#define LL_GO_FIRST (-9)

/* The 32-bit fold of an IPv6 address that stands in for it where IPv4 has
 * one (flow hash, persist, ll_svc6's endpoints); the daemon folds the same
 * way (src/datapath/service.rs fold6). */
static __always_inline __be32 ll_fold6(const __u8 *a)
{
	const __u32 *w = (const __u32 *)a;

	return w[0] ^ w[1] ^ w[2] ^ w[3];
}

/* The flow hash of packet p (selection, ECMP), over its IPv6 addresses
 * folded, or with the IPv4 destination daddr4. */
static __always_inline __u32 ll_pkt_hash(const struct ll_pkt *p, __be32 daddr4)
{
	__u32 ports = ((__u32)p->sport << 16) | p->dport;

	if (p->family == LL_AF_INET6)
		return ll_flow_hash(ll_fold6(p->saddr6), ll_fold6(p->daddr6), ports, p->proto);
	return ll_flow_hash(p->saddr, daddr4, ports, p->proto);
}

/* The service packet p is for: the IPv4 ll_svc, or the ll_svc inside the
 * IPv6 ll_svc6 (*svc6). IPv6 services have no port ranges. */
static __always_inline struct ll_svc *ll_svc_lookup(int v6, const struct ll_pkt *p,
						    struct ll_svc6 **svc6)
{
	struct ll_svc_key skey = {.vip = p->daddr, .port = p->dport, .proto = p->proto};
	struct ll_svc *svc;

	if (v6) {
		struct ll_svc6_key k6 = {.port = p->dport, .proto = p->proto};

		__builtin_memcpy(k6.vip, p->daddr6, 16);
		*svc6 = bpf_map_lookup_elem(&ll_services6, &k6);
		return *svc6 ? &(*svc6)->svc : 0;
	}
	svc = bpf_map_lookup_elem(&ll_services, &skey);
	if (svc)
		return svc;
	skey.port = ll_range_start(p->daddr, p->proto, p->dport);
	return skey.port ? bpf_map_lookup_elem(&ll_services, &skey) : 0;
}

/* A packet that found no flow: picks the service's endpoint and creates the
 * flow. Returns LL_R_NAT_NEW with *nat (and for IPv6 ll_nat6) filled in,
 * LL_LB_NONE, LL_CT_RACED, or the reason to hand the VIP's packet to Linux
 * as it is. */
static __always_inline int ll_lb_new_flow(int v6, const struct ll_pkt *p, __u32 ingress,
					  const void *key, struct ll_nat *nat)
{
	struct ll_addrs6 *to6 = 0;
	struct ll_svc6 *svc6 = 0;
	struct ll_endpoint *ep;
	struct ll_svc *svc;
	__u32 ep_idx, idx, *active, zero = 0;
	__be32 client = v6 ? ll_fold6(p->saddr6) : p->saddr;
	int r;

	/* Only an echo request starts an ICMP or ICMPv6 flow. */
	if ((p->proto == IPPROTO_ICMP && p->tcp_flags != LL_ICMP_ECHO) ||
	    (p->proto == IPPROTO_ICMPV6 && p->tcp_flags != LL_ICMP6_ECHO_REQUEST))
		return LL_LB_NONE;
	svc = ll_svc_lookup(v6, p, &svc6);
	if (!svc)
		return LL_LB_NONE;
	if (v6 && svc->mode == LL_MODE_NAT64)
		return LL_GO_NAT64;
	/* The daemon gives IPv6 services no allowed sources. */
	if (!v6 && !ll_source_allowed(svc->id, p->saddr))
		return LL_R_DROP_SOURCE;
	if (svc->n_slots == 0 || svc->n_slots > LL_MAX_SLOTS)
		return LL_R_PASS_NO_ENDPOINT;

	if (ll_select(svc, ll_pkt_hash(p, p->daddr), client, &ep_idx))
		return LL_R_PASS_NO_ENDPOINT;
	if (ep_idx >= LL_MAX_ENDPOINTS || ep_idx >= svc->n_endpoints)
		return LL_R_PASS_NO_ENDPOINT;
	ep = &svc->endpoints[ep_idx];
	if (v6) {
		to6 = bpf_map_lookup_elem(&ll_nat6, &zero);
		if (!to6 || !svc6)
			return LL_R_PASS_CT_FULL;
		__builtin_memcpy(to6->saddr, p->saddr6, 16);
		__builtin_memcpy(to6->daddr, svc6->addr[ep_idx], 16);
	}
	r = ll_lb_translation(v6, svc, ep, p, ingress, nat, to6);
	if (r)
		return r;
	if (v6) {
		/* ll_ct6's nat holds the ports only. */
		nat->to.saddr = 0;
		nat->to.daddr = 0;
	}

	r = ll_ct_create(v6, p, key, nat, svc->id, ep_idx);
	if (r)
		return r;
	ll_count_flow(svc->id, ep_idx, p->len);
	/* Least-connections load: the daemon takes ended flows away. */
	idx = svc->id * LL_MAX_ENDPOINTS + ep_idx;
	active = bpf_map_lookup_elem(&ll_ep_active, &idx);
	if (active)
		__sync_fetch_and_add(active, 1);
	nat->mark = ll_svc_mark(svc->id);
	return LL_R_NAT_NEW;
}

/* The new-flow path per family, each a subprogram of its own with only its
 * family's code, on a frame of its own: verified apart, its states do not
 * multiply those of ll_lb_first's other paths (inlined there, TC verified
 * 795k instructions and XDP over the 1M limit; apart, ~420k and ~605k). */
static __noinline int ll_lb_new_flow4(const struct ll_pkt *p, __u32 ingress, const void *key,
				      struct ll_nat *nat)
{
	return ll_lb_new_flow(0, p, ingress, key, nat);
}

static __noinline int ll_lb_new_flow6(const struct ll_pkt *p, __u32 ingress, const void *key,
				      struct ll_nat *nat)
{
	return ll_lb_new_flow(1, p, ingress, key, nat);
}

/* A new flow the firewall let in that is not load balanced: both entries,
 * untranslated (nat is scratch space), with the rule's mark. Returns
 * LL_LB_NONE, LL_CT_RACED or the reason to hand p to Linux. */
static __always_inline int ll_fw_track(int v6, const struct ll_pkt *p, const void *key,
				       struct ll_nat *nat, __u32 mark)
{
	__u32 zero = 0;
	int r;

	nat->to.saddr = p->saddr;
	nat->to.daddr = p->daddr;
	nat->to.sport = p->sport;
	nat->to.dport = p->dport;
	nat->xlate = LL_XLATE_NONE;
	if (v6) {
		struct ll_addrs6 *to6 = bpf_map_lookup_elem(&ll_nat6, &zero);

		if (!to6)
			return LL_R_PASS_CT_FULL;
		__builtin_memcpy(to6->saddr, p->saddr6, 16);
		__builtin_memcpy(to6->daddr, p->daddr6, 16);
	}
	r = ll_ct_create(v6, p, key, nat, LL_SVC_NONE, mark);
	return r ? r : LL_LB_NONE;
}

/* ll_lb_decide: the packet belongs to no tracked flow. */
#define LL_CT_MISS (-6)

/* A packet of a tracked flow, whose entry (*key, hit) it matched:
 * LL_R_NAT_EST with v->nat (and for IPv6 ll_nat6) filled in, or LL_LB_NONE
 * for a flow the firewall let in untranslated. Flows the firewall let in
 * set v->mark. */
static __always_inline int ll_ct_follow(int v6, const struct ll_pkt *p, const void *key,
					struct ll_ct *hit, struct ll_verdict *v)
{
	__u32 zero = 0;

	ll_ct_touch(v6, p, key, hit);
	if (hit->svc_id == LL_SVC_NONE) {
		v->mark = hit->ep_idx;
		if (hit->xlate == LL_XLATE_NONE)
			return LL_LB_NONE;
	} else {
		ll_count_flow(hit->svc_id, hit->ep_idx, p->len);
		v->nat.mark = ll_svc_mark(hit->svc_id);
	}
	v->nat.to = hit->nat;
	v->nat.xlate = hit->xlate;
	if (v6) {
		struct ll_addrs6 *to6 = bpf_map_lookup_elem(&ll_nat6, &zero);

		if (!to6)
			return LL_R_PASS_CT_FULL;
		*to6 = ((struct ll_ct6 *)hit)->nat6;
	}
	return LL_R_NAT_EST;
}

/* The conntrack key of packet p in its family's table: *k4, or for IPv6
 * the per-CPU scratch's (NULL if that is missing). */
static __always_inline void *ll_ct_key_of(int v6, const struct ll_pkt *p, struct ll_ct_key *k4)
{
	__u32 zero = 0;

	if (v6) {
		struct ll_ct6_keys *k6 = bpf_map_lookup_elem(&ll_ct6_keys, &zero);

		if (!k6)
			return 0;
		__builtin_memset(&k6->key, 0, sizeof(k6->key));
		ll_ct6_key_of(p, &k6->key);
		return &k6->key;
	}
	k4->saddr = p->saddr;
	k4->daddr = p->daddr;
	k4->sport = p->sport;
	k4->dport = p->dport;
	k4->proto = p->proto;
	return k4;
}

/* The conntrack entry that the reply to the packet an ICMP error quotes
 * would match (NULL if none). */
static __always_inline struct ll_ct *ll_icmp_flow(const struct ll_inner *in)
{
	struct ll_ct_key k = {
		.saddr = in->t.daddr,
		.daddr = in->t.saddr,
		.sport = in->t.dport,
		.dport = in->t.sport,
		.proto = in->proto,
	};

	return bpf_map_lookup_elem(&ll_conntrack, &k);
}

/* The conntrack entry an ICMPv6 error is about (parse.h), or NULL. */
static __always_inline struct ll_ct *ll_icmp6_flow(void)
{
	__u32 zero = 0;
	struct ll_ct6_keys *k6 = bpf_map_lookup_elem(&ll_ct6_keys, &zero);

	return k6 ? bpf_map_lookup_elem(&ll_conntrack6, &k6->icmp) : 0;
}

/* Whether ICMP error p is about a flow the ICMP translator handles:
 * tracked, neither NAT64 (whose errors would need ICMP translated into
 * ICMPv6 and back) nor DSR (whose replies bypass the LB). A subprogram:
 * its key stays off the caller's frame. */
static __noinline int ll_icmp_related(const struct ll_pkt *p)
{
	struct ll_ct *ct =
		p->family == LL_AF_INET6 ? ll_icmp6_flow() : ll_icmp_flow(&p->inner);

	return ct && !(ct->xlate & (LL_XLATE_64 | LL_XLATE_DSR));
}

/* For a packet of a tracked flow: as ll_ct_follow, or LL_GO_NAT64; for an
 * ICMP error about one, LL_GO_ICMP; otherwise LL_CT_MISS.
 * Packets without ports are tracked by protocol and addresses (ports 0). */
static __always_inline int ll_lb_decide(int v6, const struct ll_pkt *p, struct ll_verdict *v)
{
	struct ll_ct_key key4 = {};
	void *key = ll_ct_key_of(v6, p, &key4);
	struct ll_ct *hit;

	if (!key)
		return LL_R_PASS_CT_FULL;
	if (p->icmp_err && ll_icmp_related(p))
		return LL_GO_ICMP;
	hit = bpf_map_lookup_elem(LL_CT_MAP(v6), key);
	if (!hit)
		return LL_CT_MISS;
	return hit->xlate & LL_XLATE_64 ? LL_GO_NAT64 : ll_ct_follow(v6, p, key, hit, v);
}

/* A new flow that a firewall SNAT or masquerade rule let in and that is not
 * load balanced: v->nat.to (IPv6: ll_nat6) holds the source to translate
 * to (ll_fw_first); the port is claimed with the flow's entries.
 * LL_R_NAT_NEW, LL_CT_RACED or the reason to drop p or hand it to Linux. */
static __always_inline int ll_fw_snat(int v6, const struct ll_pkt *p, const void *key,
				      struct ll_verdict *v)
{
	struct ll_addrs6 *to6;
	__u32 zero = 0;
	int r = 0;

	if (v6) {
		to6 = bpf_map_lookup_elem(&ll_nat6, &zero);
		if (!to6)
			return LL_R_PASS_CT_FULL;
		if (ll_addr_zero(to6->saddr))
			r = ll_nat_source(1, p->daddr6, 0, 0, to6->saddr);
		__builtin_memcpy(to6->daddr, p->daddr6, 16);
		v->nat.to.saddr = 0;
		v->nat.to.daddr = 0;
	} else {
		if (!v->nat.to.saddr)
			r = ll_nat_source(0, (const __u8 *)&p->daddr, 0, 0, (__u8 *)&v->nat.to.saddr);
		v->nat.to.daddr = p->daddr;
	}
	if (r)
		return r;
	v->nat.to.dport = p->dport;
	v->nat.xlate = LL_XLATE_SRC;
	r = ll_ct_create(v6, p, key, &v->nat, LL_SVC_NONE, v->mark);
	return r ? r : LL_R_NAT_NEW;
}

/* A new flow the firewall let in (fw) that is not load balanced: tracked,
 * source-translated by a SNAT rule, or LL_LB_NONE. Per family a subprogram
 * of its own, as ll_lb_new_flow4/6 (inlined, ll_lb_first's frame pushes
 * the combined stack past 512 bytes). */
static __always_inline int ll_fw_new_flow(int v6, const struct ll_pkt *p, const void *key,
					  struct ll_verdict *v, int fw)
{
	if (fw == LL_FW_TRANSLATE)
		return ll_fw_snat(v6, p, key, v);
	if (fw == LL_FW_ALLOWED)
		return ll_fw_track(v6, p, key, &v->nat, v->mark);
	return LL_LB_NONE;
}

static __noinline int ll_fw_new_flow4(const struct ll_pkt *p, const void *key, struct ll_verdict *v,
				      int fw)
{
	return ll_fw_new_flow(0, p, key, v, fw);
}

static __noinline int ll_fw_new_flow6(const struct ll_pkt *p, const void *key, struct ll_verdict *v,
				      int fw)
{
	return ll_fw_new_flow(1, p, key, v, fw);
}

/* For the first packet of a flow that came in on interface ingress, once
 * the firewall has let it in (fw: LL_FW_OFF, LL_FW_ALLOWED or
 * LL_FW_TRANSLATE): LL_R_NAT_NEW with v->nat (and for IPv6 ll_nat6) filled
 * in, LL_LB_NONE, or the reason to hand the packet to Linux as it is (or
 * drop it). With the firewall active every flow is tracked, so that
 * replies pass without a rule walk and the other side cannot open flows of
 * its own. Load-balanced flows are translated as their service says, never
 * by SNAT rules. */
static __always_inline int ll_lb_first(int v6, const struct ll_pkt *p, __u32 ingress,
				       struct ll_verdict *v, int fw)
{
	struct ll_ct_key key4 = {};
	void *key = ll_ct_key_of(v6, p, &key4);
	struct ll_ct *hit;
	int r;

	if (!key)
		return LL_R_PASS_CT_FULL;
	if (!p->has_ports)
		r = LL_LB_NONE;
	else
		r = v6 ? ll_lb_new_flow6(p, ingress, key, &v->nat) :
			 ll_lb_new_flow4(p, ingress, key, &v->nat);
	if (r == LL_LB_NONE && fw != LL_FW_OFF)
		r = v6 ? ll_fw_new_flow6(p, key, v, fw) : ll_fw_new_flow4(p, key, v, fw);
	if (r != LL_CT_RACED)
		return r;
	/* Another CPU created this flow first: follow its choice. */
	hit = bpf_map_lookup_elem(LL_CT_MAP(v6), key);
	if (!hit)
		return LL_R_PASS_CT_FULL;
	return ll_ct_follow(v6, p, key, hit, v);
}

/* One subprogram per family and step, each with only its own code. */
static __noinline int ll_lb_decide4(const struct ll_pkt *p, struct ll_verdict *v)
{
	return ll_lb_decide(0, p, v);
}

static __noinline int ll_lb_decide6(const struct ll_pkt *p, struct ll_verdict *v)
{
	return ll_lb_decide(1, p, v);
}

static __noinline int ll_lb_first4(const struct ll_pkt *p, __u32 ingress, struct ll_verdict *v,
				   int fw)
{
	return ll_lb_first(0, p, ingress, v, fw);
}

static __noinline int ll_lb_first6(const struct ll_pkt *p, __u32 ingress, struct ll_verdict *v,
				   int fw)
{
	return ll_lb_first(1, p, ingress, v, fw);
}

#endif
