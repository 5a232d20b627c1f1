/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/* TC ingress entry: adapt the skb to the shared pipeline and its verdicts. */
#include <linux/pkt_cls.h>
#include "lib/nat_tc.h"

SEC("tc")
int ll_tc_ingress(struct __sk_buff *skb)
{
	__u32 linear = skb->data_end - skb->data;
	struct ll_nat nat = {};
	struct ll_pkt p = {};
	int r;

	/* Headers of GSO or fragmented skbs may sit outside the linear area. */
	if (linear < LL_PARSE_MAX && skb->len > linear)
		bpf_skb_pull_data(skb, skb->len < LL_PARSE_MAX ? skb->len : LL_PARSE_MAX);

	r = ll_parse((void *)(long)skb->data, (void *)(long)skb->data_end, skb->len, &p);
	if (r == LL_PARSED) {
		r = ll_lb_decide(&p, &nat);
		if ((r == LL_R_NAT_NEW || r == LL_R_NAT_EST) && ll_tc_rewrite(skb, &p, &nat)) {
			ll_count(&ll_reasons, LL_R_DROP_REWRITE, skb->len);
			return TC_ACT_SHOT;
		}
	}
	ll_count(&ll_reasons, r, skb->len);
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
