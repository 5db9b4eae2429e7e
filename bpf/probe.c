/* SPDX-License-Identifier: Apache-2.0 */
/*
 * toolchain probe: TC ingress (clsact, direct action) of any interface. Counts the
 * packets it sees by EtherType class and passes every one. It decides nothing; it
 * proves BCC can compile a SCHED_CLS program here, the kernel loads it, and pyroute2
 * can attach it (tests/integration/test_bpf_toolchain.py).
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/pkt_cls.h>

#define PROBE_IPV4 0
#define PROBE_OTHER 1

BPF_ARRAY(probe_packets, __u64, 2);

int probe(struct __sk_buff *skb)
{
    __u32 slot = skb->protocol == bpf_htons(ETH_P_IP) ? PROBE_IPV4 : PROBE_OTHER;
    __u64 *count = probe_packets.lookup(&slot);
    if (count)
        __sync_fetch_and_add(count, 1);
    return TC_ACT_OK;
}
