/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/* Shared definitions: map keys and values, limits, verdict reasons.
 * The daemon uses the Rust types that libbpf-cargo generates from this BTF,
 * so every struct here is the single definition of its layout. */
#ifndef LL_COMMON_H
#define LL_COMMON_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

/* Endpoints per service and selection slots per service. Weights are
 * expanded by the daemon into slots, so rr and hash both honour them. */
#define LL_MAX_ENDPOINTS 32
#define LL_MAX_SLOTS 128

/* Default sizes; the daemon overrides max_entries from its config before load. */
#define LL_DEFAULT_SERVICES 4096
#define LL_DEFAULT_CT 1000000
#define LL_DEFAULT_ROUTES 262144
#define LL_DEFAULT_NEIGHS 16384

enum ll_selection {
	LL_SEL_RR = 0,       /* round robin over the weighted slots */
	LL_SEL_HASH = 1,     /* flow hash over the weighted slots */
	LL_SEL_PRIORITY = 2, /* random over the weighted slots: traffic in weight ratio */
	LL_SEL_PERSIST = 3,  /* a client address sticks to its endpoint (timeout) */
	LL_SEL_LC = 4,       /* least active connections per weight */
	LL_SEL_MAGLEV = 5,   /* consistent hashing: removing 1 of N moves ~1/N */
};

/* How a service's flows reach their endpoints. */
enum __attribute__((packed)) ll_mode {
	LL_MODE_DEFAULT = 0, /* DNAT; replies come back through the LB */
	LL_MODE_ONEARM = 1,  /* out the ingress interface, source translated to the LB's address there */
	LL_MODE_FULLNAT = 2, /* source translated to the LB's address towards the endpoint */
	LL_MODE_DSR = 3,     /* L2 direct server return: destination MAC only */
	/* An IPv6 VIP with IPv4 endpoints (set by the daemon, not a user
	 * mode): both addresses translated across families (nat64.h). */
	LL_MODE_NAT64 = 4,
};

/* Maglev lookup table size: a prime much larger than LL_MAX_ENDPOINTS. */
#define LL_MAGLEV_SIZE 1021

struct ll_maglev {
	__u8 slots[LL_MAGLEV_SIZE]; /* -> endpoint index */
	__u8 pad[3];
};

struct ll_persist_key {
	__u32 svc_id;
	__be32 client;
};

struct ll_persist {
	__be32 ep_addr;     /* the endpoint as it was: a changed list is noticed */
	__be16 ep_port;
	__u16 ep_idx;
	__u64 last_ns;
};

/* What happened to a packet, counted per CPU in ll_reasons. Every packet
 * ends with exactly one verdict (a pass, a drop or LL_R_FWD); packets the LB
 * translated also count LL_R_NAT_NEW, LL_R_NAT_EST or LL_R_NAT_ICMP. */
