/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/* ICMP and ICMPv6 errors (destination unreachable, time exceeded,
 * parameter problem, packet too big) about a tracked flow, translated as
 * Linux's NAT translates related packets: the quoted packet back to what
 * its sender had sent, the outer header as a packet of the flow going the
 * error's way. Without it a client of a VIP never learns of a
 * "fragmentation needed" or "packet too big" from the endpoint's path
 * (path MTU discovery breaks) nor of a closed UDP port. IPv6 errors have
 * no quoted header checksum, and their pseudo-header takes the outer
 * addresses into the ICMPv6 checksum.
 *
 * The flow is the entry E that a reply to the quoted packet would match.
 * The quoted packet becomes E's translated tuple turned around; the outer
 * source and destination are translated as E translates them. Related
 * errors pass without the firewall (as Linux's RELATED), and do not count
 * as packets of their flow. Entered by tail call (ll_tc_icmp, ll_xdp_icmp)
 * once ll_icmp_related has found E. */
#ifndef LL_ICMP_H
#define LL_ICMP_H

#include "tail.h"

/* The quoted header's fields a translation changes, in the order the
 * checksum arithmetic reads them (16-bit aligned, network order). */
struct ll_icmp_fields {
	struct ll_tuple t;
	__be16 ip_check;
	__be16 l4_check;
};

/* The quoted IPv6 header's fields a translation changes, and the quoted
 * L4 checksum, as the checksum arithmetic reads them. */
struct ll_icmp6_fields {
	__u8 saddr[16];
	__u8 daddr[16];
	__be16 sport;
	__be16 dport;
	__be16 l4_check;
	__be16 pad;
};

/* ll_icmp_decide for an ICMPv6 error: t->q's outer addresses and
 * t->quoted6. */
static __always_inline int ll_icmp6_decide(struct ll_tail *t)
{
	const struct ll_pkt *p = &t->p;
	struct ll_pkt *q = &t->q;
	struct ll_ct6_key *in = &t->quoted6;
	struct ll_ct6_keys *k6;
	const struct ll_ct6 *e6;
	struct ll_ct *e;
	__u32 zero = 0;

	k6 = bpf_map_lookup_elem(&ll_ct6_keys, &zero);
	if (!k6)
		return LL_R_PASS_ICMP;
	e = bpf_map_lookup_elem(&ll_conntrack6, &k6->icmp);
	if (!e || (e->xlate & (LL_XLATE_64 | LL_XLATE_DSR)))
		return LL_R_PASS_ICMP;
	e6 = (const struct ll_ct6 *)e;
	q->family = LL_AF_INET6;
	__builtin_memcpy(q->saddr6, e->xlate & LL_XLATE_SRC ? e6->nat6.saddr : p->saddr6, 16);
	__builtin_memcpy(q->daddr6, e->xlate & LL_XLATE_DST ? e6->nat6.daddr : p->daddr6, 16);
	q->sport = 0;
	q->dport = 0;
	*in = k6->icmp;
	__builtin_memcpy(in->saddr, e6->nat6.daddr, 16);
	__builtin_memcpy(in->daddr, e6->nat6.saddr, 16);
	in->sport = e->nat.dport;
	in->dport = e->nat.sport;
	t->mark = 0;
	return LL_R_NAT_ICMP;
}

/* The translation of the ICMP error in t->p: LL_R_NAT_ICMP with t->q's
 * outer addresses and the quoted tuple (IPv4: q->inner, IPv6: t->quoted6)
 * set, or the reason to hand it to Linux untranslated. */
static __noinline int ll_icmp_decide(struct ll_tail *t)
{
	const struct ll_pkt *p = &t->p;
	struct ll_pkt *q = &t->q;
	struct ll_ct *e;

	/* The rewrites assume plain headers right after Ethernet. */
	if (p->ip_options || p->vlan || p->l3_off != ETH_HLEN)
		return LL_R_PASS_ICMP;
	if (p->family == LL_AF_INET6)
		return ll_icmp6_decide(t);
	if (p->inner.l3_off != ETH_HLEN + LL_IP4_HLEN + sizeof(struct ll_icmp_echo))
		return LL_R_PASS_ICMP;
	e = ll_icmp_flow(&p->inner);
	if (!e || (e->xlate & (LL_XLATE_64 | LL_XLATE_DSR)))
		return LL_R_PASS_ICMP;
	q->family = LL_AF_INET;
	q->saddr = e->xlate & LL_XLATE_SRC ? e->nat.saddr : p->saddr;
	q->daddr = e->xlate & LL_XLATE_DST ? e->nat.daddr : p->daddr;
	q->sport = 0;
	q->dport = 0;
	q->inner = p->inner;
	q->inner.t.saddr = e->nat.daddr;
	q->inner.t.daddr = e->nat.saddr;
	q->inner.t.sport = e->nat.dport;
	q->inner.t.dport = e->nat.sport;
	t->mark = 0;
	return LL_R_NAT_ICMP;
}

