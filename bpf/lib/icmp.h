/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/* ICMP errors (destination unreachable, time exceeded, parameter problem)
 * about a tracked IPv4 flow, translated as Linux's NAT translates related
 * packets: the quoted packet back to what its sender had sent, the outer
 * header as a packet of the flow going the error's way. Without it a
 * client of a VIP never learns of a "fragmentation needed" from the
 * endpoint's path (path MTU discovery breaks) nor of a closed UDP port.
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

/* The translation of the ICMP error in t->p: LL_R_NAT_ICMP with t->q's
 * outer addresses and quoted tuple (q->inner) set, or the reason to hand
 * it to Linux untranslated. */
static __noinline int ll_icmp_decide(struct ll_tail *t)
{
	const struct ll_pkt *p = &t->p;
	struct ll_pkt *q = &t->q;
	struct ll_ct *e;

	/* The rewrites assume plain headers right after Ethernet. */
	if (p->ip_options || p->vlan || p->l3_off != ETH_HLEN ||
	    p->inner.l3_off != ETH_HLEN + LL_IP4_HLEN + sizeof(struct ll_icmp_echo))
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
	/* An echo's identifier is never translated. */
	if (ll_l4_rewritable(p->inner.proto)) {
		q->inner.t.sport = e->nat.dport;
		q->inner.t.dport = e->nat.sport;
	}
	t->mark = 0;
	return LL_R_NAT_ICMP;
}

/* The quoted header's fields before (*old: addresses and ports from t->p,
 * the checksums as read) and after translation (*new), and the change of
 * the ICMP checksum, which covers them all. has_l4: the quoted L4 checksum
 * is in the packet and in use (a UDP 0 is "none"). */
static __always_inline __s64 ll_icmp_fields(const struct ll_tail *t, struct ll_icmp_fields *old,
					    struct ll_icmp_fields *new, int has_l4)
{
	old->t = t->p.inner.t;
	new->t = t->q.inner.t;
	/* The IP header checksum covers the addresses; TCP's and UDP's the
	 * addresses (pseudo-header) and the ports. */
	new->ip_check = ll_csum_apply(old->ip_check, (__u32)bpf_csum_diff(&old->t.saddr, 8,
									  &new->t.saddr, 8, 0));
	if (has_l4)
		new->l4_check = ll_csum_apply(old->l4_check,
					      (__u32)bpf_csum_diff(&old->t.saddr, 12,
								   &new->t.saddr, 12, 0));
	else
		new->l4_check = old->l4_check;
	return bpf_csum_diff((__be32 *)old, sizeof(*old), (__be32 *)new, sizeof(*new), 0);
}

/* Where the quoted packet's L4 checksum is, from its header's start. */
static __always_inline __u32 ll_icmp_l4_check_off(__u8 proto)
{
	return LL_IP4_HLEN + (proto == IPPROTO_TCP ? 16 : 6);
}

#endif
