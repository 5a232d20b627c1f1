/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/* Connection tracking. A flow is two entries of the ll_conntrack (IPv4) or
 * ll_conntrack6 (IPv6) LRU hash, one per direction, each carrying its own translation. The datapath creates
 * flows and moves them through their states; the daemon ages them out
 * (src/conntrack), since timeouts are policy and a per-packet clock check
 * would cost every packet. */
#ifndef LL_CT_H
#define LL_CT_H

#include "nat.h"

/* ll_ct_create: another CPU created the flow first. */
#define LL_CT_RACED (-3)

/* The translation of one packet: its tuple after translation (fields not
 * rewritten hold the packet's, but see LL_XLATE_DSR) and which sides change. */
struct ll_nat {
	struct ll_tuple to;
	enum ll_xlate xlate;
	__u32 mark;         /* the service's skb->mark (TC), 0: none */
};

#define LL_READ_ONCE(x) (*(volatile typeof(x) *)&(x))

#define LL_CT_SEEN_FINS (LL_CT_SEEN_FIN_ORIG | LL_CT_SEEN_FIN_REPLY)
#define LL_CT_SEEN_FINS_ACKED (LL_CT_SEEN_FIN_ORIG_ACKED | LL_CT_SEEN_FIN_REPLY_ACKED)

static __always_inline void ll_ct_stat(int v6, __u32 stat)
{
	__u64 *c = bpf_map_lookup_elem(v6 ? (void *)&ll_ct6_stats : (void *)&ll_ct_stats, &stat);

	if (c)
		*c += 1;
}

/* Keys are zeroed before they are filled, so their padding compares too. */
static __always_inline int ll_ct_key_eq(int v6, const void *a, const void *b)
{
	const __u64 *x = a, *y = b;
	int n = v6 ? sizeof(struct ll_ct6_key) / 8 : sizeof(struct ll_ct_key) / 8;

	for (int i = 0; i < n; i++)
		if (x[i] != y[i])
			return 0;
	return 1;
}

/* The key of the other direction of the flow that entry ct belongs to: its
 * translated tuple turned around. */
static __always_inline void ll_ct_partner(int v6, __u8 proto, const struct ll_ct *ct, void *out)
{
	if (v6) {
		const struct ll_ct6 *c6 = (const struct ll_ct6 *)ct;
		struct ll_ct6_key *k = out;

		__builtin_memcpy(k->saddr, c6->nat6.daddr, 16);
		__builtin_memcpy(k->daddr, c6->nat6.saddr, 16);
		k->sport = ct->nat.dport;
		k->dport = ct->nat.sport;
		k->proto = proto;
		return;
	}
	struct ll_ct_key *k = out;

	k->proto = proto;
	k->saddr = ct->nat.daddr;
	k->daddr = ct->nat.saddr;
	k->sport = ct->nat.dport;
	k->dport = ct->nat.sport;
}

static __always_inline void ll_ct6_key_of(const struct ll_pkt *p, struct ll_ct6_key *k)
{
	__builtin_memcpy(k->saddr, p->saddr6, 16);
	__builtin_memcpy(k->daddr, p->daddr6, 16);
	k->sport = p->sport;
	k->dport = p->dport;
	k->proto = p->proto;
}

/* TCP, and SCTP whose chunks parse.h gives as TCP flags, go through the
 * connection states; the other protocols only tell whether a reply came. */
static __always_inline int ll_ct_stateful(__u8 proto)
{
	return proto == IPPROTO_TCP || proto == IPPROTO_SCTP;
}

