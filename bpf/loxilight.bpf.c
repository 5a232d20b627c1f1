/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/* Entry points. Both hooks live in one object so they share its maps; each
 * only adapts its context to the shared pipeline and maps the verdict. */
#include <linux/pkt_cls.h>
#include "lib/tc.h"
#include "lib/xdp.h"

int ll_tc_nat64(struct __sk_buff *skb);
int ll_xdp_nat64(struct xdp_md *ctx);

/* The NAT64 translators, by tail call: one array per program type, filled
 * by libbpf at load (also when the daemon reuses the pinned array). */
struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__array(values, int(struct __sk_buff *));
} ll_tc_tails SEC(".maps") = {.values = {[0] = (void *)&ll_tc_nat64}};

struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__array(values, int(struct xdp_md *));
} ll_xdp_tails SEC(".maps") = {.values = {[0] = (void *)&ll_xdp_nat64}};

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
	ll_pipeline(&p, ingress, mtu_len, &v);
	if (v.mark)
		skb->mark = v.mark;
	if (v.reason == LL_GO_NAT64) {
		if (!ll_tail_fill(&p, ingress, mtu_len))
			bpf_tail_call(skb, &ll_tc_tails, 0);
		v.reason = LL_R_PASS_NAT64;
	}
	if (v.nat_reason) {
		ll_count(&ll_reasons, v.nat_reason, skb->len);
		if (ll_tc_rewrite(skb, &p, &v.nat))
			goto corrupt;
		if (v.nat.mark)
			skb->mark = v.nat.mark;
	}
	if (v.reason == LL_R_FWD) {
		if (ll_tc_forward(skb, &p, &v.fwd))
			goto corrupt;
		ll_count(&ll_reasons, LL_R_FWD, skb->len);
		return bpf_redirect(v.fwd.ifindex, 0);
	}
	ll_count(&ll_reasons, v.reason, skb->len);
	if (v.reason == LL_R_FW_REDIRECT)
		return bpf_redirect(v.fwd.ifindex, 0);
	return ll_dropped(v.reason) ? TC_ACT_SHOT : TC_ACT_OK;
corrupt:
	ll_count(&ll_reasons, LL_R_DROP_REWRITE, skb->len);
	return TC_ACT_SHOT;
}

/* XDP has no skb and so no mark: a firewall rule's mark is not applied. */
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
	ll_pipeline(&p, ingress, len - p.l3_off, &v);
	if (v.reason == LL_GO_NAT64) {
		if (!ll_tail_fill(&p, ingress, len - p.l3_off))
			bpf_tail_call(ctx, &ll_xdp_tails, 0);
		v.reason = LL_R_PASS_NAT64;
	}
	if (v.nat_reason) {
		ll_count(&ll_reasons, v.nat_reason, len);
		if (ll_xdp_rewrite(ctx, &p, &v.nat))
			goto corrupt;
	}
	if (v.reason == LL_R_FWD) {
		if (ll_xdp_forward(ctx, &p, &v.fwd))
			goto corrupt;
		ll_count(&ll_reasons, LL_R_FWD, len);
		return bpf_redirect(v.fwd.ifindex, 0);
	}
	ll_count(&ll_reasons, v.reason, len);
	if (v.reason == LL_R_FW_REDIRECT)
		return bpf_redirect(v.fwd.ifindex, 0);
	return ll_dropped(v.reason) ? XDP_DROP : XDP_PASS;
corrupt:
	ll_count(&ll_reasons, LL_R_DROP_REWRITE, len);
	return XDP_DROP;
}

/* The NAT64 translators (nat64.h), entered by tail call with the packet in
 * ll_tail. A rewrite that fails midway leaves a corrupt packet: dropped. */
SEC("tc")
int ll_tc_nat64(struct __sk_buff *skb)
{
	__u32 zero = 0;
	struct ll_tail *t = bpf_map_lookup_elem(&ll_tail, &zero);
	int r, fwd;

	if (!t)
		return TC_ACT_OK;
	r = ll_nat64_decide(t);
	if (r != LL_R_NAT_NEW && r != LL_R_NAT_EST) {
		ll_count(&ll_reasons, r, skb->len);
		return ll_dropped(r) ? TC_ACT_SHOT : TC_ACT_OK;
	}
	fwd = ll_nat64_forward(t);
	switch (ll_tc_nat64_rewrite(skb, t)) {
	case 0:
		break;
	case 1:
		ll_count(&ll_reasons, LL_R_PASS_NAT64, skb->len);
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

SEC("xdp")
int ll_xdp_nat64(struct xdp_md *ctx)
{
	__u32 zero = 0, len = bpf_xdp_get_buff_len(ctx);
	struct ll_tail *t = bpf_map_lookup_elem(&ll_tail, &zero);
	int r, fwd;

	if (!t)
		return XDP_PASS;
	r = ll_nat64_decide(t);
	if (r != LL_R_NAT_NEW && r != LL_R_NAT_EST) {
		ll_count(&ll_reasons, r, len);
		return ll_dropped(r) ? XDP_DROP : XDP_PASS;
	}
	fwd = ll_nat64_forward(t);
	switch (ll_xdp_nat64_rewrite(ctx, t)) {
	case 0:
		break;
	case 1:
		ll_count(&ll_reasons, LL_R_PASS_NAT64, len);
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

char LICENSE[] SEC("license") = "Dual BSD/GPL";
