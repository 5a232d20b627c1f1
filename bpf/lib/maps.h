/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/* Every map of the datapath, in one place. */
#ifndef LL_MAPS_H
#define LL_MAPS_H

#include "common.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, LL_DEFAULT_SERVICES);
	__type(key, struct ll_svc_key);
	__type(value, struct ll_svc);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} ll_services SEC(".maps");

/* (VIP, protocol) -> the port ranges of its services. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, LL_DEFAULT_SERVICES);
	__type(key, struct ll_range_key);
	__type(value, struct ll_ranges);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} ll_svc_ranges SEC(".maps");

/* The VIPs that have ranges, as bits (struct ll_range_vips): packets to
 * other addresses skip the ranges' hash lookup (an array lookup is inlined
 * by the verifier, a hash lookup is a helper call). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ll_range_vips);
} ll_range_vips SEC(".maps");

/* IPv6 services; their ids share the id space and per-id maps. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, LL_DEFAULT_SERVICES);
	__type(key, struct ll_svc6_key);
	__type(value, struct ll_svc6);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} ll_services6 SEC(".maps");

/* Round-robin cursor per service id. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, LL_DEFAULT_SERVICES);
	__type(key, __u32);
	__type(value, __u32);
} ll_rr_cursor SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, LL_DEFAULT_CT);
	__type(key, struct ll_ct_key);
	__type(value, struct ll_ct);
} ll_conntrack SEC(".maps");

/* IPv6 flows (load balanced, or let in by the firewall), apart so that the
 * IPv4 table's entries stay small; the daemon sizes it to a quarter of
 * ll_conntrack. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, LL_DEFAULT_CT / 4);
	__type(key, struct ll_ct6_key);
	__type(value, struct ll_ct6);
} ll_conntrack6 SEC(".maps");

/* The two tables: IPv4 flows in ll_conntrack (struct ll_ct_key -> struct
 * ll_ct), IPv6 flows in ll_conntrack6 (struct ll_ct6_key -> struct ll_ct6,
 * whose first member is the ll_ct the state machine works on). Functions
 * over both take the family as a constant v6 (inlined, or a static
 * subprogram verified per call), and keys as void *: each family keeps
 * only its own code. */
#define LL_CT_MAP(v6) ((v6) ? (void *)&ll_conntrack6 : (void *)&ll_conntrack)

/* Per enum ll_ct_stat, for ll_conntrack6. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, LL_CT_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} ll_ct6_stats SEC(".maps");

/* Per-CPU scratch for building a new IPv6 flow's entries. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ll_ct6);
} ll_ct6_scratch SEC(".maps");

/* Per-CPU scratch for IPv6 conntrack keys (too big for the pipeline's
 * stack): the packet's, those ct.h derives from entries, and the flow an
 * ICMPv6 error is about (parse.h). */
struct ll_ct6_keys {
	struct ll_ct6_key key;
	struct ll_ct6_key partner;
	struct ll_ct6_key other;
	struct ll_ct6_key icmp;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ll_ct6_keys);
} ll_ct6_keys SEC(".maps");

/* The translated addresses of the IPv6 packet being handled, from the
 * decision to the rewrite (per CPU: kept off the entry program's stack). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ll_addrs6);
} ll_nat6 SEC(".maps");

/* The source port range of translated flows (struct ll_nat_ports). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ll_nat_ports);
} ll_nat_ports SEC(".maps");

/* Per-CPU scratch for building a new flow's entries off the stack. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ll_ct);
} ll_ct_scratch SEC(".maps");

/* Per enum ll_ct_stat. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, LL_CT_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} ll_ct_stats SEC(".maps");

/* Maglev table per service id (LL_SEL_MAGLEV). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, LL_DEFAULT_SERVICES);
	__type(key, __u32);
	__type(value, struct ll_maglev);
} ll_maglev SEC(".maps");

/* Per service id: mark and flags. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, LL_DEFAULT_SERVICES);
	__type(key, __u32);
	__type(value, struct ll_svc_opts);
} ll_svc_opts SEC(".maps");

/* Allowed client prefixes of services with LL_SVC_F_SOURCES. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, LL_MAX_SOURCES);
	__type(key, struct ll_src_key);
	__type(value, __u8);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} ll_svc_sources SEC(".maps");

/* Client -> endpoint stickiness (LL_SEL_PERSIST). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct ll_persist_key);
	__type(value, struct ll_persist);
} ll_persist SEC(".maps");

/* Per-CPU scratch for building a persist entry off the stack (the
 * pipeline's stack is near the 512-byte limit). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ll_persist);
} ll_persist_scratch SEC(".maps");

/* Active flows per service id * LL_MAX_ENDPOINTS + endpoint index
 * (LL_SEL_LC): the datapath adds new flows, the daemon recounts. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, LL_DEFAULT_SERVICES * LL_MAX_ENDPOINTS);
	__type(key, __u32);
	__type(value, __u32);
} ll_ep_active SEC(".maps");

/* Per service id. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, LL_DEFAULT_SERVICES);
	__type(key, __u32);
	__type(value, struct ll_counters);
} ll_svc_stats SEC(".maps");

/* Per service id * LL_MAX_ENDPOINTS + endpoint index. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, LL_DEFAULT_SERVICES * LL_MAX_ENDPOINTS);
	__type(key, __u32);
	__type(value, struct ll_counters);
} ll_ep_stats SEC(".maps");

/* Per enum ll_reason. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, LL_R_MAX);
	__type(key, __u32);
	__type(value, struct ll_counters);
} ll_reasons SEC(".maps");

/* ifindex -> interface. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, struct ll_iface);
} ll_ifaces SEC(".maps");

/* The host's own addresses. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct ll_addr_key);
	__type(value, struct ll_local);
} ll_locals SEC(".maps");

/* The host's addresses by interface and family, to translate sources to
 * (struct ll_ifaddr_key). */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 4096);
	__type(key, struct ll_ifaddr_key);
	__type(value, struct ll_ip);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} ll_ifaddrs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, LL_DEFAULT_ROUTES);
	__type(key, struct ll_lpm4_key);
	__type(value, struct ll_route);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} ll_routes4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, LL_DEFAULT_ROUTES);
	__type(key, struct ll_lpm6_key);
	__type(value, struct ll_route);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} ll_routes6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, LL_DEFAULT_NEIGHS);
	__type(key, struct ll_neigh_key);
	__type(value, struct ll_neigh);
} ll_neighs SEC(".maps");