/* The quoted header's fields before (*old: addresses and ports from t->p,
 * the checksums as read) and after translation (*new), and the change of
 * the ICMP checksum, which covers them all (a sum of 16-bit words: where
 * each lies does not matter). has_l4: the quoted L4 checksum is in the
 * packet and in use (a UDP 0 is "none"). */
static __always_inline __s64 ll_icmp_fields(const struct ll_tail *t, struct ll_icmp_fields *old,
					    struct ll_icmp_fields *new, int has_l4)
{
	old->t = t->p.inner.t;
	new->t = t->q.inner.t;
	/* The IP header checksum covers the addresses; TCP's and UDP's the
	 * addresses (pseudo-header) and the ports; an echo's its identifier,
	 * which is one of the ports (the other is 0). */
	new->ip_check = ll_csum_apply(old->ip_check, (__u32)bpf_csum_diff(&old->t.saddr, 8,
									  &new->t.saddr, 8, 0));
	if (has_l4 && t->p.inner.proto == IPPROTO_ICMP)
		new->l4_check = ll_csum_apply(old->l4_check,
					      (__u32)bpf_csum_diff((__be32 *)&old->t.sport, 4,
								   (__be32 *)&new->t.sport, 4, 0));
	else if (has_l4)
		new->l4_check = ll_csum_apply(old->l4_check,
					      (__u32)bpf_csum_diff(&old->t.saddr, 12,
								   &new->t.saddr, 12, 0));
	else
		new->l4_check = old->l4_check;
	return bpf_csum_diff((__be32 *)old, sizeof(*old), (__be32 *)new, sizeof(*new), 0);
}

/* ll_icmp_fields for an ICMPv6 error: *old holds the quoted addresses,
 * ports (an echo: its identifier as parsed, see ll_echo_ports) and L4
 * checksum as read, *new gets them translated (t->quoted6).
 * Returns the change of the ICMPv6 checksum over them (the outer
 * addresses, in its pseudo-header, are the caller's). */
static __always_inline __s64 ll_icmp6_fields(const struct ll_tail *t, struct ll_icmp6_fields *old,
					     struct ll_icmp6_fields *new, int has_l4)
{
	__builtin_memcpy(new->saddr, t->quoted6.saddr, 16);
	__builtin_memcpy(new->daddr, t->quoted6.daddr, 16);
	new->sport = t->quoted6.sport;
	new->dport = t->quoted6.dport;
	/* addresses and ports: the first 36 bytes */
	if (has_l4)
		new->l4_check = ll_csum_apply(old->l4_check,
					      (__u32)bpf_csum_diff((__be32 *)old, 36,
								   (__be32 *)new, 36, 0));
	else
		new->l4_check = old->l4_check;
	return bpf_csum_diff((__be32 *)old, sizeof(*old), (__be32 *)new, sizeof(*new), 0);
}

/* Where the quoted packet's L4 checksum is, from its header's start. */
static __always_inline __u32 ll_icmp_l4_check_off(__u32 ip_hlen, __u8 proto)
{
	return ip_hlen + (proto == IPPROTO_TCP					? 16
			  : proto == IPPROTO_ICMP || proto == IPPROTO_ICMPV6 ? 2
									     : 6);
}

/* Whether the quoted packet's L4 checksum is translated with it (an echo's
 * covers its identifier, ICMPv6's its addresses too). */
static __always_inline int ll_icmp_quoted_l4(__u8 proto)
{
	return ll_l4_rewritable(proto) || proto == IPPROTO_ICMP || proto == IPPROTO_ICMPV6;
}

#endif