static __always_inline enum ll_ct_state ll_ct_state_of(__u8 proto, __u32 seen)
{
	if (!ll_ct_stateful(proto))
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

	if (!ll_ct_stateful(p->proto))
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

	if (!ll_ct_stateful(p->proto))
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
	return ll_ct_stateful(p->proto) && ct->dir == LL_CT_ORIGINAL &&
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
static __always_inline void ll_ct_touch(int v6, const struct ll_pkt *p, const void *k,
					struct ll_ct *ct)
{
	struct ll_ct_key pk4 = {};
	struct ll_ct6_keys *k6;
	void *pk = &pk4;
	__u32 zero = 0, ev;

	if (!ll_ct_count(p, ct, &ev))
		return;
	if (v6) {
		k6 = bpf_map_lookup_elem(&ll_ct6_keys, &zero);
		if (!k6)
			return;
		pk = &k6->partner;
	}
	ll_ct_partner(v6, p->proto, ct, pk);
	/* A DSR flow has no other direction. */
	ll_ct_advance(p, ct,
		      ct->xlate & LL_XLATE_DSR ? NULL : bpf_map_lookup_elem(LL_CT_MAP(v6), pk), ev);
}

static __always_inline void ll_ct_undo(int v6, const void *k)
{
	if (!bpf_map_delete_elem(LL_CT_MAP(v6), k))
		ll_ct_stat(v6, LL_CT_STAT_DELETED);
}

/* The flow-wide fields of a new flow's entries, from its first packet p,
 * built in the per-CPU scratch of its family (the pipeline's frame is near
 * the limit); ll_ct_set_dir fills in each direction. */
static __always_inline struct ll_ct *ll_ct_build(int v6, const struct ll_pkt *p, __u32 svc_id,
						 __u32 ep_idx)
{
	__u32 zero = 0;
	struct ll_ct *ct =
		bpf_map_lookup_elem(v6 ? (void *)&ll_ct6_scratch : (void *)&ll_ct_scratch, &zero);

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
 * translated by nat (an IPv6 flow's translated addresses: ll_nat6), to
 * endpoint ep_idx of service svc_id: both directions, or the client's only
 * for DSR. A source-translated flow gets its source port here
 * (nat->to.sport). Returns 0, LL_CT_RACED when another CPU created the flow
 * first, or the reason not to translate p. */
static __always_inline int ll_ct_create(int v6, const struct ll_pkt *p, const void *key,
					struct ll_nat *nat, __u32 svc_id, __u32 ep_idx)
{
	/* The reply direction rewrites on the destination what the original
	 * rewrites on the source, and vice versa, back to the key turned around. */
	__u8 rxlate = (nat->xlate & LL_XLATE_SRC ? LL_XLATE_DST : 0) |
		      (nat->xlate & LL_XLATE_DST ? LL_XLATE_SRC : 0);
	struct ll_tuple back = {.sport = p->dport, .dport = p->sport};
	struct ll_ct_key rkey4 = {}, other4 = {};
	void *rkey = &rkey4, *other = &other4;
	void *map = LL_CT_MAP(v6);
	struct ll_addrs6 *to6 = 0;
	struct ll_ct *ct, *hit;
	struct ll_ct6_keys *k6;
	struct ll_ct6 *ct6;
	__u32 zero = 0;
	long err;

	ct = ll_ct_build(v6, p, svc_id, ep_idx);
	if (!ct)
		return LL_R_PASS_CT_FULL;
	ct6 = (struct ll_ct6 *)ct;
	if (v6) {
		to6 = bpf_map_lookup_elem(&ll_nat6, &zero);
		k6 = bpf_map_lookup_elem(&ll_ct6_keys, &zero);
		if (!to6 || !k6)
			return LL_R_PASS_CT_FULL;
		/* Zeroed: compared whole in ll_ct_key_eq. */
		__builtin_memset(&k6->partner, 0, sizeof(k6->partner));
		__builtin_memset(&k6->other, 0, sizeof(k6->other));
		rkey = &k6->partner;
		other = &k6->other;
	} else {
		const struct ll_ct_key *k4 = key;

		back.saddr = k4->daddr;
		back.daddr = k4->saddr;
	}

	if (nat->xlate & LL_XLATE_SRC) {
		/* The reply entry first: claiming it claims the source port. */
		ll_ct_set_dir(ct, p, &back, rxlate, LL_CT_REPLY);
		if (v6) {
			struct ll_ct6_key *r6 = rkey;
			const struct ll_ct6_key *k = key;

			__builtin_memcpy(ct6->nat6.saddr, k->daddr, 16);
			__builtin_memcpy(ct6->nat6.daddr, k->saddr, 16);
			__builtin_memcpy(r6->saddr, to6->daddr, 16);
			__builtin_memcpy(r6->daddr, to6->saddr, 16);
			r6->sport = nat->to.dport;
			r6->dport = nat->to.sport;
			r6->proto = p->proto;
		} else {
			rkey4.proto = p->proto;
			rkey4.saddr = nat->to.daddr;
			rkey4.daddr = nat->to.saddr;
			rkey4.sport = nat->to.dport;
			rkey4.dport = nat->to.sport;
		}
		err = ll_nat_claim_port(v6, rkey, ct);
		if (err)
			return err;
		ll_ct_stat(v6, LL_CT_STAT_CREATED);
		nat->to.sport = v6 ? ((struct ll_ct6_key *)rkey)->dport : rkey4.dport;
		ll_ct_set_dir(ct, p, &nat->to, nat->xlate, LL_CT_ORIGINAL);
		if (v6)
			ct6->nat6 = *to6;
		err = bpf_map_update_elem(map, key, ct, BPF_NOEXIST);
		if (!err) {
			ll_ct_stat(v6, LL_CT_STAT_CREATED);
			return 0;
		}
		/* The port is ours alone: nobody else uses that reply entry. */
		ll_ct_undo(v6, rkey);
		return err == -LL_EEXIST ? LL_CT_RACED : LL_R_PASS_CT_FULL;
	}

	ll_ct_set_dir(ct, p, &nat->to, nat->xlate, LL_CT_ORIGINAL);
	if (v6)
		ct6->nat6 = *to6;
	err = bpf_map_update_elem(map, key, ct, BPF_NOEXIST);
	if (err)
		return err == -LL_EEXIST ? LL_CT_RACED : LL_R_PASS_CT_FULL;
	ll_ct_stat(v6, LL_CT_STAT_CREATED);
	if (nat->xlate & LL_XLATE_DSR)
		return 0;

	ll_ct_partner(v6, p->proto, ct, rkey);
	ll_ct_set_dir(ct, p, &back, rxlate, LL_CT_REPLY);
	if (v6) {
		const struct ll_ct6_key *k = key;

		__builtin_memcpy(ct6->nat6.saddr, k->daddr, 16);
		__builtin_memcpy(ct6->nat6.daddr, k->saddr, 16);
	}
	err = bpf_map_update_elem(map, rkey, ct, BPF_NOEXIST);
	if (!err) {
		ll_ct_stat(v6, LL_CT_STAT_CREATED);
		return 0;
	}
	if (err == -LL_EEXIST) {
		/* The endpoint's reply tuple is taken: by a live flow of another
		 * service (same client address and port towards the same
		 * endpoint), whose replies we could not tell apart, or by a stale
		 * half of a flow whose other half the LRU evicted, which we
		 * replace (no new entry). */
		hit = bpf_map_lookup_elem(map, rkey);
		if (hit) {
			ll_ct_partner(v6, p->proto, hit, other);
			if (!ll_ct_key_eq(v6, other, key) && bpf_map_lookup_elem(map, other)) {
				ll_ct_undo(v6, key);
				return LL_R_PASS_CT_CLASH;
			}
		}
		if (!bpf_map_update_elem(map, rkey, ct, BPF_EXIST))
			return 0;
	}
	ll_ct_undo(v6, key);
	return LL_R_PASS_CT_FULL;
}

#endif
