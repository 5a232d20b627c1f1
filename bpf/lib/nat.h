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

/* The LB address a flow towards daddr (of the family v6 says) gets as its
 * source: as Linux chooses, the egress interface's address whose subnet
 * holds the next hop, else that interface's fallback (see struct
 * ll_ifaddr_key). With ECMP the first next hop's interface counts. same_if:
 * the route must leave by interface ifindex. Returns 0 with src set (4 or
 * 16 bytes), or the reason to hand the packet to Linux. */
static __noinline int ll_nat_source(int v6, const __u8 *daddr, int same_if, __u32 ifindex,
				    __u8 *src)
{
	struct ll_ifaddr_key k = {.prefixlen = v6 ? 64 + 128 : 64 + 32, .family = v6 ? 6 : 4};
	const __u8 *hop = daddr;
	struct ll_nexthop *nh;
	struct ll_route *rt;
	struct ll_ip *a;

	rt = ll_route_lookup(v6 ? LL_AF_INET6 : LL_AF_INET, daddr);
	if (!rt || rt->n_nexthops == 0)
		return LL_R_PASS_NO_ROUTE;
	if (rt->type != LL_RT_UNICAST)
		return LL_R_PASS_ROUTE_TYPE;
	nh = &rt->nh[0];
	if (same_if && nh->ifindex != ifindex)
		return LL_R_PASS_ONEARM_EGRESS;
	k.ifindex = nh->ifindex;
	if (!ll_addr_zero(nh->gw))
		hop = nh->gw;
	if (v6)
		__builtin_memcpy(k.addr, hop, 16);
	else
		__builtin_memcpy(k.addr, hop, 4);
	a = bpf_map_lookup_elem(&ll_ifaddrs, &k);
	if (!a)
		return LL_R_PASS_NO_NAT_ADDR;
	if (v6)
		__builtin_memcpy(src, a->addr, 16);
	else
		__builtin_memcpy(src, a->addr, 4);
	return 0;
}

/* Inserts the reply entry ct of a source-translated flow under rkey (a key
 * of the family v6 says), whose destination port is the flow's translated
 * source port: first the one rkey holds (the client's own, kept when free
 * and in the range), then up to LL_NAT_TRIES others: none for SCTP, and
 * for an ICMP echo (whose identifier is its port) from all 16 bits.
 * BPF_NOEXIST makes the port the flow's alone. Returns 0 with rkey's
 * destination port the one claimed, LL_R_DROP_NAT_PORTS when every
 * candidate was taken, or LL_R_PASS_CT_FULL. */
static __noinline int ll_nat_claim_port(int v6, void *rkey, const struct ll_ct *ct)
{
	__be16 *dport = v6 ? &((struct ll_ct6_key *)rkey)->dport : &((struct ll_ct_key *)rkey)->dport;
	__u8 proto = v6 ? ((struct ll_ct6_key *)rkey)->proto : ((struct ll_ct_key *)rkey)->proto;
	__u32 zero = 0, min = LL_NAT_PORT_MIN, span = 65536 - LL_NAT_PORT_MIN, start;
	struct ll_nat_ports *cfg;
	void *map = LL_CT_MAP(v6);
	int fixed;
	long err;

	cfg = bpf_map_lookup_elem(&ll_nat_ports, &zero);
	if (proto == IPPROTO_ICMP || proto == IPPROTO_ICMPV6) {
		/* Echo identifiers are no ports: any will do. */
		min = 0;
		span = 65536;
	} else if (cfg && cfg->max && cfg->min && cfg->min <= cfg->max) {
		min = cfg->min;
		span = (__u32)cfg->max - min + 1;
	}
	/* SCTP ports (under its CRC32c) are never rewritten: such a flow can
	 * only keep its own. */
	fixed = proto == IPPROTO_SCTP;
	if (fixed || (__u32)bpf_ntohs(*dport) - min < span) {
		err = bpf_map_update_elem(map, rkey, ct, BPF_NOEXIST);
		if (err != -LL_EEXIST)
			return err ? LL_R_PASS_CT_FULL : 0;
	}
	if (fixed)
		return LL_R_DROP_NAT_PORTS;
	start = bpf_get_prandom_u32();
	for (__u32 i = 0; i < LL_NAT_TRIES && i < span; i++) {
		*dport = bpf_htons(min + (start + i) % span);
		err = bpf_map_update_elem(map, rkey, ct, BPF_NOEXIST);
		if (err != -LL_EEXIST)
			return err ? LL_R_PASS_CT_FULL : 0;
	}
	return LL_R_DROP_NAT_PORTS;
}

#endif
