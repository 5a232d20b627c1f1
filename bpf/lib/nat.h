/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/* Source translation: which LB address a flow's source becomes, and which
 * port, so that no two flows share a translated tuple. Any feature that
 * translates sources (fullnat and onearm services, SNAT) uses these. */
#ifndef LL_NAT_H
#define LL_NAT_H

#include "fwd.h"

#define LL_EEXIST 17

/* Translated source ports come from ll_nat_ports, by default from
 * [LL_NAT_PORT_MIN, 65535]. */
#define LL_NAT_PORT_MIN 1024
/* Candidates tried per new flow besides the client's own port: bounded work
 * per packet. They are consecutive from a random start, so a range of at
 * most LL_NAT_TRIES ports is searched whole. */
#define LL_NAT_TRIES 16

/* The LB address a flow towards daddr gets as its source: as Linux chooses,
 * the egress interface's address whose subnet holds the next hop, else that
 * interface's fallback (see struct ll_ifaddr_key). With ECMP the first next
 * hop's interface counts. same_if: the route must leave by interface
 * ifindex. Returns 0 with *src set, or the reason to hand the packet to
 * Linux. */
static __noinline int ll_nat_source(__be32 daddr, int same_if, __u32 ifindex, __be32 *src)
{
	struct ll_ifaddr_key k = {.prefixlen = 64};
	struct ll_nexthop *nh;
	struct ll_route *rt;
	__be32 *a;

	rt = ll_route_lookup(LL_AF_INET, (const __u8 *)&daddr);
	if (!rt || rt->n_nexthops == 0)
		return LL_R_PASS_NO_ROUTE;
	if (rt->type != LL_RT_UNICAST)
		return LL_R_PASS_ROUTE_TYPE;
	nh = &rt->nh[0];
	if (same_if && nh->ifindex != ifindex)
		return LL_R_PASS_ONEARM_EGRESS;
	k.ifindex = nh->ifindex;
	__builtin_memcpy(k.addr, ll_addr_zero(nh->gw) ? (const __u8 *)&daddr : nh->gw, 4);
	a = bpf_map_lookup_elem(&ll_ifaddrs, &k);
	if (!a)
		return LL_R_PASS_NO_NAT_ADDR;
	*src = *a;
	return 0;
}

/* Inserts the reply entry ct of a source-translated flow under *rkey, whose
 * destination port is the flow's translated source port: first the one
 * rkey->dport holds (the client's own, kept when free and in the range),
 * then up to LL_NAT_TRIES others. BPF_NOEXIST makes the port the flow's
 * alone. Returns 0 with rkey->dport the port claimed, LL_R_DROP_NAT_PORTS
 * when every candidate was taken, or LL_R_PASS_CT_FULL. */
static __noinline int ll_nat_claim_port(struct ll_ct_key *rkey, const struct ll_ct *ct)
{
	struct ll_nat_ports *cfg;
	__u32 zero = 0, min = LL_NAT_PORT_MIN, span = 65536 - LL_NAT_PORT_MIN, start;
	long err;

	cfg = bpf_map_lookup_elem(&ll_nat_ports, &zero);
	if (cfg && cfg->max && cfg->min && cfg->min <= cfg->max) {
		min = cfg->min;
		span = (__u32)cfg->max - min + 1;
	}
	if ((__u32)bpf_ntohs(rkey->dport) - min < span) {
		err = bpf_map_update_elem(&ll_conntrack, rkey, ct, BPF_NOEXIST);
		if (err != -LL_EEXIST)
			return err ? LL_R_PASS_CT_FULL : 0;
	}
	start = bpf_get_prandom_u32();
	for (__u32 i = 0; i < LL_NAT_TRIES && i < span; i++) {
		rkey->dport = bpf_htons(min + (start + i) % span);
		err = bpf_map_update_elem(&ll_conntrack, rkey, ct, BPF_NOEXIST);
		if (err != -LL_EEXIST)
			return err ? LL_R_PASS_CT_FULL : 0;
	}
	return LL_R_DROP_NAT_PORTS;
}

#endif
