/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/* Rewrites for the TC hook. The csum helpers with BPF_F_PSEUDO_HDR keep
 * CHECKSUM_PARTIAL and GSO skbs right, which a plain incremental update
 * would not. */
#ifndef LL_TC_H
#define LL_TC_H

#include <stddef.h>
#include "pipeline.h"

/* Rewrites the sides of p that nat translates. ll_tuple is laid out like the
 * headers, so side i (0: source, 1: destination) is the i-th address and
 * port of both. A subprogram of its own, off the entry program's frame. */
static __noinline int ll_tc_rewrite(struct __sk_buff *skb, const struct ll_pkt *p,
				    const struct ll_nat *nat)
{
	__u32 csum_off = p->l4_off + (p->proto == IPPROTO_TCP ? offsetof(struct tcphdr, check)
							       : offsetof(struct udphdr, check));
	/* UDP checksum 0 means "none": leave it so. */
	__u64 l4flags = p->proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;

	for (int i = 0; i < 2; i++) {
		__u32 addr_off = p->l3_off + offsetof(struct iphdr, saddr) + i * 4;
		__u32 port_off = p->l4_off + offsetof(struct udphdr, source) + i * 2;
		__be32 old_addr = i ? p->daddr : p->saddr, new_addr = i ? nat->to.daddr : nat->to.saddr;
		__be16 old_port = i ? p->dport : p->sport, new_port = i ? nat->to.dport : nat->to.sport;

		if (!(nat->xlate & (i ? LL_XLATE_DST : LL_XLATE_SRC)))
			continue;
		if (old_addr != new_addr) {
			if (bpf_l4_csum_replace(skb, csum_off, old_addr, new_addr,
						l4flags | BPF_F_PSEUDO_HDR | sizeof(new_addr)))
				return -1;
			if (bpf_l3_csum_replace(skb, p->l3_off + offsetof(struct iphdr, check),
						old_addr, new_addr, sizeof(new_addr)))
				return -1;
			if (bpf_skb_store_bytes(skb, addr_off, &new_addr, sizeof(new_addr), 0))
				return -1;
		}
		if (old_port != new_port) {
			if (bpf_l4_csum_replace(skb, csum_off, old_port, new_port,
						l4flags | sizeof(new_port)))
				return -1;
			if (bpf_skb_store_bytes(skb, port_off, &new_port, sizeof(new_port), 0))
				return -1;
		}
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
