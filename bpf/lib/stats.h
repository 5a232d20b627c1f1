/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
#ifndef LL_STATS_H
#define LL_STATS_H

#include "maps.h"

static __always_inline void ll_count(void *map, __u32 idx, __u32 len)
{
	struct ll_counters *c = bpf_map_lookup_elem(map, &idx);

	if (c) {
		c->packets++;
		c->bytes += len;
	}
}

#endif