enum ll_reason {
	LL_R_PASS_NOT_IP = 0,    /* neither IPv4 nor IPv6 (ARP, LLDP, ...) */
	LL_R_PASS_TRUNCATED,     /* shorter than its headers */
	LL_R_PASS_BAD_HEADER,    /* IP version, IHL or length inconsistent */
	LL_R_PASS_FRAGMENT,      /* IP fragment: no L4 header, Linux reassembles */
	LL_R_PASS_NO_ENDPOINT,   /* VIP with no usable endpoint */
	LL_R_PASS_CT_FULL,       /* conntrack insert failed: untranslated to Linux */
	LL_R_PASS_CT_CLASH,      /* the endpoint-side tuple belongs to another live flow */
	LL_R_NAT_NEW,            /* new flow, endpoint chosen, translated */
	LL_R_NAT_EST,            /* conntrack hit, translated */
	LL_R_DROP_REWRITE,       /* a rewrite helper failed midway: packet is corrupt */
	LL_R_PASS_OTHER_HOST,    /* L2 destination is not the ingress interface */
	LL_R_PASS_MCAST,         /* multicast, broadcast or IPv6 link-local */
	LL_R_PASS_LOCAL,         /* to one of the host's own addresses */
	LL_R_PASS_TTL,           /* TTL / hop limit <= 1: Linux sends the ICMP error */
	LL_R_PASS_IP_OPTIONS,    /* IPv4 options or IPv6 hop-by-hop header */
	LL_R_PASS_VLAN,          /* 802.1Q-tagged: Linux owns VLAN forwarding */
	LL_R_PASS_NO_ROUTE,      /* no route in the mirrored main table */
	LL_R_PASS_ROUTE_TYPE,    /* blackhole, unreachable or prohibit route */
	LL_R_PASS_NOT_MANAGED,   /* egress interface without the datapath */
	LL_R_PASS_EGRESS_DOWN,   /* egress interface down */
	LL_R_PASS_MTU,           /* larger than the egress MTU */
	LL_R_PASS_NO_NEIGH,      /* next hop unresolved: Linux resolves it */
	LL_R_FWD,                /* forwarded by the datapath (redirect) */
	LL_R_PASS_MARTIAN,       /* loopback, unspecified, ... addresses Linux drops */
	LL_R_DROP_SOURCE,        /* new flow to a VIP from a client outside its allowed sources */
	LL_R_DROP_FW,            /* a firewall rule drops the flow's first packet */
	LL_R_DROP_FW_DEFAULT,    /* no firewall rule matched and the default policy is drop */
	LL_R_PASS_FW_TRAP,       /* a firewall rule traps the packet to Linux */
	LL_R_FW_REDIRECT,        /* a firewall rule redirects the packet, unchanged, to an interface */
	LL_R_DROP_NAT_PORTS,     /* no free source port for a source-translated flow: refused */
	LL_R_PASS_NO_NAT_ADDR,   /* no LB address on the interface towards the endpoint */
	LL_R_PASS_ONEARM_EGRESS, /* onearm: the endpoint is not reached through the ingress interface */
	LL_R_PASS_NO_SNAT,       /* a SNAT rule matched a packet without ports (ICMP(v6) but echo): untranslated to Linux */
	LL_R_PASS_NAT64,         /* NAT64 packet not translatable (IP options, VLAN tag, UDP without
				  * checksum, a reply whose flow is gone): untranslated to Linux */
	LL_R_NAT_ICMP,           /* ICMP error about a tracked flow, translated as the flow is */
	LL_R_PASS_ICMP,          /* ICMP error about a tracked flow, not translatable (IP options,
				  * VLAN tag, the flow gone meanwhile): untranslated to Linux */
	LL_R_PASS_TAIL,          /* the program for the packet could not be entered by tail call
				  * (its array not filled): untranslated to Linux */
	LL_R_MAX,
};

/* The mirror of the kernel's network state, written by the daemon. */
#define LL_MAX_NEXTHOPS 8

#define LL_IF_UP 0x1        /* administratively and operationally up */
#define LL_IF_ATTACHED 0x2  /* the datapath runs on it */

struct ll_iface {
	__u8 mac[6];
	__u16 pad;
	__u32 mtu;
	__u32 flags;        /* LL_IF_* */
	char name[16];
};

/* IPv4 addresses use the first 4 bytes of a 16-byte address. */
struct ll_addr_key {
	__u32 family;       /* AF_INET or AF_INET6 */
	__u8 addr[16];
};

struct ll_local {
	__u32 ifindex;
	__u32 prefixlen;
};

enum ll_route_type {
	LL_RT_UNICAST = 0,
	LL_RT_BLACKHOLE = 1,
	LL_RT_UNREACHABLE = 2,
	LL_RT_PROHIBIT = 3,
};

struct ll_nexthop {
	__u32 ifindex;
	__u32 pad;
	__u8 gw[16];        /* all zero: on-link, the destination is the neighbour */
};

struct ll_route {
	enum ll_route_type type;
	__u32 n_nexthops;   /* > 1: ECMP, chosen by flow hash */
	struct ll_nexthop nh[LL_MAX_NEXTHOPS];
};

struct ll_lpm4_key {
	__u32 prefixlen;
	__u8 addr[4];
};

struct ll_lpm6_key {
	__u32 prefixlen;
	__u8 addr[16];
};

/* The ports translated sources get (ll_nat_ports[0], set by the daemon):
 * [min, max]; max 0: the default range. */
struct ll_nat_ports {
	__u16 min;
	__u16 max;
};

/* The LB's addresses per interface and family, for source translation: an
 * entry per address's subnet (prefixlen 64 + its prefix length, the address
 * in the subnet's bits) and one per interface and family (prefixlen 64: the
 * interface's fallback). A lookup with prefixlen 64 + the address width and
 * the next hop finds the address whose subnet holds it, else the fallback.
 * The value (struct ll_ip) is the address; IPv4 in its first 4 bytes. */
struct ll_ifaddr_key {
	__u32 prefixlen;
	__u32 ifindex;
	__u32 family;       /* 4 or 6 */
	__u8 addr[16];
};

struct ll_ip {
	__u8 addr[16];
};

struct ll_neigh_key {
	__u32 ifindex;
	__u32 family;
	__u8 addr[16];
};

