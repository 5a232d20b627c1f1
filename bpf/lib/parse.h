/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/* Header parsing over [data, data_end), shared by every hook. */
#ifndef LL_PARSE_H
#define LL_PARSE_H

#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/in6.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include "common.h"
#include "maps.h"

#define LL_AF_INET 2
#define LL_AF_INET6 10

#define LL_IP_MF 0x2000
#define LL_IP_OFFMASK 0x1fff
#define LL_NEXTHDR_HOP 0
#define LL_NEXTHDR_FRAGMENT 44

/* Longest header chain the parser reads: Ethernet, one VLAN tag, IPv4 with
 * options and a TCP base header, or IPv6, ICMPv6 and the quoted IPv6 header
 * and ports of an error. Hooks make this much linear before parsing. */
#define LL_PARSE_MAX (ETH_HLEN + 4 + 40 + 8 + 40 + 4)

struct ll_vlan_hdr {
	__be16 tci;
	__be16 encap_proto;
};

/* The packet an IPv4 ICMP error quotes (ll_pkt.icmp_err): where its
 * header starts, its addresses and protocol, and its ports (an echo's
 * identifier placed as ll_parse_icmp places it). */
struct ll_inner {
	__u32 l3_off;
	struct ll_tuple t;
	__u8 proto;
	__u8 pad[3];
};

/* What the pipeline knows about a packet. Offsets are from the start of the
 * frame; addresses and ports are in network order, as on the wire. */
struct ll_pkt {
	__u32 l3_off;
	__u32 l4_off;
	__u32 len;          /* whole packet, including any non-linear part */
	__u32 family;       /* LL_AF_INET or LL_AF_INET6 */
	__be32 saddr;       /* IPv4 */
	__be32 daddr;       /* IPv4 */
	union {
		struct {
			__u8 saddr6[16]; /* IPv6 */
			__u8 daddr6[16]; /* IPv6 */
		};
		struct ll_inner inner; /* IPv4 ICMP errors (icmp_err) */
	};
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 tcp_flags;     /* TCP: FIN 0x01, SYN 0x02, RST 0x04, ACK 0x10; SCTP: see
			     * ll_sctp_flags; ICMP: the type */
	__u8 ttl;           /* TTL or hop limit */
	__u8 has_ports;     /* TCP, UDP, SCTP or ICMP(v6) echo with its header present */
	__u8 ip_options;    /* IPv4 options or an IPv6 hop-by-hop header */
	__u8 vlan;          /* one 802.1Q/802.1ad tag in the frame */
	__u8 l2_mcast;      /* group bit of the destination MAC */
	__u8 icmp_err;      /* an ICMP error quoting a TCP, UDP, SCTP (or IPv4 echo) packet:
			     * IPv4 in inner, IPv6 in ll_ct6_keys.icmp */
	__u8 dmac[6];
	__u32 tcp_ack;      /* TCP, host order: acknowledgement number */
	__u32 tcp_end;      /* TCP, host order: sequence number after this segment */
};

#define LL_TCP_FIN 0x01
#define LL_TCP_SYN 0x02
#define LL_TCP_RST 0x04
#define LL_TCP_ACK 0x10

#define LL_PARSED (-1)

#ifndef IPPROTO_SCTP
#define IPPROTO_SCTP 132
#endif

/* The SCTP common header, then the first chunk's type. */
#define LL_SCTP_HLEN 12
#define LL_SCTP_INIT 1
#define LL_SCTP_INIT_ACK 2
#define LL_SCTP_ABORT 6
#define LL_SCTP_SHUTDOWN 7
#define LL_SCTP_SHUTDOWN_ACK 8
#define LL_SCTP_SHUTDOWN_COMPLETE 14

/* An SCTP packet's first chunk as the TCP flags conntrack follows (ct.h):
 * an association opens, shuts down and aborts like a TCP connection. Its
 * acks carry no sequence numbers (tcp_ack and tcp_end stay 0), so a
 * SHUTDOWN-ACK or SHUTDOWN-COMPLETE acks the other side's SHUTDOWN whatever
 * came before. Other chunks (DATA, COOKIE-ECHO, SACK, ...) move an opening
 * association to established and nothing else. */
