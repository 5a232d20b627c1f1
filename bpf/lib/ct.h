/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/* Connection tracking. A flow is two entries of the ll_conntrack LRU hash,
 * one per direction, each carrying its own translation. The datapath creates
 * flows and moves them through their states; the daemon ages them out
 * (src/conntrack), since timeouts are policy and a per-packet clock check
 * would cost every packet. */
#ifndef LL_CT_H
#define LL_CT_H

#include "nat.h"

/* ll_ct_create: another CPU created the flow first. */
#define LL_CT_RACED (-3)

/* The translation of one packet: its tuple after translation (fields not
 * rewritten hold the packet's) and which sides change. */
struct ll_nat {
	struct ll_tuple to;
	enum ll_xlate xlate;
};

#define LL_READ_ONCE(x) (*(volatile typeof(x) *)&(x))

#define LL_CT_SEEN_FINS (LL_CT_SEEN_FIN_ORIG | LL_CT_SEEN_FIN_REPLY)
#define LL_CT_SEEN_FINS_ACKED (LL_CT_SEEN_FIN_ORIG_ACKED | LL_CT_SEEN_FIN_REPLY_ACKED)

static __always_inline void ll_ct_stat_in(void *stats, __u32 stat)
{
	__u64 *c = bpf_map_lookup_elem(stats, &stat);

	if (c)
		*c += 1;
}

static __always_inline void ll_ct_stat(__u32 stat)
{
	ll_ct_stat_in(&ll_ct_stats, stat);
}

static __always_inline int ll_ct_key_eq(const struct ll_ct_key *a, const struct ll_ct_key *b)
{
	return a->saddr == b->saddr && a->daddr == b->daddr && a->sport == b->sport &&
	       a->dport == b->dport && a->proto == b->proto;
}

/* The key of the other direction of the flow that entry ct belongs to: its
 * translated tuple turned around. */
static __always_inline void ll_ct_partner(__u8 proto, const struct ll_ct *ct,
					  struct ll_ct_key *out)
{
	out->proto = proto;
	out->saddr = ct->nat.daddr;
	out->daddr = ct->nat.saddr;
	out->sport = ct->nat.dport;
	out->dport = ct->nat.sport;
}

static __always_inline enum ll_ct_state ll_ct_state_of(__u8 proto, __u32 seen)
{
	if (proto != IPPROTO_TCP)
		return seen & LL_CT_SEEN_REPLY ? LL_CT_REPLIED : LL_CT_UNREPLIED;
	if (seen & LL_CT_SEEN_RST)
		return LL_CT_CLOSE;
	if ((seen & LL_CT_SEEN_FINS) == LL_CT_SEEN_FINS)
		return (seen & LL_CT_SEEN_FINS_ACKED) == LL_CT_SEEN_FINS_ACKED ? LL_CT_TIME_WAIT
										 : LL_CT_LAST_ACK;
	/* With one FIN sent, an acked bit can only be that FIN's. */
	if (seen & LL_CT_SEEN_FINS)
		return seen & LL_CT_SEEN_FINS_ACKED ? LL_CT_CLOSE_WAIT : LL_CT_FIN_WAIT;
	if (seen & LL_CT_SEEN_EST)
		return LL_CT_ESTABLISHED;
	if (seen & LL_CT_SEEN_SYNACK)
		return LL_CT_SYN_RECV;
	return LL_CT_SYN_SENT;
}

/* What the first packet of a flow has seen. A TCP flow that does not start
 * with a SYN is picked up mid-stream as established (as Linux does with
 * nf_conntrack_tcp_loose): its endpoint answers or resets it. */
static __always_inline __u32 ll_ct_first_events(const struct ll_pkt *p)
{
	__u8 f = p->tcp_flags;
	__u32 ev;

	if (p->proto != IPPROTO_TCP)
		return 0;
	if (f & LL_TCP_RST)
		return LL_CT_SEEN_RST;
	ev = (f & (LL_TCP_SYN | LL_TCP_ACK)) == LL_TCP_SYN ? LL_CT_SEEN_SYN : LL_CT_SEEN_EST;
	if (f & LL_TCP_FIN)
		ev |= LL_CT_SEEN_FIN_ORIG;
	return ev;
}

