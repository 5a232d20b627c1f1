/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/* Rewrites for the TC hook. The csum helpers with BPF_F_PSEUDO_HDR keep
 * CHECKSUM_PARTIAL and GSO skbs right, which a plain incremental update
 * would not. */
#ifndef LL_TC_H
#define LL_TC_H

#include <stddef.h>
#include "pipeline.h"

/* Writes IPv6 address from over to at off. IPv6 has no header checksum:
 * only the L4 checksum's pseudo-header covers the address (ports: TCP and
 * UDP, see ll_nat_ports). */
static __always_inline int ll_tc_addr6(struct __sk_buff *skb, __u32 off, const __u8 *from,
				       const __u8 *to, int ports, __u32 csum_off, __u64 l4flags)
{
	__s64 diff;

	if (ports) {
		diff = bpf_csum_diff((__be32 *)from, 16, (__be32 *)to, 16, 0);
		if (diff < 0 ||
		    bpf_l4_csum_replace(skb, csum_off, 0, diff, l4flags | BPF_F_PSEUDO_HDR))
			return -1;
	}
	return bpf_skb_store_bytes(skb, off, to, 16, 0);
}

/* Rewrites the sides of p that nat (an IPv6 packet's addresses: ll_nat6)
 * translates. ll_tuple is laid out like the headers, so side i (0: source,
 * 1: destination) is the i-th address and port of both; an ICMP(v6)
 * echo's identifier is rewritten apart (ll_echo_id), and ICMP's checksum
 * covers no address. A global function: verified once for any packet, not
 * again on every path that reaches it (and off the callers' frames). */
__noinline int ll_tc_rewrite(struct __sk_buff *skb, const struct ll_pkt *p,
				    const struct ll_nat *nat)
{
	struct ll_addrs6 *to6 = 0;
	__u32 zero = 0, csum_off;
	int echo, pseudo;
	__u64 l4flags;

	if (!p || !nat)
		return -1;
	echo = ll_is_echo(p);
	csum_off = p->l4_off + (echo			? offsetof(struct ll_icmp_echo, check)
				: p->proto == IPPROTO_TCP ? offsetof(struct tcphdr, check)
							  : offsetof(struct udphdr, check));
	/* UDP checksum 0 means "none": leave it so. */
	l4flags = p->proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;
	/* The L4 checksum covers the addresses (pseudo-header): ICMPv6's too. */
	pseudo = ll_l4_rewritable(p->proto) || p->proto == IPPROTO_ICMPV6;
	if (p->family == LL_AF_INET6) {
		to6 = bpf_map_lookup_elem(&ll_nat6, &zero);
		if (!to6)
			return -1;
	}
	for (int i = 0; i < 2; i++) {
		__u32 addr_off = p->l3_off + offsetof(struct iphdr, saddr) + i * 4;
		__u32 port_off = p->l4_off + offsetof(struct udphdr, source) + i * 2;
		__be32 old_addr = i ? p->daddr : p->saddr, new_addr = i ? nat->to.daddr : nat->to.saddr;
		__be16 old_port = i ? p->dport : p->sport, new_port = i ? nat->to.dport : nat->to.sport;

		if (!(nat->xlate & (i ? LL_XLATE_DST : LL_XLATE_SRC)))
			continue;
		if (to6) {
			if (ll_tc_addr6(skb, p->l3_off + offsetof(struct ipv6hdr, saddr) + i * 16,
					i ? p->daddr6 : p->saddr6, i ? to6->daddr : to6->saddr, pseudo,
					csum_off, l4flags))
				return -1;
		} else if (old_addr != new_addr) {
			if (pseudo && bpf_l4_csum_replace(skb, csum_off, old_addr, new_addr,
							  l4flags | BPF_F_PSEUDO_HDR | sizeof(new_addr)))
				return -1;
			if (bpf_l3_csum_replace(skb, p->l3_off + offsetof(struct iphdr, check),
						old_addr, new_addr, sizeof(new_addr)))
				return -1;
			if (bpf_skb_store_bytes(skb, addr_off, &new_addr, sizeof(new_addr), 0))
				return -1;
		}
		if (pseudo && !echo && old_port != new_port) {
			if (bpf_l4_csum_replace(skb, csum_off, old_port, new_port,
						l4flags | sizeof(new_port)))
				return -1;
			if (bpf_skb_store_bytes(skb, port_off, &new_port, sizeof(new_port), 0))
				return -1;
		}
	}
	if (echo) {
		__be16 old_id = p->sport | p->dport, new_id = ll_echo_id(p, nat);

		if (old_id != new_id &&
		    (bpf_l4_csum_replace(skb, csum_off, old_id, new_id, sizeof(new_id)) ||
		     bpf_skb_store_bytes(skb, p->l4_off + offsetof(struct ll_icmp_echo, id),
					 &new_id, sizeof(new_id), 0)))
			return -1;
	}
	return 0;
}

