/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/* Header parsing over [data, data_end), shared by every hook. */
#ifndef LL_PARSE_H
#define LL_PARSE_H

#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include "common.h"

#define LL_IP_MF 0x2000
#define LL_IP_OFFMASK 0x1fff

/* Longest header chain the parser reads: Ethernet, one VLAN tag, IPv4 with
 * options, TCP base header. Hooks make this much linear before parsing. */
#define LL_PARSE_MAX (ETH_HLEN + 4 + 60 + 20)

struct ll_vlan_hdr {
	__be16 tci;
	__be16 encap_proto;
};

/* What the pipeline knows about a packet. Offsets are from the start of the
 * frame; the addresses and ports are in network order, as on the wire. */
struct ll_pkt {
	__u32 l3_off;
	__u32 l4_off;
	__u32 len;
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 tcp_flags; /* TCP: the flags byte (FIN 0x01, SYN 0x02, RST 0x04, ACK 0x10) */
};

#define LL_TCP_FIN 0x01
#define LL_TCP_SYN 0x02
#define LL_TCP_RST 0x04

#define LL_PARSED (-1)

/* The L4 header must lie inside the IPv4 packet, not in an Ethernet trailer.
 * Returns LL_PARSED when p describes an IPv4 TCP or UDP packet the pipeline
 * can translate, otherwise the ll_reason for handing it to Linux untouched.
 * pkt_len is the whole packet's length (it may exceed the linear data). */
static __always_inline int ll_parse(void *data, void *data_end, __u32 pkt_len,
				    struct ll_pkt *p)
{
	struct ethhdr *eth = data;
	struct iphdr *iph;
	__u32 off = ETH_HLEN;
	__u16 ihl_bytes;
	__be16 proto;

	if ((void *)(eth + 1) > data_end)
		return LL_R_PASS_TRUNCATED;
	proto = eth->h_proto;
	if (proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD)) {
		struct ll_vlan_hdr *vh = data + off;

		if ((void *)(vh + 1) > data_end)
			return LL_R_PASS_TRUNCATED;
		proto = vh->encap_proto;
		off += sizeof(*vh);
	}
	if (proto != bpf_htons(ETH_P_IP))
		return LL_R_PASS_NOT_IP;

	iph = data + off;
	if ((void *)(iph + 1) > data_end)
		return LL_R_PASS_TRUNCATED;
	if (iph->version != 4 || iph->ihl < 5)
		return LL_R_PASS_BAD_HEADER;
	ihl_bytes = iph->ihl * 4;
	if (bpf_ntohs(iph->tot_len) < ihl_bytes || off + bpf_ntohs(iph->tot_len) > pkt_len)
		return LL_R_PASS_BAD_HEADER;
	if (iph->frag_off & bpf_htons(LL_IP_MF | LL_IP_OFFMASK))
		return LL_R_PASS_FRAGMENT;

	p->l3_off = off;
	p->l4_off = off + ihl_bytes;
	p->len = pkt_len;
	p->saddr = iph->saddr;
	p->daddr = iph->daddr;
	p->proto = iph->protocol;

	if (iph->protocol == IPPROTO_TCP) {
		struct tcphdr *th = data + p->l4_off;

		if ((void *)(th + 1) > data_end || p->l4_off + sizeof(*th) > off + bpf_ntohs(iph->tot_len))
			return LL_R_PASS_TRUNCATED;
		p->sport = th->source;
		p->dport = th->dest;
		p->tcp_flags = ((__u8 *)th)[13];
		return LL_PARSED;
	}
	if (iph->protocol == IPPROTO_UDP) {
		struct udphdr *uh = data + p->l4_off;

		if ((void *)(uh + 1) > data_end || p->l4_off + sizeof(*uh) > off + bpf_ntohs(iph->tot_len))
			return LL_R_PASS_TRUNCATED;
		p->sport = uh->source;
		p->dport = uh->dest;
		return LL_PARSED;
	}
	return LL_R_PASS_L4_PROTO;
}

#endif
