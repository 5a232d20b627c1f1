/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/* Rewrites for the XDP hook: direct writes with incremental checksum updates
 * (RFC 1624). XDP has no skb, so there is no CHECKSUM_PARTIAL to honour:
 * frames from a NIC carry full checksums. */
#ifndef LL_XDP_H
#define LL_XDP_H

#include <stddef.h>
#include "pipeline.h"

static __always_inline __u16 ll_csum_fold(__u32 c)
{
	c = (c & 0xffff) + (c >> 16);
	c = (c & 0xffff) + (c >> 16);
	return (__u16)c;
}

/* HC' = ~(~HC + ~m + m') over 16-bit words, for a 4-byte field change. */
static __always_inline __u16 ll_csum_replace4(__u16 check, __be32 from, __be32 to)
{
	__u32 c = (__u16)~check;

	c += (__u16)~(from & 0xffff) + (__u16)~(from >> 16);
	c += (to & 0xffff) + (to >> 16);
	return ~ll_csum_fold(c);
}

static __always_inline __u16 ll_csum_replace2(__u16 check, __be16 from, __be16 to)
{
	__u32 c = (__u16)~check;

	c += (__u16)~from + to;
	return ~ll_csum_fold(c);
}

/* Masks keep offsets provably small for the verifier. */
#define LL_XDP_PTR(data, off) ((void *)(data) + ((off) & 0xff))

static __always_inline int ll_xdp_rewrite(struct xdp_md *ctx, const struct ll_pkt *p,
					  const struct ll_nat *nat)
{
	void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
	struct iphdr *iph = LL_XDP_PTR(data, p->l3_off);
	__u16 *l4csum = 0;
	__be16 *port = 0;
	__be32 *addr;
	__be32 old_addr;
	int udp = p->proto == IPPROTO_UDP;

	if ((void *)(iph + 1) > end)
		return -1;
	if (!ll_nat_ports(p->proto)) {
		/* only the address */
	} else if (udp) {
		struct udphdr *uh = LL_XDP_PTR(data, p->l4_off);

		if ((void *)(uh + 1) > end)
			return -1;
		l4csum = &uh->check;
		port = nat->rewrite_dst ? &uh->dest : &uh->source;
	} else {
		struct tcphdr *th = LL_XDP_PTR(data, p->l4_off);

		if ((void *)(th + 1) > end)
			return -1;
		l4csum = &th->check;
		port = nat->rewrite_dst ? &th->dest : &th->source;
	}
	addr = nat->rewrite_dst ? &iph->daddr : &iph->saddr;
	old_addr = *addr;

	iph->check = ll_csum_replace4(iph->check, old_addr, nat->addr);
	*addr = nat->addr;
	if (!port || !l4csum)
		return 0;
	/* A UDP checksum of 0 means none; a computed 0 is sent as 0xffff. */
	if (!udp || *l4csum) {
		__u16 c = ll_csum_replace4(*l4csum, old_addr, nat->addr);

		c = ll_csum_replace2(c, *port, nat->port);
		*l4csum = udp && !c ? 0xffff : c;
	}
	*port = nat->port;
	return 0;
}

static __always_inline int ll_xdp_forward(struct xdp_md *ctx, const struct ll_pkt *p,
					  const struct ll_fwd *fwd)
{
	void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;

	if (data + 14 > end)
		return -1;
	if (p->family == LL_AF_INET) {
		struct iphdr *iph = LL_XDP_PTR(data, p->l3_off);

		if ((void *)(iph + 1) > end)
			return -1;
		iph->check = ll_csum_replace2(iph->check, bpf_htons((__u16)iph->ttl << 8),
					      bpf_htons((__u16)(iph->ttl - 1) << 8));
		iph->ttl--;
	} else {
		struct ipv6hdr *ip6 = LL_XDP_PTR(data, p->l3_off);

		if ((void *)(ip6 + 1) > end)
			return -1;
		ip6->hop_limit--;
	}
	__builtin_memcpy(data, fwd->dmac, 12);
	return 0;
}

#endif