struct ll_neigh {
	__u8 mac[6];
	__u16 state;        /* the kernel's NUD_* state, for display */
};

struct ll_svc_key {
	__be32 vip;
	__be16 port;
	__u8 proto;
	__u8 pad;
};

/* Port ranges of the services on one VIP and protocol (ll_svc_ranges). A
 * range's service sits in ll_services under its first port, so a packet to
 * any port of it costs one more lookup, not one entry per port. */
#define LL_MAX_RANGES 16

struct ll_range_key {
	__be32 vip;
	__u8 proto;
	__u8 pad[3];
};

struct ll_ranges {
	__u32 n;                  /* ranges in use, at the front */
	__u16 min[LL_MAX_RANGES]; /* host order, inclusive */
	__u16 max[LL_MAX_RANGES];
};

/* One bit per hash of a VIP with ranges (ll_range_bit): a packet to an
 * address whose bit is clear has no range to look up. The daemon computes
 * the same hash (src/datapath/service.rs range_bit). */
#define LL_RANGE_BITS 1024

struct ll_range_vips {
	__u64 bits[LL_RANGE_BITS / 64];
};

static __always_inline __u32 ll_range_bit(__be32 vip)
{
	return (vip * 0x9e3779b1u) >> 22; /* the top 10 bits: 0-1023 */
}

/* An IPv6 service (ll_services6): ll_svc_key with a 16-byte address. */
struct ll_svc6_key {
	__u8 vip[16];
	__be16 port;
	__u8 proto;
	__u8 pad;
};

struct ll_endpoint {
	__be32 addr;
	__be16 port;
	__u8 weight;        /* 0: down or draining, takes no new flows */
	__u8 pad;
};

/* One service: replaced whole by a single hash update, so the datapath never
 * sees a half-written endpoint set. */
struct ll_svc {
	__u32 id;           /* index into the per-service counter arrays */
	enum ll_selection sel;
	__u16 n_slots;      /* 0: no usable endpoint */
	__u8 n_endpoints;
	enum ll_mode mode;
	__u32 persist_s;    /* LL_SEL_PERSIST: how long an idle client stays stuck */
	struct ll_endpoint endpoints[LL_MAX_ENDPOINTS];
	__u8 slots[LL_MAX_SLOTS]; /* slot -> endpoint index */
};

/* An IPv6 service: the ll_svc that selection works on, whose endpoints'
 * addr holds a 32-bit fold of each address (so that persist notices a
 * changed list), and the endpoints' addresses. One value, replaced whole as
 * ll_svc is. */
struct ll_svc6 {
	struct ll_svc svc;
	__u8 addr[LL_MAX_ENDPOINTS][16];
};

/* Per-service options that endpoint selection does not need, by service
 * id in ll_svc_opts (ll_svc stays as it is). */
#define LL_SVC_F_SOURCES 0x1 /* new flows only from the prefixes in ll_svc_sources */

struct ll_svc_opts {
	__u32 mark;         /* TC: skb->mark of the service's packets; 0: left alone */
	__u32 flags;        /* LL_SVC_F_* */
};

/* Allowed client prefixes, all services in one LPM trie. */
#define LL_MAX_SOURCES 16384

struct ll_src_key {
	__u32 prefixlen;    /* 32 (the service id) + the prefix's length */
	__be32 svc_id;      /* big endian: the key's leading bits */
	__u8 addr[4];
};

struct ll_ct_key {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 pad[3];
};

/* An IPv6 flow's direction (ll_conntrack6): load balanced, or let in by
 * the firewall untranslated. */
struct ll_ct6_key {
	__u8 saddr[16];
	__u8 daddr[16];
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 pad[3];
};

/* Packed enums keep these fields one byte wide and still typed in BTF. */
enum __attribute__((packed)) ll_ct_dir {
	LL_CT_ORIGINAL = 0, /* client -> service */
	LL_CT_REPLY = 1,    /* endpoint -> client */
};

/* Which addresses and ports of a packet its entry rewrites: bits, so that a
 * direction can translate its source, its destination or both. */
enum __attribute__((packed)) ll_xlate {
	LL_XLATE_NONE = 0,
	LL_XLATE_SRC = 0x1, /* source address and port */
	LL_XLATE_DST = 0x2, /* destination address and port */
	LL_XLATE_BOTH = 0x3,
	/* Direct server return: nothing is rewritten, the packet is routed to
	 * nat.daddr (the endpoint) instead of its destination, and the flow
	 * has no reply entry (replies bypass the LB). */
	LL_XLATE_DSR = 0x4,
	/* A NAT64 flow's (nat64.h): in ll_conntrack6, one of its two entries
	 * (the IPv4 side's under IPv4-mapped addresses); in ll_conntrack, the
	 * reservation of its IPv4 reply tuple, which claims the source port and
	 * sends the replies to the translator. */
	LL_XLATE_64 = 0x8,
};