/* Rebuilds NAT64 packet t->p as t->q: the L4 checksum and ports patched in
 * place, then the IP header replaced by the other family's
 * (bpf_skb_change_proto makes the room; the L4 header does not move).
 * Returns 0, 1 when the packet cannot be translated (an IPv4 UDP datagram
 * without checksum, which IPv6 requires) and is untouched, or -1. */
static __noinline int ll_tc_nat64_rewrite(struct __sk_buff *skb, const struct ll_tail *t)
{
	const struct ll_pkt *p = &t->p;
	int udp = p->proto == IPPROTO_UDP, to4 = p->family == LL_AF_INET6;
	__u32 csum_off = p->l4_off + (udp ? offsetof(struct udphdr, check)
					  : offsetof(struct tcphdr, check));
	__u32 port_off = p->l4_off + offsetof(struct udphdr, source);
	__u64 l4flags = udp ? BPF_F_MARK_MANGLED_0 : 0;
	__be16 old_ports[2] = {p->sport, p->dport}, new_ports[2] = {t->q.sport, t->q.dport};
	__be16 ethertype = bpf_htons(to4 ? ETH_P_IP : ETH_P_IPV6), w;
	union {
		struct iphdr ip;
		struct ipv6hdr ip6;
	} h;
	__s64 diff;
	__u8 tos;

	if (bpf_skb_load_bytes(skb, p->l3_off, &w, 2))
		return -1;
	/* IPv6: version, traffic class, flow label; IPv4: version/IHL, TOS. */
	tos = to4 ? (bpf_ntohs(w) >> 4) & 0xff : bpf_ntohs(w) & 0xff;
	if (!to4 && udp && (bpf_skb_load_bytes(skb, csum_off, &w, 2) || !w))
		return 1;
	diff = ll_nat64_pseudo_diff(t);
	if (diff < 0 || bpf_l4_csum_replace(skb, csum_off, 0, diff, l4flags | BPF_F_PSEUDO_HDR))
		return -1;
	for (int i = 0; i < 2; i++)
		if (bpf_l4_csum_replace(skb, csum_off, old_ports[i], new_ports[i],
					l4flags | sizeof(__be16)))
			return -1;
	if (bpf_skb_store_bytes(skb, port_off, new_ports, sizeof(new_ports), 0))
		return -1;
	if (bpf_skb_change_proto(skb, ethertype, 0))
		return -1;
	if (to4)
		ll_nat64_ip4(t, tos, &h.ip);
	else
		ll_nat64_ip6(t, tos, &h.ip6);
	if (bpf_skb_store_bytes(skb, p->l3_off, &h, to4 ? LL_IP4_HLEN : LL_IP6_HLEN, 0))
		return -1;
	return bpf_skb_store_bytes(skb, offsetof(struct ethhdr, h_proto), &ethertype, 2, 0);
}

/* ll_tc_icmp_rewrite for an ICMPv6 error: no quoted header checksum, and
 * the outer addresses count in the ICMPv6 checksum's pseudo-header. */
static __always_inline int ll_tc_icmp6_rewrite(struct __sk_buff *skb, const struct ll_tail *t)
{
	const struct ll_pkt *p = &t->p;
	__u32 in = p->l4_off + sizeof(struct ll_icmp_echo), csum = p->l4_off + 2;
	__u32 l4_check = in + ll_icmp_l4_check_off(LL_IP6_HLEN, t->quoted6.proto);
	struct ll_icmp6_fields old = {}, new = {};
	int has_l4 = 0;
	__s64 diff;

	/* An echo's identifier, as the port of either side (the sums do not
	 * mind which), instead of the ports. */
	int echo = t->quoted6.proto == IPPROTO_ICMPV6;
	__u32 ports = in + LL_IP6_HLEN + (echo ? offsetof(struct ll_icmp_echo, id) : 0);
	__be16 id;

	if (bpf_skb_load_bytes(skb, in + offsetof(struct ipv6hdr, saddr), old.saddr, 32) ||
	    bpf_skb_load_bytes(skb, ports, &old.sport, echo ? 2 : 4))
		return -1;
	if (ll_icmp_quoted_l4(t->quoted6.proto) && l4_check + 2 <= skb->len &&
	    !bpf_skb_load_bytes(skb, l4_check, &old.l4_check, 2))
		has_l4 = t->quoted6.proto != IPPROTO_UDP || old.l4_check;
	diff = ll_icmp6_fields(t, &old, &new, has_l4);
	if (diff < 0 || bpf_l4_csum_replace(skb, csum, 0, diff, 0))
		return -1;
	id = new.sport | new.dport;
	if (bpf_skb_store_bytes(skb, in + offsetof(struct ipv6hdr, saddr), new.saddr, 32, 0) ||
	    bpf_skb_store_bytes(skb, ports, echo ? &id : &new.sport, echo ? 2 : 4, 0))
		return -1;
	if (has_l4 && bpf_skb_store_bytes(skb, l4_check, &new.l4_check, 2, 0))
		return -1;
	for (int i = 0; i < 2; i++) {
		const __u8 *from = i ? p->daddr6 : p->saddr6, *to = i ? t->q.daddr6 : t->q.saddr6;

		if (ll_tc_addr6(skb, p->l3_off + offsetof(struct ipv6hdr, saddr) + i * 16, from, to,
				1, csum, 0))
			return -1;
	}
	return 0;
}

