/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/* The whole per-packet decision, the same for every hook: conntrack, the
 * firewall on a flow's first packet, load balancing (service, endpoint),
 * then forwarding. */
#ifndef LL_PIPELINE_H
#define LL_PIPELINE_H

#include "fwd.h"
#include "lb.h"

static __always_inline __u32 ll_fwd_hash(const struct ll_pkt *p, __be32 daddr4)
{
	struct ll_ct_key k = {.proto = p->proto};

	if (p->family == LL_AF_INET) {
		k.saddr = p->saddr;
		k.daddr = daddr4;
		k.sport = p->sport;
		k.dport = p->dport;
	} else {
		const __u32 *s = (const __u32 *)p->saddr6, *d = (const __u32 *)p->daddr6;

		k.saddr = s[0] ^ s[1] ^ s[2] ^ s[3];
		k.daddr = d[0] ^ d[1] ^ d[2] ^ d[3];
		k.sport = p->sport;
		k.dport = p->dport;
	}
	return ll_flow_hash(&k);
}

/* Conntrack, then for a packet of no tracked flow the firewall and the
 * service lookup: LL_R_NAT_NEW / LL_R_NAT_EST (v->nat), LL_LB_NONE (go on
 * untranslated) or the packet's final reason. */
static __always_inline int ll_decide(const struct ll_pkt *p, __u32 ingress, struct ll_verdict *v)
{
	int v4 = p->family == LL_AF_INET;
	int r = v4 ? ll_lb_decide(p, v) : ll_ct6_decide(p, v);
	int fw;

	if (r != LL_CT_MISS)
		return r;
	fw = ll_fw_first(p, ingress, &v->mark, &v->fwd.ifindex, &v->nat.to);
	if (fw != LL_FW_OFF && fw != LL_FW_ALLOWED && fw != LL_FW_TRANSLATE)
		return fw;
	if (v4)
		return ll_lb_first(p, ingress, v, fw);
	/* IPv6 is not load balanced: only the firewall's flows are tracked. */
	return fw == LL_FW_ALLOWED ? ll_ct6_first(p, v) : LL_LB_NONE;
}

/* Whether the verdict drops the packet. */
static __always_inline int ll_dropped(int reason)
{
	return reason == LL_R_DROP_FW || reason == LL_R_DROP_FW_DEFAULT ||
	       reason == LL_R_DROP_NAT_PORTS;
}

static __always_inline void ll_pipeline(const struct ll_pkt *p, __u32 ingress, __u32 mtu_len,
					struct ll_verdict *v)
{
	__u8 daddr[16] = {};
	__be32 d4 = p->daddr;
	int r = ll_decide(p, ingress, v);

	if (r == LL_R_NAT_NEW || r == LL_R_NAT_EST) {
		v->nat_reason = r;
		d4 = v->nat.to.daddr;
	} else if (r != LL_LB_NONE) {
		v->reason = r;
		return;
	}
	if (p->family == LL_AF_INET)
		__builtin_memcpy(daddr, &d4, 4);
	else
		__builtin_memcpy(daddr, p->daddr6, 16);
	v->reason = ll_fwd_lookup(ingress, p, daddr, ll_fwd_hash(p, d4), mtu_len, &v->fwd);
}

#endif