/* An IPv4 address and port pair for each end, laid out as in the IP and
 * TCP/UDP headers (source before destination). */
struct ll_tuple {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
};

/* The state of a flow, the same in both of its entries. TCP follows Linux's
 * conntrack states, simplified: no window tracking, and a FIN counts as
 * acknowledged once the other side acks its sequence number. SCTP goes
 * through the same states from its chunk types (parse.h): INIT is the SYN,
 * INIT-ACK the SYN-ACK, SHUTDOWN a FIN, SHUTDOWN-ACK the ack of it and the
 * other side's FIN, SHUTDOWN-COMPLETE the last ack, ABORT a RST. UDP and
 * ICMP echo only tell whether a reply was seen. */
enum __attribute__((packed)) ll_ct_state {
	LL_CT_SYN_SENT = 0, /* TCP: SYN from the client */
	LL_CT_SYN_RECV,     /* TCP: SYN-ACK from the endpoint */
	LL_CT_ESTABLISHED,  /* TCP: the client acked the SYN-ACK, or picked up mid-stream */
	LL_CT_FIN_WAIT,     /* TCP: one side sent FIN */
	LL_CT_CLOSE_WAIT,   /* TCP: that FIN was acked, the other side still sends */
	LL_CT_LAST_ACK,     /* TCP: both sides sent FIN, not both acked yet */
	LL_CT_TIME_WAIT,    /* TCP: both FINs acked */
	LL_CT_CLOSE,        /* TCP: RST seen */
	LL_CT_UNREPLIED,    /* UDP, ICMP echo: no reply yet */
	LL_CT_REPLIED,      /* UDP, ICMP echo: the endpoint answered */
	LL_CT_STATE_MAX,
};

/* What a flow has seen (ll_ct.seen). The bits only accumulate and are ORed
 * atomically into both entries, so CPUs handling the two directions at once
 * cannot lose each other's events; the state is a function of them. */
#define LL_CT_SEEN_SYN             0x001 /* SYN from the client */
#define LL_CT_SEEN_SYNACK          0x002 /* SYN-ACK from the endpoint */
#define LL_CT_SEEN_EST             0x004 /* handshake completed, or picked up mid-stream */
#define LL_CT_SEEN_FIN_ORIG        0x008 /* FIN from the client */
#define LL_CT_SEEN_FIN_REPLY       0x010 /* FIN from the endpoint */
#define LL_CT_SEEN_FIN_ORIG_ACKED  0x020 /* the client's FIN was acked */
#define LL_CT_SEEN_FIN_REPLY_ACKED 0x040 /* the endpoint's FIN was acked */
#define LL_CT_SEEN_RST             0x080
#define LL_CT_SEEN_REPLY           0x100 /* not TCP: a packet from the endpoint */

/* One direction of a flow, carrying its own translation. 56 bytes, which the
 * per-entry memory of a 1,000,000-entry table is sensitive to. */
struct ll_ct {
	/* The packet's tuple after translation: fields the entry does not
	 * rewrite hold the key's (but see LL_XLATE_DSR). Turned around, it is
	 * the partner's key. */
	struct ll_tuple nat;
	enum ll_xlate xlate;
	enum ll_ct_dir dir;
	enum ll_ct_state state;
	__u8 pad;
	__u32 seen;         /* LL_CT_SEEN_* */
	__u32 fin_ack;      /* TCP: the ack number from this direction that acks the other's FIN */
	__u32 svc_id;
	__u32 ep_idx;
	__u64 packets;
	__u64 bytes;
	__u64 last_seen_ns; /* bpf_ktime_get_ns (CLOCK_MONOTONIC) of the last packet */
};

/* The translated addresses of an IPv6 packet (ll_ct6, ll_nat6). */
struct ll_addrs6 {
	__u8 saddr[16];
	__u8 daddr[16];
};

/* One direction of an IPv6 flow: the ll_ct that the state machine (ct.h)
 * works on, whose nat holds the translated ports (its addresses are 0), and
 * the translated addresses. A flow without translation has the key's. */
struct ll_ct6 {
	struct ll_ct ct;
	struct ll_addrs6 nat6;
};

/* Conntrack bookkeeping, per CPU in ll_ct_stats. The datapath counts what it
 * inserts and deletes; the daemon counts its own deletions under keys the
 * datapath never writes. What is inserted but neither deleted nor present
 * any more was evicted by the LRU. */