/* Next hops the datapath found unresolved, for the daemon to ask the kernel
 * to resolve (with forwarding off, Linux would never learn them). */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 64 * 1024);
} ll_neigh_miss SEC(".maps");

/* When each unresolved next hop was last reported, to rate-limit reports. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1024);
	__type(key, struct ll_neigh_key);
	__type(value, __u64);
} ll_miss_seen SEC(".maps");

/* The firewall's active generation (0 or 1), flipped by the daemon. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} ll_fw_cur SEC(".maps");

/* Per generation. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct ll_fw_gen);
} ll_fw_gens SEC(".maps");

/* gen * LL_FW_MAX_RULES + position -> rule. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2 * LL_FW_MAX_RULES);
	__type(key, __u32);
	__type(value, struct ll_fw_rule);
} ll_fw_rules SEC(".maps");

/* Source and destination prefixes -> the rules whose prefix contains them. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 8 * (LL_FW_MAX_RULES + 1));
	__type(key, struct ll_fw_lpm_key);
	__type(value, struct ll_fw_set);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} ll_fw_lpm SEC(".maps");

/* (gen * 2 + field) * LL_FW_PORTS + port -> the rules whose source (field
 * 0) or destination (1) port range holds the port. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 4 * LL_FW_PORTS);
	__type(key, __u32);
	__type(value, struct ll_fw_set);
} ll_fw_ports SEC(".maps");

/* gen * 256 + IP protocol -> rules. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2 * 256);
	__type(key, __u32);
	__type(value, struct ll_fw_set);
} ll_fw_protos SEC(".maps");

/* Input interfaces named by rules -> rules; any other interface takes the
 * generation's any_iface. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 2 * LL_FW_MAX_RULES);
	__type(key, struct ll_fw_iface_key);
	__type(value, struct ll_fw_set);
} ll_fw_ifaces SEC(".maps");

/* The non-zero blocks of every rule set's bitmap. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	__type(key, struct ll_fw_block_key);
	__type(value, struct ll_fw_block);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} ll_fw_blocks SEC(".maps");

/* Per-CPU scratch for classifying one packet: the sets of its fields, their
 * AND, and the lookup keys (off the stack, which the pipeline nearly fills). */
struct ll_fw_scratch {
	struct ll_fw_set f[LL_FW_FIELDS];
	struct ll_fw_block acc;
	struct ll_fw_lpm_key lpm;
	struct ll_fw_iface_key iface;
	struct ll_fw_block_key blk;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ll_fw_scratch);
} ll_fw_scratch SEC(".maps");

/* Rule id -> packets and bytes of the first packets it matched. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 2 * LL_FW_MAX_RULES);
	__type(key, __u32);
	__type(value, struct ll_counters);
} ll_fw_stats SEC(".maps");

/* Packets matched by rules with LL_FW_RECORD, for the daemon's log. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} ll_fw_events SEC(".maps");

/* Unused by the program: it puts enum ll_reason into BTF (array keys must be
 * plain integers), so the skeleton gives the daemon the reason names. */
const volatile enum ll_reason ll_reason_count = LL_R_MAX;
/* The same for enum ll_ct_stat. */
const volatile enum ll_ct_stat ll_ct_stat_count = LL_CT_STAT_MAX;
/* The same for the firewall's events, whose ring buffer has no value type. */
const volatile struct ll_fw_event ll_fw_event_layout;

#endif