/* What packet p of an existing flow adds, seen from its entry ct. */
static __always_inline __u32 ll_ct_events(const struct ll_pkt *p, const struct ll_ct *ct)
{
	int orig = ct->dir == LL_CT_ORIGINAL;
	__u32 seen = ct->seen, ev = 0;
	__u8 f = p->tcp_flags;

	if (p->proto != IPPROTO_TCP)
		return orig ? 0 : LL_CT_SEEN_REPLY;
	if (f & LL_TCP_RST)
		return LL_CT_SEEN_RST;
	if (orig) {
		/* The client's first ACK after the SYN-ACK completes the handshake;
		 * a DSR flow never sees the SYN-ACK, so its first ACK does. */
		if (!(f & LL_TCP_SYN) &&
		    ((seen & (LL_CT_SEEN_SYNACK | LL_CT_SEEN_SYN)) != LL_CT_SEEN_SYN ||
		     (ct->xlate & LL_XLATE_DSR)))
			ev |= LL_CT_SEEN_EST;
		if (f & LL_TCP_FIN)
			ev |= LL_CT_SEEN_FIN_ORIG;
		/* An ack at or past the endpoint's FIN acks it (serial arithmetic). */
		if ((f & LL_TCP_ACK) && (seen & LL_CT_SEEN_FIN_REPLY) &&
		    (__s32)(p->tcp_ack - ct->fin_ack) >= 0)
			ev |= LL_CT_SEEN_FIN_REPLY_ACKED;
	} else {
		if ((f & (LL_TCP_SYN | LL_TCP_ACK)) == (LL_TCP_SYN | LL_TCP_ACK))
			ev |= LL_CT_SEEN_SYNACK;
		if (f & LL_TCP_FIN)
			ev |= LL_CT_SEEN_FIN_REPLY;
		if ((f & LL_TCP_ACK) && (seen & LL_CT_SEEN_FIN_ORIG) &&
		    (__s32)(p->tcp_ack - ct->fin_ack) >= 0)
			ev |= LL_CT_SEEN_FIN_ORIG_ACKED;
	}
	return ev;
}

/* A SYN from the client on a closed flow: the client reuses its port for a
 * new connection. The flow starts over with the same endpoint, whose own
 * TIME_WAIT accepts such a SYN. */
static __always_inline int ll_ct_reopens(const struct ll_pkt *p, const struct ll_ct *ct)
{
	return p->proto == IPPROTO_TCP && ct->dir == LL_CT_ORIGINAL &&
	       (p->tcp_flags & (LL_TCP_SYN | LL_TCP_ACK | LL_TCP_RST)) == LL_TCP_SYN &&
	       (ct->state == LL_CT_TIME_WAIT || ct->state == LL_CT_CLOSE);
}

static __always_inline void ll_ct_restart(struct ll_ct *ct)
{
	ct->seen = LL_CT_SEEN_SYN;
	ct->fin_ack = 0;
	ct->state = LL_CT_SYN_SENT;
}

/* Adds events to an entry and brings its state in line with them. */
static __always_inline void ll_ct_settle(struct ll_ct *ct, __u8 proto, __u32 ev)
{
	__u32 seen = __sync_fetch_and_or(&ct->seen, ev) | ev;
	__u32 now;

	ct->state = ll_ct_state_of(proto, seen);
	/* Another CPU may have added events and written its state before we
	 * wrote ours: whoever sees the bits move writes the state again. */
	now = LL_READ_ONCE(ct->seen);
	if (now != seen)
		ct->state = ll_ct_state_of(proto, now);
}

/* Accounts packet p to its entry ct. Returns whether the flow's state moves
 * on (then ll_ct_advance, with the partner entry), with the events in *ev. */
static __always_inline int ll_ct_count(const struct ll_pkt *p, struct ll_ct *ct, __u32 *ev)
{
	__sync_fetch_and_add(&ct->packets, 1);
	__sync_fetch_and_add(&ct->bytes, p->len);
	ct->last_seen_ns = bpf_ktime_get_ns();
	*ev = ll_ct_events(p, ct);
	return ll_ct_reopens(p, ct) || (ct->seen & *ev) != *ev;
}

/* Moves the flow's state on in both of its entries (partner may be gone). */
static __always_inline void ll_ct_advance(const struct ll_pkt *p, struct ll_ct *ct,
					  struct ll_ct *partner, __u32 ev)
{
	if (ll_ct_reopens(p, ct)) {
		ll_ct_restart(ct);
		if (partner)
			ll_ct_restart(partner);
		return;
	}
	/* Tell the other direction which ack acknowledges this FIN, before it
	 * can see the FIN bit. */
	if (partner && (ev & LL_CT_SEEN_FINS))
		partner->fin_ack = p->tcp_end;
	ll_ct_settle(ct, p->proto, ev);
	if (partner)
		ll_ct_settle(partner, p->proto, ev);
}

/* Accounts packet p to entry (k, ct) and moves the flow's state on, in both
 * of its entries. The partner is looked up only when something changes. */
static __always_inline void ll_ct_touch(const struct ll_pkt *p, const struct ll_ct_key *k,
					struct ll_ct *ct)
{
	struct ll_ct_key pk = {};
	__u32 ev;

