/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/* The firewall's classifier, run on the first packet of a flow only: the
 * verdict then lives in conntrack (lb.h).
 *
 * Each field of the packet (source and destination address, source and
 * destination port, protocol, input interface) is looked up once, in a map
 * the daemon built from the rule set (src/datapath/firewall.rs): the source
 * and destination in LPM tries, whose entry for a prefix holds every rule
 * whose own prefix contains it; ports in arrays of 65,536 equivalence
 * classes; the protocol in an array; the interface in a hash. Each lookup
 * yields a rule set, a bitmap over the rules ordered by preference (bit 0
 * is the highest). The rules matching the packet are the AND of the six
 * sets, and the winner its lowest set bit. Each bitmap is cut into blocks
 * of 512 rules stored only where non-zero, with a 32-bit summary of which
 * blocks those are: the AND of the summaries names the only blocks worth
 * reading, usually one. So the cost is six lookups plus a few block reads,
 * whatever the number of rules. */
#ifndef LL_FW_H
#define LL_FW_H

#include "parse.h"
#include "stats.h"

/* ll_fw_first: no rule set is active, or the flow may go on (with its
 * source translated). */
#define LL_FW_OFF (-4)
#define LL_FW_ALLOWED (-5)
#define LL_FW_TRANSLATE (-7)

/* Index of the lowest set bit of x != 0 (BPF has no ctz instruction). */
static __always_inline __u32 ll_ctz64(__u64 x)
{
	__u32 n = 0;

	if (!(x & 0xffffffffULL)) {
		n += 32;
		x >>= 32;
	}
	if (!(x & 0xffff)) {
		n += 16;
		x >>= 16;
	}
	if (!(x & 0xff)) {
		n += 8;
		x >>= 8;
	}
	if (!(x & 0xf)) {
		n += 4;
		x >>= 4;
	}
	if (!(x & 0x3)) {
		n += 2;
		x >>= 2;
	}
	return n + !(x & 1);
}

static __always_inline int ll_fw_addr(__u32 gen, __u32 field, const struct ll_pkt *p,
				      struct ll_fw_scratch *s)
{
	struct ll_fw_lpm_key *k = &s->lpm;
	struct ll_fw_set *hit;

	__builtin_memset(k, 0, sizeof(*k));
	k->gen = gen;
	k->field = field;
	if (p->family == LL_AF_INET) {
		k->prefixlen = 32 + 32;
		k->family = 4;
		__builtin_memcpy(k->addr, field ? &p->daddr : &p->saddr, 4);
	} else {
		k->prefixlen = 32 + 128;
		k->family = 6;
		__builtin_memcpy(k->addr, field ? p->daddr6 : p->saddr6, 16);
	}
	/* The daemon always writes the /0 entry; without it nothing matches. */
	hit = bpf_map_lookup_elem(&ll_fw_lpm, k);
	if (!hit)
		return -1;
	s->f[field] = *hit;
	return 0;
}

static __always_inline int ll_fw_array(void *map, __u32 idx, struct ll_fw_set *out)
{
	struct ll_fw_set *s = bpf_map_lookup_elem(map, &idx);

	if (!s)
		return -1;
	*out = *s;
	return 0;
}

struct ll_fw_walk {
	__u32 blocks; /* the blocks non-zero in every field's set */
	int pos;      /* the winner, -1 until found */
};

/* bpf_loop callback over blocks b: ANDs block b of the six sets; stops at
 * the first block with a common rule, or when no candidate block is left. */
static long ll_fw_block(__u32 b, void *ctx)
{
	struct ll_fw_walk *walk = ctx;
	struct ll_fw_scratch *s;
	struct ll_fw_block *blk;
	__u32 zero = 0;

	if (b >= LL_FW_BLOCKS || !(walk->blocks >> b))
		return 1;
	if (!(walk->blocks & (1u << b)))
		return 0;
	s = bpf_map_lookup_elem(&ll_fw_scratch, &zero);
	if (!s)
		return 1;
	s->blk.block = b;
	s->blk.set = s->f[0].id;
	blk = bpf_map_lookup_elem(&ll_fw_blocks, &s->blk);
	if (!blk)
		return 0;
	s->acc = *blk;
	for (int i = 1; i < LL_FW_FIELDS; i++) {
		__u64 left = 0;

		s->blk.set = s->f[i].id;
		blk = bpf_map_lookup_elem(&ll_fw_blocks, &s->blk);
		if (!blk)
			return 0;
		for (int w = 0; w < LL_FW_BLOCK_WORDS; w++) {
			s->acc.w[w] &= blk->w[w];
			left |= s->acc.w[w];
		}
		/* No rule of this block left: the other fields need not be read. */
		if (!left)
			return 0;
	}
	for (int w = 0; w < LL_FW_BLOCK_WORDS; w++) {
		if (s->acc.w[w]) {
			walk->pos = b * LL_FW_BLOCK_BITS + w * 64 + ll_ctz64(s->acc.w[w]);
			return 1;
		}
	}
	return 0;
}

/* The position of the highest-preference rule of generation gen matching p
 * arriving on ingress, or -1. */
