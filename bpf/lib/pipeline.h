/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/* The whole per-packet decision, the same for every hook: conntrack, the
 * firewall on a flow's first packet, load balancing (service, endpoint),
 * then forwarding. */
#ifndef LL_PIPELINE_H
#define LL_PIPELINE_H

#include "fwd.h"
#include "icmp.h"
#include "nat64.h"

/* The decision for packet p: in the entry programs (first 0), conntrack,
 * giving LL_R_NAT_EST (v->nat), LL_LB_NONE (go on untranslated),
 * LL_GO_NAT64, LL_GO_ICMP or LL_GO_FIRST (no tracked flow); in the
 * first-packet programs (first 1), the firewall and the service lookup,
 * giving LL_R_NAT_NEW (v->nat), LL_LB_NONE or LL_GO_NAT64. Either may give
 * the packet's final reason instead. Split so that each program's verifier
 * budget and stack hold its half. */
static __always_inline int ll_decide(const struct ll_pkt *p, __u32 ingress, struct ll_verdict *v,
				     int first)
{
	int v6 = p->family == LL_AF_INET6;
	int r, fw;

	if (!first) {
		r = v6 ? ll_lb_decide6(p, v) : ll_lb_decide4(p, v);
		return r == LL_CT_MISS ? LL_GO_FIRST : r;
	}
	fw = ll_fw_first(p, ingress, &v->mark, &v->fwd.ifindex, &v->nat.to);
	if (fw != LL_FW_OFF && fw != LL_FW_ALLOWED && fw != LL_FW_TRANSLATE)
		return fw;
	return v6 ? ll_lb_first6(p, ingress, v, fw) : ll_lb_first4(p, ingress, v, fw);
}

/* Whether the verdict drops the packet. */
static __always_inline int ll_dropped(int reason)
{
	return reason == LL_R_DROP_FW || reason == LL_R_DROP_FW_DEFAULT ||
	       reason == LL_R_DROP_NAT_PORTS || reason == LL_R_DROP_SOURCE;
}

/* ll_decide, then forwarding (v->fwd) for a packet that is not handed on. */
static __always_inline void ll_pipeline(const struct ll_pkt *p, __u32 ingress, __u32 mtu_len,
					struct ll_verdict *v, int first)
{
	__u8 daddr[16] = {};
	__be32 d4 = p->daddr;
	int r = ll_decide(p, ingress, v, first);
	__u32 zero = 0;

	if (r == LL_R_NAT_NEW || r == LL_R_NAT_EST) {
		v->nat_reason = r;
		d4 = v->nat.to.daddr;
	} else if (r != LL_LB_NONE) {
		v->reason = r;
		return;
	}
	if (p->family == LL_AF_INET) {
		__builtin_memcpy(daddr, &d4, 4);
	} else if (v->nat_reason) {
		struct ll_addrs6 *to6 = bpf_map_lookup_elem(&ll_nat6, &zero);

		if (!to6) {
			v->reason = LL_R_DROP_REWRITE;
			return;
		}
		__builtin_memcpy(daddr, to6->daddr, 16);
	} else {
		__builtin_memcpy(daddr, p->daddr6, 16);
	}
	v->reason = ll_fwd_lookup(ingress, p, daddr, ll_pkt_hash(p, d4), mtu_len, &v->fwd);
}

#endif
