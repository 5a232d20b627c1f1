/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/* The whole per-packet decision, the same for every hook: load balancing
 * (conntrack, service, endpoint) then forwarding. */
#ifndef LL_PIPELINE_H
#define LL_PIPELINE_H

#include "fwd.h"
#include "lb.h"

struct ll_verdict {
	int reason;     /* LL_R_FWD, or why the packet goes to Linux */
	int nat_reason; /* LL_R_NAT_NEW / LL_R_NAT_EST when translated, else 0 */
	struct ll_nat nat;
	struct ll_fwd fwd;
};

/* The verdicts that drop the packet rather than hand it to Linux. */
static __always_inline int ll_reason_drops(int r)
{
	return r == LL_R_DROP_SOURCE || r == LL_R_DROP_NAT_PORTS;
}

static __always_inline void ll_pipeline(const struct ll_pkt *p, __u32 ingress, __u32 mtu_len,
					struct ll_verdict *v)
{
	__u8 daddr[16] = {};
	int v6 = p->family == LL_AF_INET6;
	__be32 d4 = p->daddr;
	int r = LL_LB_NONE;
	__u32 zero = 0;

	if (p->has_ports)
		r = v6 ? ll_lb_decide6(p, ingress, &v->nat) : ll_lb_decide4(p, ingress, &v->nat);
	if (r == LL_R_NAT_NEW || r == LL_R_NAT_EST) {
		v->nat_reason = r;
		d4 = v->nat.to.daddr;
	} else if (r != LL_LB_NONE) {
		v->reason = r;
		return;
	}
	if (!v6) {
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