static __always_inline __u8 ll_sctp_flags(__u8 chunk)
{
	switch (chunk) {
	case LL_SCTP_INIT:
		return LL_TCP_SYN;
	case LL_SCTP_INIT_ACK:
		return LL_TCP_SYN | LL_TCP_ACK;
	case LL_SCTP_ABORT:
		return LL_TCP_RST;
	case LL_SCTP_SHUTDOWN:
		return LL_TCP_FIN;
	case LL_SCTP_SHUTDOWN_ACK:
		return LL_TCP_FIN | LL_TCP_ACK;
	case LL_SCTP_SHUTDOWN_COMPLETE:
		return LL_TCP_ACK;
	default:
		return 0;
	}
}

/* linux/icmp.h pulls in libc headers. */
#define LL_ICMP_ECHOREPLY 0
#define LL_ICMP_DEST_UNREACH 3
#define LL_ICMP_ECHO 8
#define LL_ICMP_TIME_EXCEEDED 11
#define LL_ICMP_PARAMETERPROB 12

struct ll_icmp_echo {
	__u8 type;
	__u8 code;
	__be16 check;
	__be16 id;
	__be16 seq;
};

#define LL_ICMP6_ECHO_REQUEST 128
#define LL_ICMP6_ECHO_REPLY 129

/* The echo identifier of an ICMP (v6: ICMPv6) echo as a port pair: the
 * source port of a request, the destination port of a reply, the other 0.
 * Returns 0 if not an echo. */
static __always_inline int ll_echo_ports(int v6, const struct ll_icmp_echo *ih, __be16 *sport,
					 __be16 *dport)
{
	if (ih->type == (v6 ? LL_ICMP6_ECHO_REQUEST : LL_ICMP_ECHO)) {
		*sport = ih->id;
		*dport = 0;
	} else if (ih->type == (v6 ? LL_ICMP6_ECHO_REPLY : LL_ICMP_ECHOREPLY)) {
		*sport = 0;
		*dport = ih->id;
	} else {
		return 0;
	}
	return 1;
}

/* An ICMP error's quoted packet (after the 8-byte ICMP header), when it
 * has a plain IPv4 header (no options) and its ports or echo header:
 * p->inner and p->icmp_err. Anything else is left as an ordinary packet. */
static __always_inline void ll_parse_icmp_err(void *data, void *data_end, __u32 l3_end,
					      struct ll_pkt *p)
{
	__u32 off = p->l4_off + sizeof(struct ll_icmp_echo);
	struct iphdr *in = data + off;
	struct ll_icmp_echo *echo = (void *)(in + 1);
	__be16 *ports = (void *)(in + 1);

	if ((void *)(echo + 1) > data_end || off + sizeof(*in) + sizeof(*echo) > l3_end)
		return;
	if (in->version != 4 || in->ihl != 5)
		return;
	p->inner.proto = in->protocol;
	if (in->protocol == IPPROTO_ICMP) {
		if (!ll_echo_ports(0, echo, &p->inner.t.sport, &p->inner.t.dport))
			return;
	} else if (in->protocol == IPPROTO_TCP || in->protocol == IPPROTO_UDP ||
		   in->protocol == IPPROTO_SCTP) {
		p->inner.t.sport = ports[0];
		p->inner.t.dport = ports[1];
	} else {
		return;
	}
	p->inner.l3_off = off;
	p->inner.t.saddr = in->saddr;
	p->inner.t.daddr = in->daddr;
	p->icmp_err = 1;
}

/* ICMPv6 errors (RFC 4443): destination unreachable, packet too big, time
 * exceeded, parameter problem. */
#define LL_ICMP6_ERR_MIN 1
#define LL_ICMP6_ERR_MAX 4

/* An ICMPv6 error's quoted packet, when it is TCP, UDP, SCTP or an ICMPv6
 * echo right after its IPv6 header: p->icmp_err, and in ll_ct6_keys.icmp the key of the
 * flow a reply to it would belong to (the IPv6 addresses would not fit
 * the pipeline's frame). */
static __always_inline void ll_parse_icmp6_err(void *data, void *data_end, __u32 l3_end,
					       struct ll_pkt *p)
{
	struct ll_icmp_echo *ih = data + p->l4_off;
	struct ipv6hdr *in = (void *)(ih + 1);
	__be16 *ports = (void *)(in + 1), sport, dport;
	struct ll_icmp_echo *echo = (void *)(in + 1);
	struct ll_ct6_keys *k6;
	__u32 zero = 0;