enum ll_ct_stat {
	LL_CT_STAT_CREATED = 0, /* datapath: entries inserted */
	LL_CT_STAT_DELETED,     /* datapath: entries deleted (a refused flow's first half) */
	LL_CT_STAT_AGED,        /* daemon: entries removed by ageing */
	LL_CT_STAT_REMOVED,     /* daemon: entries removed on request or with their rule */
	LL_CT_STAT_ORPHANS,     /* daemon: entries removed because the LRU evicted their partner */
	LL_CT_STAT_MAX,
};

struct ll_counters {
	__u64 packets;
	__u64 bytes;
};

/* ll_ct.svc_id of a flow that is not load balanced: the firewall let it in
 * untranslated. Such flows carry the firewall's mark in ll_ct.ep_idx. */
#define LL_SVC_NONE 0xffffffffu

/* Firewall (bpf/lib/fw.h). Rules are numbered by position, highest
 * preference first; a rule set is a bitmap over positions, cut into blocks
 * of LL_FW_BLOCK_WORDS words, stored only where non-zero. */
#define LL_FW_MAX_RULES 16384
#define LL_FW_BLOCK_WORDS 8
#define LL_FW_BLOCK_BITS (LL_FW_BLOCK_WORDS * 64)
#define LL_FW_BLOCKS (LL_FW_MAX_RULES / LL_FW_BLOCK_BITS) /* one bit each in ll_fw_set.blocks */
/* The port "value" of a packet without ports (neither TCP nor UDP). */
#define LL_FW_NO_PORT 65536
#define LL_FW_PORTS (65536 + 1)
/* Fields looked up per packet, each yielding a rule set. */
#define LL_FW_FIELDS 6

enum ll_fw_action {
	LL_FW_ALLOW = 0,
	LL_FW_DROP = 1,
	LL_FW_TRAP = 2,     /* to Linux unchanged */
	LL_FW_REDIRECT = 3, /* bpf_redirect to ll_fw_rule.ifindex, unchanged */
	LL_FW_SNAT = 4,     /* translate the source to snat_addr (snat_port first) */
	LL_FW_MASQUERADE = 5, /* translate the source to the egress interface's address */
};

#define LL_FW_RECORD 0x1 /* emit an ll_fw_event per matched packet */

/* The rule at one position of a generation (ll_fw_rules). */
struct ll_fw_rule {
	__u32 id;           /* the daemon's rule id: key of ll_fw_stats, in events */
	enum ll_fw_action action;
	__u32 flags;        /* LL_FW_RECORD */
	__u32 mark;         /* TC: skb->mark for the flow's packets; 0 = leave it */
	__u32 ifindex;      /* LL_FW_REDIRECT: where to */
	__u8 snat_addr[16]; /* LL_FW_SNAT, of the flow's family (IPv4: the first 4 bytes) */
	__be16 snat_port;   /* LL_FW_SNAT: tried first; 0: the flow's own */
	__u16 pad;
};

/* A set of rules: the id of its bitmap and which of its blocks are
 * non-zero (bit b: block b is in ll_fw_blocks). */
struct ll_fw_set {
	__u32 id;
	__u32 blocks;
};

struct ll_fw_block_key {
	__u32 set;
	__u32 block;
};

struct ll_fw_block {
	__u64 w[LL_FW_BLOCK_WORDS];
};

/* One generation of the rule set. The daemon fills the inactive one, then
 * flips ll_fw_cur: the datapath never sees half a rule set. */
struct ll_fw_gen {
	__u32 active;       /* rules exist or the default is drop: judge new flows */
	__u32 default_drop;
	__u32 n_rules;
	__u32 pad;
	struct ll_fw_set any_iface; /* rules without an interface */
};

/* Source (field 0) or destination (field 1) prefix of one generation and
 * family; prefixlen counts the 32 bits of gen/field/family/pad too. */
struct ll_fw_lpm_key {
	__u32 prefixlen;
	__u8 gen;
	__u8 field;
	__u8 family;        /* 4 or 6 */
	__u8 pad;
	__u8 addr[16];
};

struct ll_fw_iface_key {
	__u32 gen;
	__u32 ifindex;
};

/* What a rule with LL_FW_RECORD reports per matched packet (ll_fw_events). */
struct ll_fw_event {
	__u32 rule_id;
	__u32 ifindex;      /* ingress */
	enum ll_fw_action action;
	__u32 family;       /* 4 or 6 */
	__u8 saddr[16];     /* IPv4 in the first 4 bytes */
	__u8 daddr[16];
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 pad[3];
};

#endif
