/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/* Rewrites for the XDP hook: direct writes with incremental checksum updates
 * (RFC 1624). XDP has no skb, so there is no CHECKSUM_PARTIAL to honour:
 * frames from a NIC carry full checksums. */
#ifndef LL_XDP_H
#define LL_XDP_H

#include <stddef.h>
#include "pipeline.h"

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

/* Rewrites the sides of p that nat (an IPv6 packet's addresses: ll_nat6)
 * translates (side i as in ll_tc_rewrite); global, as that one is. */
__noinline int ll_xdp_rewrite(struct xdp_md *ctx, const struct ll_pkt *p,
				     const struct ll_nat *nat)
{
	void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
	struct ll_icmp_echo *ih = 0;
	struct ll_addrs6 *to6 = 0;
	__u16 *l4csum = 0, l4c = 0;
	__be16 *ports = 0, id;
	struct ipv6hdr *ip6;
	struct iphdr *iph;
	int udp, echo, pseudo;
	__u32 zero = 0;

	if (!p || !nat)
		return -1;
	ip6 = LL_XDP_PTR(data, p->l3_off);
	iph = LL_XDP_PTR(data, p->l3_off);
	udp = p->proto == IPPROTO_UDP;
	echo = ll_is_echo(p);
	/* The L4 checksum covers the addresses (pseudo-header): ICMPv6's too. */
	pseudo = ll_l4_rewritable(p->proto) || p->proto == IPPROTO_ICMPV6;
	if (p->family == LL_AF_INET6) {
		to6 = bpf_map_lookup_elem(&ll_nat6, &zero);
		if (!to6 || (void *)(ip6 + 1) > end)
			return -1;
	} else if ((void *)(iph + 1) > end) {
		return -1;
	}
	if (echo) {
		ih = LL_XDP_PTR(data, p->l4_off);
		if ((void *)(ih + 1) > end)
			return -1;
		l4csum = &ih->check;
	} else if (!ll_l4_rewritable(p->proto)) {
		/* the addresses only */
	} else if (udp) {
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
	if (l4csum)
		l4c = *l4csum;
	for (int i = 0; i < 2; i++) {
		__be32 *addr = i ? &iph->daddr : &iph->saddr;
		__be32 to_addr = i ? nat->to.daddr : nat->to.saddr;
		__be16 to_port = i ? nat->to.dport : nat->to.sport;

		if (!(nat->xlate & (i ? LL_XLATE_DST : LL_XLATE_SRC)))
			continue;
		if (to6) {
			/* No header checksum: the pseudo-header's words only. */
			__be32 *a = i ? ip6->daddr.in6_u.u6_addr32 : ip6->saddr.in6_u.u6_addr32;
			const __be32 *t = (const __be32 *)(i ? to6->daddr : to6->saddr);

			for (int w = 0; w < 4; w++) {
				if (pseudo)
					l4c = ll_csum_replace4(l4c, a[w], t[w]);
				a[w] = t[w];
			}
		} else {
			iph->check = ll_csum_replace4(iph->check, *addr, to_addr);
			if (pseudo)
				l4c = ll_csum_replace4(l4c, *addr, to_addr);
			*addr = to_addr;
		}
		if (ports) {
			l4c = ll_csum_replace2(l4c, ports[i], to_port);
			ports[i] = to_port;
		}
	}
	if (ih && ih->id != (id = ll_echo_id(p, nat))) {
		l4c = ll_csum_replace2(l4c, ih->id, id);
		ih->id = id;
	}
	/* A UDP checksum of 0 means none; a computed 0 is sent as 0xffff. */
	if (l4csum && (!udp || *l4csum))
		*l4csum = udp && !l4c ? 0xffff : l4c;
	return 0;
}

/* As ll_tc_nat64_rewrite: the L4 header stays where it is, the head of the
 * frame moves by the headers' difference and is written anew. */
static __noinline int ll_xdp_nat64_rewrite(struct xdp_md *ctx, const struct ll_tail *t)
{
	void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
	const struct ll_pkt *p = &t->p;
	int udp = p->proto == IPPROTO_UDP, to4 = p->family == LL_AF_INET6;
	/* ll_nat64_decide let through only IP headers without options or
	 * extensions, right after Ethernet. */
	__u32 l4_off = ETH_HLEN + (to4 ? LL_IP6_HLEN : LL_IP4_HLEN);
	__be16 *ports, *csum, ethertype = bpf_htons(to4 ? ETH_P_IP : ETH_P_IPV6);
	__u8 macs[12], tos, *ip;
	__u16 c;

	if (data + l4_off + (udp ? sizeof(struct udphdr) : sizeof(struct tcphdr)) > end)
		return -1;
	ip = data + ETH_HLEN;
	tos = to4 ? (ip[0] << 4) | (ip[1] >> 4) : ip[1];
	ports = data + l4_off;
	csum = udp ? &((struct udphdr *)ports)->check : &((struct tcphdr *)ports)->check;
	if (!to4 && udp && !*csum)
		return 1;
	c = ll_csum_apply(*csum, (__u32)ll_nat64_pseudo_diff(t));
	c = ll_csum_replace2(c, ports[0], t->q.sport);
	c = ll_csum_replace2(c, ports[1], t->q.dport);
	*csum = udp && !c ? 0xffff : c;
	ports[0] = t->q.sport;
	ports[1] = t->q.dport;
	__builtin_memcpy(macs, data, 12);

	if (bpf_xdp_adjust_head(ctx, to4 ? LL_NAT64_GROWTH : -LL_NAT64_GROWTH))
		return -1;
	data = (void *)(long)ctx->data;
	end = (void *)(long)ctx->data_end;
	if (data + ETH_HLEN + (to4 ? LL_IP4_HLEN : LL_IP6_HLEN) > end)
		return -1;
	__builtin_memcpy(data, macs, 12);
	__builtin_memcpy(data + 12, &ethertype, 2);
	if (to4)
		ll_nat64_ip4(t, tos, data + ETH_HLEN);
	else
		ll_nat64_ip6(t, tos, data + ETH_HLEN);
	return 0;
}

/* ll_xdp_icmp_rewrite for an ICMPv6 error (as ll_tc_icmp6_rewrite). */
static __always_inline int ll_xdp_icmp6_rewrite(struct xdp_md *ctx, const struct ll_tail *t)
{
	void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
	struct ipv6hdr *ip6 = data + ETH_HLEN;
	struct ll_icmp_echo *icmp = (void *)(ip6 + 1);
	struct ipv6hdr *in = (void *)(icmp + 1);
	__be16 *ports = (void *)(in + 1), *l4_check;
	struct ll_icmp6_fields old = {}, new = {};
	__u16 check;
	int has_l4 = 0;
	__s64 diff;

	int echo = t->quoted6.proto == IPPROTO_ICMPV6;

	/* An echo's identifier follows its type, code and checksum. */
	if ((void *)(ports + 3) > end)
		return -1;
	l4_check = (void *)ports + (ll_icmp_l4_check_off(0, t->quoted6.proto) & 0x1f);
	__builtin_memcpy(old.saddr, &in->saddr, 32);
	/* An echo's identifier as the port of either side (the sums do not
	 * mind which). */
	old.sport = echo ? ports[2] : ports[0];
	old.dport = echo ? 0 : ports[1];
	if (ll_icmp_quoted_l4(t->quoted6.proto) && (void *)(l4_check + 1) <= end) {
		old.l4_check = *l4_check;
		has_l4 = t->quoted6.proto != IPPROTO_UDP || old.l4_check;
	}
	diff = ll_icmp6_fields(t, &old, &new, has_l4);
	if (diff < 0)
		return -1;
	check = ll_csum_apply(icmp->check, (__u32)diff);
	__builtin_memcpy(&in->saddr, new.saddr, 32);
	if (echo) {
		ports[2] = new.sport | new.dport;
	} else {
		ports[0] = new.sport;
		ports[1] = new.dport;
	}
	if (has_l4 && (void *)(l4_check + 1) <= end)
		*l4_check = new.l4_check;
	/* The outer addresses, in the pseudo-header. */
	diff = bpf_csum_diff((__be32 *)&ip6->saddr, 32, (__be32 *)t->q.saddr6, 32, 0);
	if (diff < 0)
		return -1;
	icmp->check = ll_csum_apply(check, (__u32)diff);
	__builtin_memcpy(&ip6->saddr, t->q.saddr6, 32);
	return 0;
}

/* As ll_tc_icmp_rewrite, with direct writes (ll_icmp_decide let through
 * only plain headers: the quoted one starts at a fixed offset); global. */
__noinline int ll_xdp_icmp_rewrite(struct xdp_md *ctx, const struct ll_tail *t)
{
	void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
	struct iphdr *ip = data + ETH_HLEN;
	struct ll_icmp_echo *icmp = (void *)(ip + 1);
	struct iphdr *in = (void *)(icmp + 1);
	__be16 *ports = (void *)(in + 1), *l4_check;
	struct ll_icmp_fields old = {}, new = {};
	const struct ll_pkt *p;
	int has_l4 = 0;
	__s64 diff;

	if (!t)
		return -1;
	p = &t->p;
	if (p->family == LL_AF_INET6)
		return ll_xdp_icmp6_rewrite(ctx, t);
	/* An echo's identifier follows its type, code and checksum. */
	if ((void *)(ports + 3) > end)
		return -1;
	l4_check = (void *)in + (ll_icmp_l4_check_off(LL_IP4_HLEN, p->inner.proto) & 0x3f);
	old.ip_check = in->check;
	if (ll_icmp_quoted_l4(p->inner.proto) && (void *)(l4_check + 1) <= end) {
		old.l4_check = *l4_check;
		has_l4 = p->inner.proto != IPPROTO_UDP || old.l4_check;
	}
	diff = ll_icmp_fields(t, &old, &new, has_l4);
	if (diff < 0)
		return -1;
	icmp->check = ll_csum_apply(icmp->check, (__u32)diff);
	in->check = new.ip_check;
	in->saddr = new.t.saddr;
	in->daddr = new.t.daddr;
	if (p->inner.proto == IPPROTO_ICMP) {
		ports[2] = new.t.sport | new.t.dport;
	} else {
		ports[0] = new.t.sport;
		ports[1] = new.t.dport;
	}
	if (has_l4 && (void *)(l4_check + 1) <= end)
		*l4_check = new.l4_check;
	ip->check = ll_csum_replace4(ip->check, ip->saddr, t->q.saddr);
	ip->saddr = t->q.saddr;
	ip->check = ll_csum_replace4(ip->check, ip->daddr, t->q.daddr);
	ip->daddr = t->q.daddr;
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