	if (!ll_ct_count(p, ct, &ev))
		return;
	ll_ct_partner(k->proto, ct, &pk);
	/* A DSR flow has no other direction. */
	ll_ct_advance(p, ct,
		      ct->xlate & LL_XLATE_DSR ? NULL : bpf_map_lookup_elem(&ll_conntrack, &pk),
		      ev);
}

static __always_inline void ll_ct_undo(const struct ll_ct_key *k)
{
	if (!bpf_map_delete_elem(&ll_conntrack, k))
		ll_ct_stat(LL_CT_STAT_DELETED);
}

/* The flow-wide fields of a new flow's entries, from its first packet p,
 * built in the per-CPU scratch (the pipeline's frame is near the limit);
 * ll_ct_set_dir fills in each direction. */
static __always_inline struct ll_ct *ll_ct_build(const struct ll_pkt *p, __u32 svc_id,
						 __u32 ep_idx)
{
	__u32 zero = 0;
	struct ll_ct *ct = bpf_map_lookup_elem(&ll_ct_scratch, &zero);

	if (!ct)
		return 0;
	ct->seen = ll_ct_first_events(p);
	ct->state = ll_ct_state_of(p->proto, ct->seen);
	ct->fin_ack = 0;
	ct->svc_id = svc_id;
	ct->ep_idx = ep_idx;
	ct->last_seen_ns = bpf_ktime_get_ns();
	return ct;
}

/* Makes ct the entry of one direction of a flow whose first packet is p:
 * translated to *to, as xlate says. */
static __always_inline void ll_ct_set_dir(struct ll_ct *ct, const struct ll_pkt *p,
					  const struct ll_tuple *to, __u8 xlate,
					  enum ll_ct_dir dir)
{
	ct->nat = *to;
	ct->xlate = xlate;
	ct->dir = dir;
	ct->packets = dir == LL_CT_ORIGINAL;
	ct->bytes = dir == LL_CT_ORIGINAL ? p->len : 0;
}

/* Creates the entries of a new flow from its first packet p (with key),
 * translated by nat, to endpoint ep_idx of service svc_id: both directions,
 * or the client's only for DSR. A source-translated flow gets its source
 * port here (nat->to.sport). Returns 0, LL_CT_RACED when another CPU created
 * the flow first, or the reason not to translate p. */
static __always_inline int ll_ct_create(const struct ll_pkt *p, const struct ll_ct_key *key,
					struct ll_nat *nat, __u32 svc_id, __u32 ep_idx)
{
	/* The reply direction rewrites on the destination what the original
	 * rewrites on the source, and vice versa, back to the key turned around. */
	__u8 rxlate = (nat->xlate & LL_XLATE_SRC ? LL_XLATE_DST : 0) |
		      (nat->xlate & LL_XLATE_DST ? LL_XLATE_SRC : 0);
	struct ll_tuple back = {
		.saddr = key->daddr,
		.daddr = key->saddr,
		.sport = key->dport,
		.dport = key->sport,
	};
	struct ll_ct_key rkey = {}, other = {};
	struct ll_ct *ct, *hit;
	long err;

	ct = ll_ct_build(p, svc_id, ep_idx);
	if (!ct)
		return LL_R_PASS_CT_FULL;
	if (nat->xlate & LL_XLATE_SRC) {
		/* The reply entry first: claiming it claims the source port. */
		ll_ct_set_dir(ct, p, &back, rxlate, LL_CT_REPLY);
		rkey.proto = key->proto;
		rkey.saddr = nat->to.daddr;
		rkey.daddr = nat->to.saddr;
		rkey.sport = nat->to.dport;
		rkey.dport = nat->to.sport;
		err = ll_nat_claim_port(&rkey, ct);
		if (err)
			return err;
		ll_ct_stat(LL_CT_STAT_CREATED);
		nat->to.sport = rkey.dport;
		ll_ct_set_dir(ct, p, &nat->to, nat->xlate, LL_CT_ORIGINAL);
		err = bpf_map_update_elem(&ll_conntrack, key, ct, BPF_NOEXIST);
		if (!err) {
			ll_ct_stat(LL_CT_STAT_CREATED);
			return 0;
		}
		/* The port is ours alone: nobody else uses that reply entry. */
		ll_ct_undo(&rkey);
		return err == -LL_EEXIST ? LL_CT_RACED : LL_R_PASS_CT_FULL;
	}

