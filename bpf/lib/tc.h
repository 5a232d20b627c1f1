/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/* Rewrites for the TC hook. The csum helpers with BPF_F_PSEUDO_HDR keep
 * CHECKSUM_PARTIAL and GSO skbs right, which a plain incremental update
 * would not. */
#ifndef LL_TC_H
#define LL_TC_H

#include <stddef.h>
#include "pipeline.h"

static __always_inline int ll_tc_rewrite(struct __sk_buff *skb, const struct ll_pkt *p,
					 const struct ll_nat *nat)
{
	__u32 addr_off = p->l3_off + (nat->rewrite_dst ? offsetof(struct iphdr, daddr)
						       : offsetof(struct iphdr, saddr));
	__u32 port_off = p->l4_off + (nat->rewrite_dst ? offsetof(struct udphdr, dest)
						       : offsetof(struct udphdr, source));
	__u32 csum_off = p->l4_off + (p->proto == IPPROTO_TCP ? offsetof(struct tcphdr, check)
							       : offsetof(struct udphdr, check));
	__be32 old_addr = nat->rewrite_dst ? p->daddr : p->saddr;
	__be16 old_port = nat->rewrite_dst ? p->dport : p->sport;
	/* UDP checksum 0 means "none": leave it so. */
	__u64 l4flags = p->proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;
	int ports = ll_nat_ports(p->proto);

	if (old_addr != nat->addr) {
		if (ports && bpf_l4_csum_replace(skb, csum_off, old_addr, nat->addr,
						 l4flags | BPF_F_PSEUDO_HDR | sizeof(nat->addr)))
			return -1;
		if (bpf_l3_csum_replace(skb, p->l3_off + offsetof(struct iphdr, check), old_addr,
					nat->addr, sizeof(nat->addr)))
			return -1;
		if (bpf_skb_store_bytes(skb, addr_off, &nat->addr, sizeof(nat->addr), 0))
			return -1;
	}
	if (ports && old_port != nat->port) {
		if (bpf_l4_csum_replace(skb, csum_off, old_port, nat->port,
					l4flags | sizeof(nat->port)))
			return -1;
		if (bpf_skb_store_bytes(skb, port_off, &nat->port, sizeof(nat->port), 0))
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
