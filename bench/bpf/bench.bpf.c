/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/* Reference programs of the benchmark suite; none of them is part of the
 * datapath.
 *  - floor_tc / floor_xdp: return at once. Their BPF_PROG_TEST_RUN time is
 *    what running any program costs, the floor of the micro benchmark.
 *  - ceiling_tc / ceiling_xdp: the least a forwarder can do, a lookup of
 *    the destination's /16, a MAC rewrite and a redirect. No parsing beyond
 *    that, no TTL, no NAT: the lab's ceiling for packet rate.
 *  - sink: at each backend's TC ingress, counts and drops the UDP load, so
 *    the generated packets cost the backends as little as possible and the
 *    count is exact. */
#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

/* The UDP port the load is translated to (discard). */
#define SINK_PORT 9

/* Where the ceiling sends a /16: dmac then smac, the Ethernet header's
 * first 12 bytes. */
struct ceiling_hop {
	__u32 ifindex;
	__u8 macs[12];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16);
	__type(key, __be32);
	__type(value, struct ceiling_hop);
} ceiling_hops SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} sink_packets SEC(".maps");

SEC("tc")
int floor_tc(struct __sk_buff *skb)
{
	return TC_ACT_OK;
}

SEC("xdp")
int floor_xdp(struct xdp_md *ctx)
{
	return XDP_PASS;
}

static __always_inline struct ceiling_hop *ceiling_rewrite(void *data, void *end)
{
	struct ethhdr *eth = data;
	struct iphdr *iph = (void *)(eth + 1);
	struct ceiling_hop *hop;
	__be32 net;

	if ((void *)(iph + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP))
		return 0;
	net = iph->daddr & bpf_htonl(0xffff0000);
	hop = bpf_map_lookup_elem(&ceiling_hops, &net);
	if (hop)
		__builtin_memcpy(data, hop->macs, sizeof(hop->macs));
	return hop;
}

/* Packet sockets (trafgen) and GSO build skbs whose headers sit in page
 * fragments; direct access sees only the linear part, so pull the headers
 * in first, as any TC program must. */
static __always_inline void tc_pull(struct __sk_buff *skb, __u32 len)
{
	if (skb->data + len > skb->data_end)
		bpf_skb_pull_data(skb, len);
}

SEC("tc")
int ceiling_tc(struct __sk_buff *skb)
{
	struct ceiling_hop *hop;

	tc_pull(skb, sizeof(struct ethhdr) + sizeof(struct iphdr));
	hop = ceiling_rewrite((void *)(long)skb->data, (void *)(long)skb->data_end);

	return hop ? bpf_redirect(hop->ifindex, 0) : TC_ACT_OK;
}

SEC("xdp")
int ceiling_xdp(struct xdp_md *ctx)
{
	struct ceiling_hop *hop =
		ceiling_rewrite((void *)(long)ctx->data, (void *)(long)ctx->data_end);

	return hop ? bpf_redirect(hop->ifindex, 0) : XDP_PASS;
}

SEC("tc")
int sink(struct __sk_buff *skb)
{
	void *data, *end;
	struct ethhdr *eth;
	struct iphdr *iph;
	struct udphdr *uh;
	__u32 zero = 0;
	__u64 *count;

	tc_pull(skb, sizeof(*eth) + sizeof(*iph) + sizeof(*uh));
	data = (void *)(long)skb->data;
	end = (void *)(long)skb->data_end;
	eth = data;
	iph = (void *)(eth + 1);
	uh = (void *)(iph + 1);

	/* The load never carries IP options, so a fixed offset is enough. */
	if ((void *)(uh + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP) || iph->ihl != 5 ||
	    iph->protocol != IPPROTO_UDP || uh->dest != bpf_htons(SINK_PORT))
		return TC_ACT_OK;
	count = bpf_map_lookup_elem(&sink_packets, &zero);
	/* GRO could merge datagrams; count every segment. */
	if (count)
		*count += skb->gso_segs > 1 ? skb->gso_segs : 1;
	return TC_ACT_SHOT;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