static __noinline int ll_fw_classify(const struct ll_pkt *p, __u32 ingress, __u32 gen,
				     const struct ll_fw_gen *cfg)
{
	struct ll_fw_walk walk = {.blocks = ~0u, .pos = -1};
	__u32 zero = 0, sport, dport;
	struct ll_fw_scratch *s;
	struct ll_fw_set *ifs;

	s = bpf_map_lookup_elem(&ll_fw_scratch, &zero);
	if (!s)
		return -1;
	sport = p->has_ports ? bpf_ntohs(p->sport) : LL_FW_NO_PORT;
	dport = p->has_ports ? bpf_ntohs(p->dport) : LL_FW_NO_PORT;
	if (ll_fw_addr(gen, 0, p, s) || ll_fw_addr(gen, 1, p, s) ||
	    ll_fw_array(&ll_fw_ports, (gen * 2) * LL_FW_PORTS + sport, &s->f[2]) ||
	    ll_fw_array(&ll_fw_ports, (gen * 2 + 1) * LL_FW_PORTS + dport, &s->f[3]) ||
	    ll_fw_array(&ll_fw_protos, gen * 256 + p->proto, &s->f[4]))
		return -1;
	s->iface.gen = gen;
	s->iface.ifindex = ingress;
	ifs = bpf_map_lookup_elem(&ll_fw_ifaces, &s->iface);
	s->f[5] = ifs ? *ifs : cfg->any_iface;
	for (int i = 0; i < LL_FW_FIELDS; i++)
		walk.blocks &= s->f[i].blocks;
	if (walk.blocks)
		bpf_loop(LL_FW_BLOCKS, ll_fw_block, &walk, 0);
	return walk.pos;
}

static __always_inline void ll_fw_record(const struct ll_pkt *p, __u32 ingress,
					 const struct ll_fw_rule *rule)
{
	struct ll_fw_event *e = bpf_ringbuf_reserve(&ll_fw_events, sizeof(*e), 0);

	/* A full ring drops the event; the counters still count the packet. */
	if (!e)
		return;
	e->rule_id = rule->id;
	e->ifindex = ingress;
	e->action = rule->action;
	e->proto = p->proto;
	e->sport = p->sport;
	e->dport = p->dport;
	__builtin_memset(e->pad, 0, sizeof(e->pad));
	if (p->family == LL_AF_INET) {
		e->family = 4;
		__builtin_memset(e->saddr, 0, 16);
		__builtin_memset(e->daddr, 0, 16);
		__builtin_memcpy(e->saddr, &p->saddr, 4);
		__builtin_memcpy(e->daddr, &p->daddr, 4);
	} else {
		e->family = 6;
		__builtin_memcpy(e->saddr, p->saddr6, 16);
		__builtin_memcpy(e->daddr, p->daddr6, 16);
	}
	bpf_ringbuf_submit(e, 0);
}

/* The firewall's verdict on the first packet of a flow: LL_FW_OFF,
 * LL_FW_ALLOWED (*mark set), LL_FW_TRANSLATE (*mark set, *snat the source
 * to translate to: address 0 for the egress interface's, port the one to
 * try first; an IPv6 address goes to ll_nat6's saddr instead),
 * LL_R_FW_REDIRECT (*ifindex set), or the reason to drop it or hand it to
 * Linux. */
static __always_inline int ll_fw_first(const struct ll_pkt *p, __u32 ingress, __u32 *mark,
				       __u32 *ifindex, struct ll_tuple *snat)
{
	__u32 zero = 0, gen, idx;
	struct ll_fw_rule *rule;
	struct ll_addrs6 *to6;
	struct ll_fw_gen *cfg;
	__u32 *cur;
	int pos;

	cur = bpf_map_lookup_elem(&ll_fw_cur, &zero);
	if (!cur)
		return LL_FW_OFF;
	gen = *cur & 1;
	cfg = bpf_map_lookup_elem(&ll_fw_gens, &gen);
	if (!cfg || !cfg->active)
		return LL_FW_OFF;
	pos = ll_fw_classify(p, ingress, gen, cfg);
	if (pos < 0 || pos >= LL_FW_MAX_RULES)
		return cfg->default_drop ? LL_R_DROP_FW_DEFAULT : LL_FW_ALLOWED;
	idx = gen * LL_FW_MAX_RULES + pos;
	rule = bpf_map_lookup_elem(&ll_fw_rules, &idx);
	if (!rule)
		return cfg->default_drop ? LL_R_DROP_FW_DEFAULT : LL_FW_ALLOWED;
	ll_count(&ll_fw_stats, rule->id, p->len);
	if (rule->flags & LL_FW_RECORD)
		ll_fw_record(p, ingress, rule);
	*mark = rule->mark;
	switch (rule->action) {
	case LL_FW_ALLOW:
		return LL_FW_ALLOWED;
	case LL_FW_TRAP:
		return LL_R_PASS_FW_TRAP;
	case LL_FW_REDIRECT:
		*ifindex = rule->ifindex;
		return LL_R_FW_REDIRECT;
	case LL_FW_SNAT:
	case LL_FW_MASQUERADE:
		/* Flows without ports would share one translated tuple. */
		if (!p->has_ports)
			return LL_R_PASS_NO_SNAT;
		snat->sport = rule->snat_port ? rule->snat_port : p->sport;
		if (p->family == LL_AF_INET) {
			snat->saddr = rule->action == LL_FW_SNAT ? *(__be32 *)rule->snat_addr : 0;
			return LL_FW_TRANSLATE;
		}
		to6 = bpf_map_lookup_elem(&ll_nat6, &zero);
		if (!to6)
			return LL_R_PASS_CT_FULL;
		if (rule->action == LL_FW_SNAT)
			__builtin_memcpy(to6->saddr, rule->snat_addr, 16);
		else
			__builtin_memset(to6->saddr, 0, 16);
		return LL_FW_TRANSLATE;
	default:
		return LL_R_DROP_FW;
	}
}

#endif
