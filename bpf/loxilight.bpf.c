/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/* Entry points. Both hooks live in one object so they share its maps; each
 * only adapts its context to the shared pipeline and maps the verdict. */
#include <linux/pkt_cls.h>
#include "lib/tc.h"
#include "lib/xdp.h"

int ll_tc_nat64(struct __sk_buff *skb);
int ll_tc_icmp(struct __sk_buff *skb);
int ll_tc_first(struct __sk_buff *skb);
int ll_xdp_nat64(struct xdp_md *ctx);
int ll_xdp_icmp(struct xdp_md *ctx);
int ll_xdp_first(struct xdp_md *ctx);

/* The programs entered by tail call (tail.h), one array per program type,
 * filled by libbpf at load (also when the daemon reuses the pinned array). */
#define LL_TAIL_ARRAY(name, ctx, nat64, icmp, first)                                             \
	struct {                                                                                  \
		__uint(type, BPF_MAP_TYPE_PROG_ARRAY);                                            \
		__uint(max_entries, LL_TAILS);                                                    \
		__uint(key_size, sizeof(__u32));                                                  \
		__array(values, int(ctx *));                                                      \
	} name SEC(".maps") = {                                                                   \
		.values = {[LL_TAIL_NAT64] = (void *)&nat64,                                      \
			   [LL_TAIL_ICMP] = (void *)&icmp,                                        \
			   [LL_TAIL_FIRST] = (void *)&first},                                     \
	}

LL_TAIL_ARRAY(ll_tc_tails, struct __sk_buff, ll_tc_nat64, ll_tc_icmp, ll_tc_first);
LL_TAIL_ARRAY(ll_xdp_tails, struct xdp_md, ll_xdp_nat64, ll_xdp_icmp, ll_xdp_first);

/* What TC does with the pipeline's verdict v for packet p: hands it to the
 * program the verdict names (by tail call; filled: p is ll_tail's already),
 * or rewrites it, forwards it, hands it to Linux or drops it. */
static __always_inline int ll_tc_verdict(struct __sk_buff *skb, const struct ll_pkt *p,
					 __u32 ingress, __u32 mtu_len, struct ll_verdict *v,
					 int filled)
{
	int slot = ll_tail_slot(v->reason);

	if (v->mark)
		skb->mark = v->mark;
	if (slot >= 0) {
		if (filled || !ll_tail_fill(p, ingress, mtu_len))
			bpf_tail_call(skb, &ll_tc_tails, slot);
		v->reason = LL_R_PASS_TAIL;
	}
	if (v->nat_reason) {
		ll_count(&ll_reasons, v->nat_reason, skb->len);
		if (ll_tc_rewrite(skb, p, &v->nat))
			goto corrupt;
		if (v->nat.mark)
			skb->mark = v->nat.mark;
	}
	if (v->reason == LL_R_FWD) {
		if (ll_tc_forward(skb, p, &v->fwd))
			goto corrupt;
		ll_count(&ll_reasons, LL_R_FWD, skb->len);
		return bpf_redirect(v->fwd.ifindex, 0);
	}
	ll_count(&ll_reasons, v->reason, skb->len);
	if (v->reason == LL_R_FW_REDIRECT)
		return bpf_redirect(v->fwd.ifindex, 0);
	return ll_dropped(v->reason) ? TC_ACT_SHOT : TC_ACT_OK;
corrupt:
	ll_count(&ll_reasons, LL_R_DROP_REWRITE, skb->len);
	return TC_ACT_SHOT;
}

