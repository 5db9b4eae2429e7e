/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The capture decision for a connection's first packet (a SYN without ACK), as a pure
 * function of what the maps say about its ends. agent/capture.py mirrors it and
 * tests/unit/test_bpf_decision.py table-tests the mirror; the same table runs against
 * the compiled programs with BPF_PROG_TEST_RUN in tests/integration/test_bpf_decision_run.py.
 */
#ifndef AMBIENT_DECIDE_H
#define AMBIENT_DECIDE_H

#include "maps.h"

static __always_inline int port_listed(const __u16 *ports, __u16 port)
{
#pragma unroll
    for (int i = 0; i < MAX_EXCLUDED_PORTS; i++) {
        if (ports[i] != 0 && ports[i] == port)
            return 1;
    }
    return 0;
}

static __always_inline int cidr_listed(const struct settings *cfg, __u32 daddr)
{
#pragma unroll
    for (int i = 0; i < MAX_EXCLUDED_CIDRS; i++) {
        if (cfg->excluded_cidrs[i].mask != 0 &&
            (daddr & cfg->excluded_cidrs[i].mask) == cfg->excluded_cidrs[i].addr)
            return 1;
    }
    return 0;
}

/* A SYN to an enrolled pod of this node: HBONE, excluded, or plaintext inbound. */
static __always_inline int decide_inbound(const struct settings *cfg, __u16 dport)
{
    if (dport == cfg->hbone_port)
        return VERDICT_REDIRECT_HBONE;
    if (port_listed(cfg->inbound_excluded_ports, dport))
        return VERDICT_PASS;
    return VERDICT_REDIRECT_INBOUND;
}

static __always_inline int is_local_enrolled(__u32 flags)
{
    return (flags & (WORKLOAD_ENROLLED | WORKLOAD_LOCAL)) == (WORKLOAD_ENROLLED | WORKLOAD_LOCAL);
}

/* Pod egress: src_flags/dst_flags are 0 for an address with no workloads entry. */
static __always_inline int decide_pod_egress_syn(const struct settings *cfg, __u32 src_flags,
                                                 __u32 dst_flags, __u32 daddr, __u16 dport)
{
    if ((src_flags & WORKLOAD_ENROLLED) &&
        !port_listed(cfg->outbound_excluded_ports, dport) && !cidr_listed(cfg, daddr))
        return VERDICT_REDIRECT_OUTBOUND;
    if (is_local_enrolled(dst_flags))
        return decide_inbound(cfg, dport);
    return VERDICT_PASS;
}

/* Node ingress: only SYNs to enrolled pods of this node are captured. */
static __always_inline int decide_node_ingress_syn(const struct settings *cfg, __u32 dst_flags,
                                                   __u16 dport)
{
    if (is_local_enrolled(dst_flags))
        return decide_inbound(cfg, dport);
    return VERDICT_PASS;
}

#endif