	if ((void *)(ports + 2) > data_end ||
	    p->l4_off + sizeof(*ih) + sizeof(*in) + 4 > l3_end)
		return;
	if (ih->type < LL_ICMP6_ERR_MIN || ih->type > LL_ICMP6_ERR_MAX || in->version != 6)
		return;
	if (in->nexthdr == IPPROTO_ICMPV6) {
		if ((void *)(echo + 1) > data_end || !ll_echo_ports(1, echo, &sport, &dport))
			return;
	} else if (in->nexthdr == IPPROTO_TCP || in->nexthdr == IPPROTO_UDP ||
		   in->nexthdr == IPPROTO_SCTP) {
		sport = ports[0];
		dport = ports[1];
	} else {
		return;
	}
	k6 = bpf_map_lookup_elem(&ll_ct6_keys, &zero);
	if (!k6)
		return;
	__builtin_memset(&k6->icmp, 0, sizeof(k6->icmp));
	__builtin_memcpy(k6->icmp.saddr, &in->daddr, 16);
	__builtin_memcpy(k6->icmp.daddr, &in->saddr, 16);
	k6->icmp.sport = dport;
	k6->icmp.dport = sport;
	k6->icmp.proto = in->nexthdr;
	p->icmp_err = 1;
}

/* ICMP echo has no ports: its identifier stands in for the client's port,
 * the source port of a request and the destination port of a reply (the
 * other port is 0), so that a reply finds its request's flow turned around
 * (ct.h ll_ct_partner) and no translation ever changes the identifier. */
static __always_inline int ll_parse_icmp(void *data, void *data_end, __u32 l3_end,
					 struct ll_pkt *p)
{
	struct ll_icmp_echo *ih = data + p->l4_off;

	if ((void *)(ih + 1) > data_end || p->l4_off + sizeof(*ih) > l3_end)
		return LL_R_PASS_TRUNCATED;
	p->tcp_flags = ih->type;
	if (ll_echo_ports(0, ih, &p->sport, &p->dport)) {
		p->has_ports = 1;
		return LL_PARSED;
	}
	/* Errors may be about a tracked flow (icmp.h); the rest are not
	 * load-balancer traffic. */
	if (ih->type == LL_ICMP_DEST_UNREACH || ih->type == LL_ICMP_TIME_EXCEEDED ||
	    ih->type == LL_ICMP_PARAMETERPROB)
		ll_parse_icmp_err(data, data_end, l3_end, p);
	return LL_PARSED;
}

/* The L4 header must lie inside the IP packet (which ends at l3_end), not in
 * an Ethernet trailer. */
static __always_inline int ll_parse_ports(void *data, void *data_end, __u32 l3_end,
					  struct ll_pkt *p)
{
	if (p->proto == IPPROTO_TCP) {
		struct tcphdr *th = data + p->l4_off;

		if ((void *)(th + 1) > data_end || p->l4_off + sizeof(*th) > l3_end)
			return LL_R_PASS_TRUNCATED;
		__u32 hlen = (((__u8 *)th)[12] >> 4) * 4;
		__u32 payload = l3_end > p->l4_off + hlen ? l3_end - p->l4_off - hlen : 0;

		p->sport = th->source;
		p->dport = th->dest;
		p->tcp_flags = ((__u8 *)th)[13];
		p->tcp_ack = bpf_ntohl(th->ack_seq);
		/* SYN and FIN each take one sequence number. */
		p->tcp_end = bpf_ntohl(th->seq) + payload + !!(p->tcp_flags & LL_TCP_SYN) +
			     !!(p->tcp_flags & LL_TCP_FIN);
		p->has_ports = 1;
	} else if (p->proto == IPPROTO_UDP) {
		struct udphdr *uh = data + p->l4_off;

		if ((void *)(uh + 1) > data_end || p->l4_off + sizeof(*uh) > l3_end)
			return LL_R_PASS_TRUNCATED;
		p->sport = uh->source;
		p->dport = uh->dest;
		p->has_ports = 1;
	} else if (p->proto == IPPROTO_SCTP) {
		/* The ports open the common header, as UDP's do. */
		struct udphdr *sh = data + p->l4_off;
		__u8 *chunk = data + p->l4_off + LL_SCTP_HLEN;

		if ((void *)(sh + 1) > data_end || p->l4_off + LL_SCTP_HLEN > l3_end)
			return LL_R_PASS_TRUNCATED;
		p->sport = sh->source;
		p->dport = sh->dest;
		if ((void *)(chunk + 1) <= data_end && p->l4_off + LL_SCTP_HLEN < l3_end)
			p->tcp_flags = ll_sctp_flags(*chunk);
		p->has_ports = 1;
	} else if (p->proto == IPPROTO_ICMP && p->family == LL_AF_INET) {
		return ll_parse_icmp(data, data_end, l3_end, p);
	} else if (p->proto == IPPROTO_ICMPV6) {
		struct ll_icmp_echo *ih = data + p->l4_off;

		/* An echo's identifier is its port, as for ICMP. */
		if ((void *)(ih + 1) <= data_end && p->l4_off + sizeof(*ih) <= l3_end &&
		    ll_echo_ports(1, ih, &p->sport, &p->dport)) {
			p->tcp_flags = ih->type;
			p->has_ports = 1;
			return LL_PARSED;
		}
		ll_parse_icmp6_err(data, data_end, l3_end, p);
	}
	return LL_PARSED;
}