/* XDP has no skb and so no mark: a firewall rule's mark is not applied. */
static __always_inline int ll_xdp_verdict(struct xdp_md *ctx, const struct ll_pkt *p,
					  __u32 ingress, struct ll_verdict *v, int filled)
{
	__u32 len = bpf_xdp_get_buff_len(ctx);
	int slot = ll_tail_slot(v->reason);

	if (slot >= 0) {
		if (filled || !ll_tail_fill(p, ingress, len - p->l3_off))
			bpf_tail_call(ctx, &ll_xdp_tails, slot);
		v->reason = LL_R_PASS_TAIL;
	}
	if (v->nat_reason) {
		ll_count(&ll_reasons, v->nat_reason, len);
		if (ll_xdp_rewrite(ctx, p, &v->nat))
			goto corrupt;
	}
	if (v->reason == LL_R_FWD) {
		if (ll_xdp_forward(ctx, p, &v->fwd))
			goto corrupt;
		ll_count(&ll_reasons, LL_R_FWD, len);
		return bpf_redirect(v->fwd.ifindex, 0);
	}
	ll_count(&ll_reasons, v->reason, len);
	if (v->reason == LL_R_FW_REDIRECT)
		return bpf_redirect(v->fwd.ifindex, 0);
	return ll_dropped(v->reason) ? XDP_DROP : XDP_PASS;
corrupt:
	ll_count(&ll_reasons, LL_R_DROP_REWRITE, len);
	return XDP_DROP;
}

/* The entry programs: parse, then packets of tracked flows (and ICMP errors
 * about them); the first packets of flows go on to ll_tc_first/ll_xdp_first
 * by tail call. */
SEC("tc")
int ll_tc_ingress(struct __sk_buff *skb)
{
	__u32 linear = skb->data_end - skb->data, ingress = skb->ingress_ifindex;
	struct ll_verdict v = {};
	struct ll_pkt p = {};
	__u32 mtu_len;
	int r;

	/* Headers of GSO or fragmented skbs may sit outside the linear area. */
	if (linear < LL_PARSE_MAX && skb->len > linear)
		bpf_skb_pull_data(skb, skb->len < LL_PARSE_MAX ? skb->len : LL_PARSE_MAX);

	r = ll_parse((void *)(long)skb->data, (void *)(long)skb->data_end, skb->len, &p);
	if (r != LL_PARSED) {
		ll_count(&ll_reasons, r, skb->len);
		return TC_ACT_OK;
	}
	/* The stack strips a VLAN tag into skb metadata before TC runs. */
	p.vlan |= skb->vlan_present;
	/* GSO packets are segmented to the egress MTU on the way out. */
	mtu_len = skb->gso_size ? 0 : skb->len - p.l3_off;
	ll_pipeline(&p, ingress, mtu_len, &v, 0);
	return ll_tc_verdict(skb, &p, ingress, mtu_len, &v, 0);
}

SEC("xdp")
int ll_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
	__u32 len = bpf_xdp_get_buff_len(ctx), ingress = ctx->ingress_ifindex;
	struct ll_verdict v = {};
	struct ll_pkt p = {};
	int r;

	r = ll_parse(data, end, len, &p);
	if (r != LL_PARSED) {
		ll_count(&ll_reasons, r, len);
		return XDP_PASS;
	}
	ll_pipeline(&p, ingress, len - p.l3_off, &v, 0);
	return ll_xdp_verdict(ctx, &p, ingress, &v, 0);
}

/* The first packet of a flow (no conntrack entry), with the packet in
 * ll_tail: the firewall, then the service and its endpoint. Verified
 * apart from the entry programs, with a budget and a stack of its own. */
SEC("tc")
int ll_tc_first(struct __sk_buff *skb)
{
	__u32 zero = 0;
	struct ll_tail *t = bpf_map_lookup_elem(&ll_tail, &zero);
	struct ll_verdict v = {};

	if (!t)
		return TC_ACT_OK;
	ll_pipeline(&t->p, t->ingress, t->mtu_len, &v, 1);
	return ll_tc_verdict(skb, &t->p, t->ingress, t->mtu_len, &v, 1);
}

SEC("xdp")
int ll_xdp_first(struct xdp_md *ctx)
{
	__u32 zero = 0;
	struct ll_tail *t = bpf_map_lookup_elem(&ll_tail, &zero);
	struct ll_verdict v = {};

	if (!t)
		return XDP_PASS;
	ll_pipeline(&t->p, t->ingress, t->mtu_len, &v, 1);
	return ll_xdp_verdict(ctx, &t->p, t->ingress, &v, 1);
}

/* A translator (tail.h), entered by tail call with the packet in ll_tail:
 * kind is its slot. A rewrite that fails midway leaves a corrupt packet:
 * dropped. */
