/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/* Entry points. Both hooks live in one object so they share its maps; each
 * only adapts its context to the shared pipeline and maps the verdict. */
#include <linux/pkt_cls.h>
#include "lib/tc.h"
#include "lib/xdp.h"

SEC("tc")
int ll_tc_ingress(struct __sk_buff *skb)
{
	__u32 linear = skb->data_end - skb->data;
	struct ll_verdict v = {};
	struct ll_pkt p = {};
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
	ll_pipeline(&p, skb->ingress_ifindex, skb->gso_size ? 0 : skb->len - p.l3_off, &v);
	if (v.mark)
		skb->mark = v.mark;
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
	__u32 len = bpf_xdp_get_buff_len(ctx);
	struct ll_verdict v = {};
	struct ll_pkt p = {};
	int r;

	r = ll_parse(data, end, len, &p);
	if (r != LL_PARSED) {
		ll_count(&ll_reasons, r, len);
		return XDP_PASS;
	}
	ll_pipeline(&p, ctx->ingress_ifindex, len - p.l3_off, &v);
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

char LICENSE[] SEC("license") = "Dual BSD/GPL";