/* Rewrites ICMP error t->p as ll_icmp_decide translated it (t->q): the
 * quoted header (addresses, its checksum, ports and L4 checksum when
 * quoted), the ICMP checksum over those, then the outer addresses. Global,
 * as ll_tc_rewrite is. */
__noinline int ll_tc_icmp_rewrite(struct __sk_buff *skb, const struct ll_tail *t)
{
	struct ll_icmp_fields old = {}, new = {};
	const struct ll_pkt *p;
	__u32 in, l4_check;
	int has_l4 = 0;
	__s64 diff;

	if (!t)
		return -1;
	p = &t->p;
	in = p->inner.l3_off;
	l4_check = in + ll_icmp_l4_check_off(LL_IP4_HLEN, p->inner.proto);
	if (p->family == LL_AF_INET6)
		return ll_tc_icmp6_rewrite(skb, t);
	if (bpf_skb_load_bytes(skb, in + offsetof(struct iphdr, check), &old.ip_check, 2))
		return -1;
	if (ll_icmp_quoted_l4(p->inner.proto) && l4_check + 2 <= skb->len &&
	    !bpf_skb_load_bytes(skb, l4_check, &old.l4_check, 2))
		has_l4 = p->inner.proto != IPPROTO_UDP || old.l4_check;
	diff = ll_icmp_fields(t, &old, &new, has_l4);
	if (diff < 0 || bpf_l4_csum_replace(skb, p->l4_off + 2, 0, diff, 0))
		return -1;
	if (bpf_skb_store_bytes(skb, in + offsetof(struct iphdr, check), &new.ip_check, 2, 0) ||
	    bpf_skb_store_bytes(skb, in + offsetof(struct iphdr, saddr), &new.t.saddr, 8, 0))
		return -1;
	if (p->inner.proto == IPPROTO_ICMP) {
		__be16 id = new.t.sport | new.t.dport;

		if (bpf_skb_store_bytes(skb, in + LL_IP4_HLEN + offsetof(struct ll_icmp_echo, id),
					&id, 2, 0))
			return -1;
	} else if (bpf_skb_store_bytes(skb, in + LL_IP4_HLEN, &new.t.sport, 4, 0)) {
		return -1;
	}
	if (has_l4 && bpf_skb_store_bytes(skb, l4_check, &new.l4_check, 2, 0))
		return -1;
	for (int i = 0; i < 2; i++) {
		__be32 from = i ? p->daddr : p->saddr, to = i ? t->q.daddr : t->q.saddr;

		if (from == to)
			continue;
		if (bpf_l3_csum_replace(skb, p->l3_off + offsetof(struct iphdr, check), from, to,
					sizeof(to)) ||
		    bpf_skb_store_bytes(skb, p->l3_off + offsetof(struct iphdr, saddr) + i * 4, &to,
					sizeof(to), 0))
			return -1;
	}
	return 0;
}

/* TTL / hop limit decrement and the new MACs, for a packet about to be
 * redirected. */
static __always_inline int ll_tc_forward(struct __sk_buff *skb, const struct ll_pkt *p,
					 const struct ll_fwd *fwd)
{
	__u8 ttl = p->ttl - 1;

	if (p->family == LL_AF_INET) {
		__be16 old = bpf_htons((__u16)p->ttl << 8 | p->proto);
		__be16 new = bpf_htons((__u16)ttl << 8 | p->proto);

		if (bpf_l3_csum_replace(skb, p->l3_off + offsetof(struct iphdr, check), old, new,
					sizeof(new)))
			return -1;
		if (bpf_skb_store_bytes(skb, p->l3_off + offsetof(struct iphdr, ttl), &ttl, 1, 0))
			return -1;
	} else if (bpf_skb_store_bytes(skb, p->l3_off + offsetof(struct ipv6hdr, hop_limit), &ttl,
				       1, 0)) {
		return -1;
	}
	return bpf_skb_store_bytes(skb, 0, fwd->dmac, 12, 0);
}

#endif