	ll_ct_set_dir(ct, p, &nat->to, nat->xlate, LL_CT_ORIGINAL);
	err = bpf_map_update_elem(&ll_conntrack, key, ct, BPF_NOEXIST);
	if (err)
		return err == -LL_EEXIST ? LL_CT_RACED : LL_R_PASS_CT_FULL;
	ll_ct_stat(LL_CT_STAT_CREATED);
	if (nat->xlate & LL_XLATE_DSR)
		return 0;

	ll_ct_partner(key->proto, ct, &rkey);
	ll_ct_set_dir(ct, p, &back, rxlate, LL_CT_REPLY);
	err = bpf_map_update_elem(&ll_conntrack, &rkey, ct, BPF_NOEXIST);
	if (!err) {
		ll_ct_stat(LL_CT_STAT_CREATED);
		return 0;
	}
	if (err == -LL_EEXIST) {
		/* The endpoint's reply tuple is taken: by a live flow of another
		 * service (same client address and port towards the same
		 * endpoint), whose replies we could not tell apart, or by a stale
		 * half of a flow whose other half the LRU evicted, which we
		 * replace (no new entry). */
		hit = bpf_map_lookup_elem(&ll_conntrack, &rkey);
		if (hit) {
			ll_ct_partner(rkey.proto, hit, &other);
			if (!ll_ct_key_eq(&other, key) && bpf_map_lookup_elem(&ll_conntrack, &other)) {
				ll_ct_undo(key);
				return LL_R_PASS_CT_CLASH;
			}
		}
		if (!bpf_map_update_elem(&ll_conntrack, &rkey, ct, BPF_EXIST))
			return 0;
	}
	ll_ct_undo(key);
	return LL_R_PASS_CT_FULL;
}

/* IPv6 flows (ll_conntrack6): untranslated, let in by the firewall. */
static __always_inline void ll_ct6_key_of(const struct ll_pkt *p, struct ll_ct6_key *k)
{
	__builtin_memcpy(k->saddr, p->saddr6, 16);
	__builtin_memcpy(k->daddr, p->daddr6, 16);
	k->sport = p->sport;
	k->dport = p->dport;
	k->proto = p->proto;
}

static __always_inline void ll_ct6_reverse(const struct ll_ct6_key *k, struct ll_ct6_key *out)
{
	__builtin_memcpy(out->saddr, k->daddr, 16);
	__builtin_memcpy(out->daddr, k->saddr, 16);
	out->sport = k->dport;
	out->dport = k->sport;
	out->proto = k->proto;
}

static __always_inline void ll_ct6_touch(const struct ll_pkt *p, const struct ll_ct6_key *k,
					 struct ll_ct *ct)
{
	struct ll_ct6_key pk = {};
	__u32 ev;

	if (!ll_ct_count(p, ct, &ev))
		return;
	ll_ct6_reverse(k, &pk);
	ll_ct_advance(p, ct, bpf_map_lookup_elem(&ll_conntrack6, &pk), ev);
}

/* Creates both entries of a new IPv6 flow from its first packet p, carrying
 * mark. Returns 0, LL_CT_RACED, or the reason to hand p to Linux. */
static __always_inline int ll_ct6_create(const struct ll_pkt *p, const struct ll_ct6_key *key,
					 __u32 mark)
{
	struct ll_ct6_key rkey = {};
	struct ll_tuple none = {};
	struct ll_ct *ct = ll_ct_build(p, LL_SVC_NONE, mark);
	long err;

	if (!ct)
		return LL_R_PASS_CT_FULL;
	ll_ct_set_dir(ct, p, &none, LL_XLATE_NONE, LL_CT_ORIGINAL);
	err = bpf_map_update_elem(&ll_conntrack6, key, ct, BPF_NOEXIST);
	if (err)
		return err == -LL_EEXIST ? LL_CT_RACED : LL_R_PASS_CT_FULL;
	ll_ct_stat_in(&ll_ct6_stats, LL_CT_STAT_CREATED);
	ll_ct6_reverse(key, &rkey);
	ll_ct_set_dir(ct, p, &none, LL_XLATE_NONE, LL_CT_REPLY);
	/* A reply entry already there is a stale half: its partner would be
	 * key, which did not exist. */
	err = bpf_map_update_elem(&ll_conntrack6, &rkey, ct, BPF_NOEXIST);
	if (!err) {
		ll_ct_stat_in(&ll_ct6_stats, LL_CT_STAT_CREATED);
		return 0;
	}
	if (err == -LL_EEXIST && !bpf_map_update_elem(&ll_conntrack6, &rkey, ct, BPF_EXIST))
		return 0;
	if (!bpf_map_delete_elem(&ll_conntrack6, key))
		ll_ct_stat_in(&ll_ct6_stats, LL_CT_STAT_DELETED);
	return LL_R_PASS_CT_FULL;
}

#endif
