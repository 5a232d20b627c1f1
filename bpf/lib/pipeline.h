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

static __always_inline void ll_pipeline(const struct ll_pkt *p, __u32 ingress, __u32 mtu_len,
					struct ll_verdict *v)
{
	__u8 daddr[16] = {};
	__be32 d4 = p->daddr;
	int r = LL_LB_NONE;

	if (p->family == LL_AF_INET && p->has_ports)
		r = ll_lb_decide(p, ingress, &v->nat);
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