static __always_inline int ll_parse_ipv4(void *data, void *data_end, __u32 off, __u32 pkt_len,
					 struct ll_pkt *p)
{
	struct iphdr *iph = data + off;
	__u16 ihl_bytes;

	if ((void *)(iph + 1) > data_end)
		return LL_R_PASS_TRUNCATED;
	if (iph->version != 4 || iph->ihl < 5)
		return LL_R_PASS_BAD_HEADER;
	ihl_bytes = iph->ihl * 4;
	if (bpf_ntohs(iph->tot_len) < ihl_bytes || off + bpf_ntohs(iph->tot_len) > pkt_len)
		return LL_R_PASS_BAD_HEADER;
	if (iph->frag_off & bpf_htons(LL_IP_MF | LL_IP_OFFMASK))
		return LL_R_PASS_FRAGMENT;

	p->family = LL_AF_INET;
	p->l4_off = off + ihl_bytes;
	p->saddr = iph->saddr;
	p->daddr = iph->daddr;
	p->proto = iph->protocol;
	p->ttl = iph->ttl;
	p->ip_options = iph->ihl > 5;
	return ll_parse_ports(data, data_end, off + bpf_ntohs(iph->tot_len), p);
}

static __always_inline int ll_parse_ipv6(void *data, void *data_end, __u32 off, __u32 pkt_len,
					 struct ll_pkt *p)
{
	struct ipv6hdr *ip6 = data + off;

	if ((void *)(ip6 + 1) > data_end)
		return LL_R_PASS_TRUNCATED;
	if (ip6->version != 6)
		return LL_R_PASS_BAD_HEADER;
	if (off + sizeof(*ip6) + bpf_ntohs(ip6->payload_len) > pkt_len)
		return LL_R_PASS_BAD_HEADER;
	if (ip6->nexthdr == LL_NEXTHDR_FRAGMENT)
		return LL_R_PASS_FRAGMENT;

	p->family = LL_AF_INET6;
	p->l4_off = off + sizeof(*ip6);
	__builtin_memcpy(p->saddr6, &ip6->saddr, sizeof(p->saddr6));
	__builtin_memcpy(p->daddr6, &ip6->daddr, sizeof(p->daddr6));
	p->proto = ip6->nexthdr;
	p->ttl = ip6->hop_limit;
	p->ip_options = ip6->nexthdr == LL_NEXTHDR_HOP;
	return ll_parse_ports(data, data_end, p->l4_off + bpf_ntohs(ip6->payload_len), p);
}

/* Returns LL_PARSED when p describes an IPv4 or IPv6 packet the pipeline can
 * work on, otherwise the ll_reason for handing it to Linux untouched.
 * pkt_len is the whole packet's length (it may exceed the linear data). */
static __always_inline int ll_parse(void *data, void *data_end, __u32 pkt_len, struct ll_pkt *p)
{
	struct ethhdr *eth = data;
	__u32 off = ETH_HLEN;
	__be16 proto;

	if ((void *)(eth + 1) > data_end)
		return LL_R_PASS_TRUNCATED;
	__builtin_memcpy(p->dmac, eth->h_dest, sizeof(p->dmac));
	p->l2_mcast = eth->h_dest[0] & 1;
	p->len = pkt_len;
	proto = eth->h_proto;
	if (proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD)) {
		struct ll_vlan_hdr *vh = data + off;

		if ((void *)(vh + 1) > data_end)
			return LL_R_PASS_TRUNCATED;
		proto = vh->encap_proto;
		off += sizeof(*vh);
		p->vlan = 1;
	}
	p->l3_off = off;
	if (proto == bpf_htons(ETH_P_IP))
		return ll_parse_ipv4(data, data_end, off, pkt_len, p);
	if (proto == bpf_htons(ETH_P_IPV6))
		return ll_parse_ipv6(data, data_end, off, pkt_len, p);
	return LL_R_PASS_NOT_IP;
}

#endif