static __always_inline int ll_tc_tail(struct __sk_buff *skb, int kind)
{
	__u32 zero = 0;
	struct ll_tail *t = bpf_map_lookup_elem(&ll_tail, &zero);
	int r, fwd;

	if (!t)
		return TC_ACT_OK;
	r = kind == LL_TAIL_NAT64 ? ll_nat64_decide(t) : ll_icmp_decide(t);
	if (r != LL_R_NAT_NEW && r != LL_R_NAT_EST && r != LL_R_NAT_ICMP) {
		ll_count(&ll_reasons, r, skb->len);
		return ll_dropped(r) ? TC_ACT_SHOT : TC_ACT_OK;
	}
	fwd = ll_tail_forward(t);
	switch (kind == LL_TAIL_NAT64 ? ll_tc_nat64_rewrite(skb, t) : ll_tc_icmp_rewrite(skb, t)) {
	case 0:
		break;
	case 1:
		ll_count(&ll_reasons, kind == LL_TAIL_NAT64 ? LL_R_PASS_NAT64 : LL_R_PASS_ICMP, skb->len);
		return TC_ACT_OK;
	default:
		goto corrupt;
	}
	ll_count(&ll_reasons, r, skb->len);
	if (t->mark)
		skb->mark = t->mark;
	if (fwd == LL_R_FWD) {
		if (ll_tc_forward(skb, &t->q, &t->fwd))
			goto corrupt;
		ll_count(&ll_reasons, LL_R_FWD, skb->len);
		return bpf_redirect(t->fwd.ifindex, 0);
	}
	ll_count(&ll_reasons, fwd, skb->len);
	return TC_ACT_OK;
corrupt:
	ll_count(&ll_reasons, LL_R_DROP_REWRITE, skb->len);
	return TC_ACT_SHOT;
}

static __always_inline int ll_xdp_tail(struct xdp_md *ctx, int kind)
{
	__u32 zero = 0, len = bpf_xdp_get_buff_len(ctx);
	struct ll_tail *t = bpf_map_lookup_elem(&ll_tail, &zero);
	int r, fwd;

	if (!t)
		return XDP_PASS;
	r = kind == LL_TAIL_NAT64 ? ll_nat64_decide(t) : ll_icmp_decide(t);
	if (r != LL_R_NAT_NEW && r != LL_R_NAT_EST && r != LL_R_NAT_ICMP) {
		ll_count(&ll_reasons, r, len);
		return ll_dropped(r) ? XDP_DROP : XDP_PASS;
	}
	fwd = ll_tail_forward(t);
	switch (kind == LL_TAIL_NAT64 ? ll_xdp_nat64_rewrite(ctx, t) : ll_xdp_icmp_rewrite(ctx, t)) {
	case 0:
		break;
	case 1:
		ll_count(&ll_reasons, kind == LL_TAIL_NAT64 ? LL_R_PASS_NAT64 : LL_R_PASS_ICMP, len);
		return XDP_PASS;
	default:
		goto corrupt;
	}
	len = bpf_xdp_get_buff_len(ctx);
	ll_count(&ll_reasons, r, len);
	if (fwd == LL_R_FWD) {
		if (ll_xdp_forward(ctx, &t->q, &t->fwd))
			goto corrupt;
		ll_count(&ll_reasons, LL_R_FWD, len);
		return bpf_redirect(t->fwd.ifindex, 0);
	}
	ll_count(&ll_reasons, fwd, len);
	return XDP_PASS;
corrupt:
	ll_count(&ll_reasons, LL_R_DROP_REWRITE, len);
	return XDP_DROP;
}

SEC("tc")
int ll_tc_nat64(struct __sk_buff *skb)
{
	return ll_tc_tail(skb, LL_TAIL_NAT64);
}

SEC("tc")
int ll_tc_icmp(struct __sk_buff *skb)
{
	return ll_tc_tail(skb, LL_TAIL_ICMP);
}

SEC("xdp")
int ll_xdp_nat64(struct xdp_md *ctx)
{
	return ll_xdp_tail(ctx, LL_TAIL_NAT64);
}

SEC("xdp")
int ll_xdp_icmp(struct xdp_md *ctx)
{
	return ll_xdp_tail(ctx, LL_TAIL_ICMP);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
