/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/* Forwarding from the mirrored tables: local check, longest-prefix route,
 * ECMP next hop, egress interface, neighbour. Decides only; the hook's entry
 * file rewrites and redirects. */
#ifndef LL_FWD_H
#define LL_FWD_H

#include "maps.h"
#include "parse.h"

#define LL_MISS_REPORT_NS (100ULL * 1000 * 1000)

struct ll_fwd {
	__u32 ifindex;
	__u8 dmac[6]; /* dmac then smac: the Ethernet header's first 12 bytes */
	__u8 smac[6];
};

static __always_inline int ll_mac_eq(const __u8 *a, const __u8 *b)
{
	return *(const __u32 *)a == *(const __u32 *)b &&
	       *(const __u16 *)(a + 4) == *(const __u16 *)(b + 4);
}

static __always_inline int ll_addr_zero(const __u8 *a)
{
	return *(const __u64 *)a == 0 && *(const __u64 *)(a + 8) == 0;
}

static __always_inline int ll_is_mcast(__u32 family, const __u8 *d)
{
	if (family == LL_AF_INET)
		return (d[0] & 0xf0) == 0xe0 || *(const __u32 *)d == 0xffffffff;
	/* multicast, or link-local which is never routed */
	return d[0] == 0xff || (d[0] == 0xfe && (d[1] & 0xc0) == 0x80);
}

/* Addresses Linux never forwards (it drops them as martians): loopback and
 * "this network" destinations; loopback, multicast, broadcast, unspecified
 * or IPv6 link-local sources. */
static __always_inline int ll_is_martian(const struct ll_pkt *p, const __u8 *d)
{
	if (p->family == LL_AF_INET) {
		const __u8 *s = (const __u8 *)&p->saddr;

		return d[0] == 127 || d[0] == 0 || s[0] == 127 || s[0] == 0 ||
		       (s[0] & 0xf0) == 0xe0 || p->saddr == 0xffffffff;
	}
	const __u64 *d64 = (const __u64 *)d, *s64 = (const __u64 *)p->saddr6;
	__u64 one = bpf_cpu_to_be64(1);

	return (d64[0] == 0 && d64[1] == one) || (s64[0] == 0 && (s64[1] == one || s64[1] == 0)) ||
	       p->saddr6[0] == 0xff || (p->saddr6[0] == 0xfe && (p->saddr6[1] & 0xc0) == 0x80);
}

/* Ask the daemon to get the next hop resolved, at most every 100 ms each. */
static __always_inline void ll_report_miss(struct ll_neigh_key *k)
{
	__u64 now = bpf_ktime_get_ns();
	__u64 *last = bpf_map_lookup_elem(&ll_miss_seen, k);

	if (last && now - *last < LL_MISS_REPORT_NS)
		return;
	bpf_map_update_elem(&ll_miss_seen, k, &now, BPF_ANY);
	bpf_ringbuf_output(&ll_neigh_miss, k, sizeof(*k), 0);
}

static __always_inline struct ll_route *ll_route_lookup(__u32 family, const __u8 *daddr)
{
	if (family == LL_AF_INET) {
		struct ll_lpm4_key k = {.prefixlen = 32};

		__builtin_memcpy(k.addr, daddr, 4);
		return bpf_map_lookup_elem(&ll_routes4, &k);
	}
	struct ll_lpm6_key k6 = {.prefixlen = 128};

	__builtin_memcpy(k6.addr, daddr, 16);
	return bpf_map_lookup_elem(&ll_routes6, &k6);
}

/* daddr: the destination after any NAT (IPv4 in its first 4 bytes).
 * mtu_len: the L3 length to check against the egress MTU, 0 for GSO packets
 * (segmented to size on the way out). Returns LL_R_FWD with *out filled in,
 * or the reason to hand the packet to Linux. */
static __always_inline int ll_fwd_lookup(__u32 ingress, const struct ll_pkt *p,
					 const __u8 *daddr, __u32 hash, __u32 mtu_len,
					 struct ll_fwd *out)
{
	struct ll_addr_key lk = {.family = p->family};
	struct ll_neigh_key nk = {.family = p->family};
	struct ll_iface *in, *eg;
	struct ll_nexthop *nh;
	struct ll_route *rt;
	struct ll_neigh *n;
	__u32 idx;

	if (p->l2_mcast || ll_is_mcast(p->family, daddr))
		return LL_R_PASS_MCAST;
	if (ll_is_martian(p, daddr))
		return LL_R_PASS_MARTIAN;
	in = bpf_map_lookup_elem(&ll_ifaces, &ingress);
	if (!in || !ll_mac_eq(in->mac, p->dmac))
		return LL_R_PASS_OTHER_HOST;
	__builtin_memcpy(lk.addr, daddr, 16);
	if (bpf_map_lookup_elem(&ll_locals, &lk))
		return LL_R_PASS_LOCAL;
	if (p->ttl <= 1)
		return LL_R_PASS_TTL;
	if (p->ip_options)
		return LL_R_PASS_IP_OPTIONS;
	if (p->vlan)
		return LL_R_PASS_VLAN;

	rt = ll_route_lookup(p->family, daddr);
	if (!rt)
		return LL_R_PASS_NO_ROUTE;
	if (rt->type != LL_RT_UNICAST)
		return LL_R_PASS_ROUTE_TYPE;
	if (rt->n_nexthops == 0)
		return LL_R_PASS_NO_ROUTE;
	idx = rt->n_nexthops > 1 ? hash % rt->n_nexthops : 0;
	nh = &rt->nh[idx & (LL_MAX_NEXTHOPS - 1)];

	eg = bpf_map_lookup_elem(&ll_ifaces, &nh->ifindex);
	if (!eg || !(eg->flags & LL_IF_ATTACHED))
		return LL_R_PASS_NOT_MANAGED;
	if (!(eg->flags & LL_IF_UP))
		return LL_R_PASS_EGRESS_DOWN;
	if (mtu_len > eg->mtu)
		return LL_R_PASS_MTU;

	nk.ifindex = nh->ifindex;
	__builtin_memcpy(nk.addr, ll_addr_zero(nh->gw) ? daddr : nh->gw, 16);
	n = bpf_map_lookup_elem(&ll_neighs, &nk);
	if (!n) {
		ll_report_miss(&nk);
		return LL_R_PASS_NO_NEIGH;
	}
	out->ifindex = nh->ifindex;
	__builtin_memcpy(out->dmac, n->mac, 6);
	__builtin_memcpy(out->smac, eg->mac, 6);
	return LL_R_FWD;
}

#endif
