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

/* Rewrites the sides of p that nat translates (side i as in ll_tc_rewrite);
 * a subprogram of its own, off the entry program's frame. */
static __noinline int ll_xdp_rewrite(struct xdp_md *ctx, const struct ll_pkt *p,
				     const struct ll_nat *nat)
{
	void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
	struct iphdr *iph = LL_XDP_PTR(data, p->l3_off);
	int udp = p->proto == IPPROTO_UDP;
	__u16 *l4csum, l4c;
	__be16 *ports;

	if ((void *)(iph + 1) > end)
		return -1;
	if (udp) {
		struct udphdr *uh = LL_XDP_PTR(data, p->l4_off);

		if ((void *)(uh + 1) > end)
			return -1;
		l4csum = &uh->check;
		ports = &uh->source;
	} else {
		struct tcphdr *th = LL_XDP_PTR(data, p->l4_off);

		if ((void *)(th + 1) > end)
			return -1;
		l4csum = &th->check;
		ports = &th->source;
	}
	l4c = *l4csum;
	for (int i = 0; i < 2; i++) {
		__be32 *addr = i ? &iph->daddr : &iph->saddr;
		__be32 to_addr = i ? nat->to.daddr : nat->to.saddr;
		__be16 to_port = i ? nat->to.dport : nat->to.sport;

		if (!(nat->xlate & (i ? LL_XLATE_DST : LL_XLATE_SRC)))
			continue;
		iph->check = ll_csum_replace4(iph->check, *addr, to_addr);
		l4c = ll_csum_replace4(l4c, *addr, to_addr);
		l4c = ll_csum_replace2(l4c, ports[i], to_port);
		*addr = to_addr;
		ports[i] = to_port;
	}
	/* A UDP checksum of 0 means none; a computed 0 is sent as 0xffff. */
	if (!udp || *l4csum)
		*l4csum = udp && !l4c ? 0xffff : l4c;
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
