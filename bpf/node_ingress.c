/* SPDX-License-Identifier: Apache-2.0 */
/*
 * node ingress: TC ingress (clsact, direct action) of the node's uplink, in the node
 * namespace; it sees every packet arriving from other nodes.
 *
 * Decides, for IPv4 TCP to a pod of this node (an address in the workloads map):
 *  1. a socket of the node namespace owns the packet's 4-tuple (not a listener) ->
 *     assign to it (replies to ztunnel's upstream connections spoofed from a local
 *     pod, the rest of HBONE and inbound flows);
 *  2. a SYN to an enrolled pod: to the HBONE port (15008) -> ztunnel's HBONE listener;
 *     to an inbound-excluded port -> pass; any other port -> the inbound plaintext
 *     listener (15006);
 *  3. the listener needed is missing -> answer the SYN with a reset (refused, never
 *     passed on in clear) and count (fail closed);
 *  4. anything else passes untouched (traffic to the node itself, to pods that are
 *     not enrolled, connections opened before enrollment).
 * Every assigned packet carries settings.mark (see pod_egress.c).
 */
#include "include/capture.h"

int node_ingress(struct __sk_buff *skb)
{
    struct packet pkt = {};
    if (!parse_tcp4(skb, &pkt))
        return TC_ACT_OK;
    struct settings *cfg = current_settings();
    if (!cfg)
        return TC_ACT_OK;
    __u32 dst = pkt.tuple.ipv4.daddr;
    struct workload_key key = {.ip = dst};
    struct workload_value *wl = workloads.lookup(&key);
    if (!wl)
        return TC_ACT_OK;
    __u32 dst_flags = wl->flags;

    int done = handle_established(skb, &pkt, cfg, dst);
    if (done >= 0)
        return done;

    if (pkt.syn) {
        int verdict = decide_node_ingress_syn(cfg, dst_flags, pkt.dport);
        if (verdict != VERDICT_PASS)
            return redirect_syn(skb, &pkt, cfg, verdict, dst);
    }
    count_verdict(VERDICT_PASS);
    COUNT(dst, passed);
    return TC_ACT_OK;
}
