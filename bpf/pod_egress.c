/* SPDX-License-Identifier: Apache-2.0 */
/*
 * pod egress: TC ingress (clsact, direct action) of the host-side veth of every pod of
 * the node, in the node namespace; it sees every packet a pod sends.
 *
 * Decides, for IPv4 TCP:
 *  1. a socket of the node namespace owns the packet's 4-tuple (not a listener) ->
 *     assign to it (replies to ztunnel's IP_TRANSPARENT upstream connections, the
 *     rest of captured flows);
 *  2. a SYN from an enrolled pod, to a port and address not excluded -> ztunnel's
 *     outbound listener (15001);
 *  3. a SYN from any other pod to an enrolled pod of this node -> the inbound plaintext
 *     listener (15006), or the HBONE listener (15008) for the HBONE port;
 *  4. the listener needed is missing -> answer the SYN with a reset (refused, never
 *     passed on in clear) and count (fail closed);
 *  5. anything else passes untouched: a non-SYN packet with no socket (connections
 *     opened before the pod was enrolled keep flowing), other protocols, IPv6.
 * Every assigned packet carries settings.mark, which the agent's fwmark rule routes to
 * the local table so the stack delivers it although its destination is not local.
 */
#include "include/capture.h"

int pod_egress(struct __sk_buff *skb)
{
    struct packet pkt = {};
    if (!parse_tcp4(skb, &pkt))
        return TC_ACT_OK;
    struct settings *cfg = current_settings();
    if (!cfg)
        return TC_ACT_OK;
    __u32 src = pkt.tuple.ipv4.saddr;

    int done = handle_established(skb, &pkt, cfg, src);
    if (done >= 0)
        return done;

    if (pkt.syn) {
        __u32 dst = pkt.tuple.ipv4.daddr;
        int verdict = decide_pod_egress_syn(cfg, workload_flags(src), workload_flags(dst),
                                            dst, pkt.dport);
        if (verdict == VERDICT_REDIRECT_OUTBOUND)
            return redirect_syn(skb, &pkt, cfg, verdict, src);
        if (verdict != VERDICT_PASS)
            return redirect_syn(skb, &pkt, cfg, verdict, dst);
    }
    count_verdict(VERDICT_PASS);
    if (is_workload(src))
        COUNT(src, passed);
    return TC_ACT_OK;
}
