/* SPDX-License-Identifier: Apache-2.0 */
/*
 * What both capture programs share: parsing an IPv4 TCP packet, finding a socket of the
 * node namespace, handing the packet to it (bpf_sk_assign + the local-delivery mark),
 * failing closed, and counting per pod.
 */
#ifndef AMBIENT_CAPTURE_H
#define AMBIENT_CAPTURE_H

#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/pkt_cls.h>
#include <uapi/linux/tcp.h>

#include "maps.h"
#include "decide.h"

struct packet {
    struct bpf_sock_tuple tuple; /* saddr, daddr, sport, dport: network order */
    __u16 dport;                 /* host order */
    __u8 syn;                    /* SYN without ACK: a connection's first packet */
    __u8 ip_len;                 /* IPv4 header length in bytes */
};

/* Fills pkt from an Ethernet + IPv4 + TCP packet; 0 when the packet is anything else. */
static __always_inline int parse_tcp4(struct __sk_buff *skb, struct packet *pkt)
{
    void *data = (void *)(long)skb->data;
    void *data_end = (void *)(long)skb->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > data_end)
        return 0;
    if (eth->h_proto != bpf_htons(ETH_P_IP))
        return 0;
    struct iphdr *ip = (void *)(eth + 1);
    if ((void *)(ip + 1) > data_end)
        return 0;
    if (ip->protocol != IPPROTO_TCP || ip->ihl < 5)
        return 0;
    if (ip->frag_off & bpf_htons(0x1FFF)) /* a later fragment carries no TCP header */
        return 0;
    __u32 ip_len = ip->ihl * 4;
    if (ip_len > 60)
        return 0;
    __u32 needed = sizeof(struct ethhdr) + ip_len + sizeof(struct tcphdr);
    if (data + needed > data_end) {
        /* Headers not in the linear part: pull them rather than let a SYN slip past. */
        if (bpf_skb_pull_data(skb, needed) != 0)
            return 0;
        data = (void *)(long)skb->data;
        data_end = (void *)(long)skb->data_end;
        eth = data;
        if ((void *)(eth + 1) > data_end)
            return 0;
        ip = (void *)(eth + 1);
        if ((void *)(ip + 1) > data_end)
            return 0;
    }
    struct tcphdr *tcp = (void *)ip + ip_len;
    if ((void *)(tcp + 1) > data_end)
        return 0;
    pkt->tuple.ipv4.saddr = ip->saddr;
    pkt->tuple.ipv4.daddr = ip->daddr;
    pkt->tuple.ipv4.sport = tcp->source;
    pkt->tuple.ipv4.dport = tcp->dest;
    pkt->dport = bpf_ntohs(tcp->dest);
    pkt->syn = tcp->syn && !tcp->ack;
    pkt->ip_len = ip_len;
    return 1;
}

static __always_inline struct settings *current_settings(void)
{
    __u32 zero = 0;
    struct settings *cfg = settings.lookup(&zero);
    if (!cfg || !(cfg->flags & SETTINGS_CONFIGURED))
        return 0;
    return cfg;
}

static __always_inline __u32 workload_flags(__u32 ip)
{
    struct workload_key key = {.ip = ip};
    struct workload_value *wl = workloads.lookup(&key);
    return wl ? wl->flags : 0;
}

static __always_inline int is_workload(__u32 ip)
{
    struct workload_key key = {.ip = ip};
    return workloads.lookup(&key) != 0;
}

static __always_inline struct pod_stats *stats_of(__u32 ip)
{
    struct workload_key key = {.ip = ip};
    struct pod_stats *s = stats.lookup(&key);
    if (s)
        return s;
    struct pod_stats zero = {};
    stats.insert(&key, &zero);
    return stats.lookup(&key);
}

#define COUNT(ip, field)                                                                       \
    do {                                                                                       \
        struct pod_stats *_s = stats_of(ip);                                                   \
        if (_s)                                                                                \
            __sync_fetch_and_add(&_s->field, 1);                                               \
    } while (0)

/* Node-wide tallies by code: every TCP packet's verdict, every fail-closed reason. */
static __always_inline void count_verdict(__u32 verdict)
{
    __u64 *n = verdicts.lookup(&verdict);
    if (n)
        __sync_fetch_and_add(n, 1);
}

static __always_inline void count_drop(__u32 reason)
{
    __u64 *n = drops.lookup(&reason);
    if (n)
        __sync_fetch_and_add(n, 1);
    count_verdict(VERDICT_DROP);
}

static __always_inline __u32 missing_listener_reason(int verdict)
{
    if (verdict == VERDICT_REDIRECT_OUTBOUND)
        return DROP_NO_OUTBOUND_LISTENER;
    if (verdict == VERDICT_REDIRECT_HBONE)
        return DROP_NO_HBONE_LISTENER;
    return DROP_NO_INBOUND_LISTENER;
}

static __always_inline struct bpf_sock *lookup_tcp(struct __sk_buff *skb,
                                                    struct bpf_sock_tuple *tuple)
{
    return bpf_skc_lookup_tcp(skb, tuple, sizeof(tuple->ipv4), BPF_F_CURRENT_NETNS, 0);
}

/*
 * Step 1 of both programs: a socket of the node namespace owns this exact 4-tuple
 * (ztunnel's accepted and IP_TRANSPARENT upstream connections, a handshake in progress).
 * Returns 1 when the packet was assigned, -1 when assigning failed, 0 when no such socket.
 * A listener is not a match: the lookup falls back to listeners on the destination port,
 * and a node service listening on that port must not swallow pod traffic.
 */
static __always_inline int assign_established(struct __sk_buff *skb, struct packet *pkt)
{
    struct bpf_sock *sk = lookup_tcp(skb, &pkt->tuple);
    if (!sk)
        return 0;
    if (sk->state == BPF_TCP_LISTEN) {
        bpf_sk_release(sk);
        return 0;
    }
    long err = bpf_sk_assign(skb, sk, 0);
    bpf_sk_release(sk);
    return err == 0 ? 1 : -1;
}

/* Hands a SYN to the listener on `port` of the node namespace. 0 = assigned, <0 = error. */
static __always_inline int assign_listener(struct __sk_buff *skb, struct packet *pkt,
                                           __u16 port, int *missing)
{
    struct bpf_sock_tuple tuple = pkt->tuple;
    tuple.ipv4.dport = bpf_htons(port);
    struct bpf_sock *sk = lookup_tcp(skb, &tuple);
    if (!sk) {
        *missing = 1;
        return -1;
    }
    if (sk->state != BPF_TCP_LISTEN) {
        bpf_sk_release(sk);
        *missing = 1;
        return -1;
    }
    long err = bpf_sk_assign(skb, sk, 0);
    bpf_sk_release(sk);
    return err == 0 ? 0 : -1;
}

static __always_inline __u16 listener_port(const struct settings *cfg, int verdict)
{
    if (verdict == VERDICT_REDIRECT_OUTBOUND)
        return cfg->outbound_port;
    if (verdict == VERDICT_REDIRECT_HBONE)
        return cfg->hbone_port;
    return cfg->inbound_port;
}

/*
 * Fail closed for a SYN whose listener is missing: it never reaches its destination.
 * It is turned, in place, into the RST|ACK its destination would send for a closed
 * port and sent back out of the interface it came in on, so the client is refused at
 * once (as when iptables redirects to a port nobody listens on) instead of retrying
 * into a timeout. Swapping addresses and ports leaves both checksums as they are; the
 * changed TCP words are patched into the TCP checksum. Any failure drops the SYN.
 */
static __always_inline int reset_syn(struct __sk_buff *skb, struct packet *pkt)
{
    __u32 tcp_off = sizeof(struct ethhdr) + pkt->ip_len;
    __u32 csum_off = tcp_off + offsetof(struct tcphdr, check);
    __be32 seq, old_ack, new_seq = 0, new_ack;
    __be16 old_flags, new_flags, old_window, new_window = 0;
    if (bpf_skb_load_bytes(skb, tcp_off + 4, &seq, 4) ||
        bpf_skb_load_bytes(skb, tcp_off + 8, &old_ack, 4) ||
        bpf_skb_load_bytes(skb, tcp_off + 12, &old_flags, 2) ||
        bpf_skb_load_bytes(skb, tcp_off + 14, &old_window, 2))
        return TC_ACT_SHOT;
    new_ack = bpf_htonl(bpf_ntohl(seq) + 1);
    /* keep the data offset (high nibble of byte 12), flags byte 13 = RST|ACK */
    new_flags = (old_flags & bpf_htons(0xF000)) | bpf_htons(0x0014);
    if (bpf_l4_csum_replace(skb, csum_off, seq, new_seq, 4) ||
        bpf_l4_csum_replace(skb, csum_off, old_ack, new_ack, 4) ||
        bpf_l4_csum_replace(skb, csum_off, old_flags, new_flags, 2) ||
        bpf_l4_csum_replace(skb, csum_off, old_window, new_window, 2))
        return TC_ACT_SHOT;
    __be32 saddr = pkt->tuple.ipv4.saddr, daddr = pkt->tuple.ipv4.daddr;
    __be16 sport = pkt->tuple.ipv4.sport, dport = pkt->tuple.ipv4.dport;
    __u8 macs[12];
    if (bpf_skb_load_bytes(skb, 0, macs, 12))
        return TC_ACT_SHOT;
    if (bpf_skb_store_bytes(skb, 0, macs + 6, 6, 0) ||
        bpf_skb_store_bytes(skb, 6, macs, 6, 0) ||
        bpf_skb_store_bytes(skb, sizeof(struct ethhdr) + offsetof(struct iphdr, saddr), &daddr, 4, 0) ||
        bpf_skb_store_bytes(skb, sizeof(struct ethhdr) + offsetof(struct iphdr, daddr), &saddr, 4, 0) ||
        bpf_skb_store_bytes(skb, tcp_off, &dport, 2, 0) ||
        bpf_skb_store_bytes(skb, tcp_off + 2, &sport, 2, 0) ||
        bpf_skb_store_bytes(skb, tcp_off + 4, &new_seq, 4, 0) ||
        bpf_skb_store_bytes(skb, tcp_off + 8, &new_ack, 4, 0) ||
        bpf_skb_store_bytes(skb, tcp_off + 12, &new_flags, 2, 0) ||
        bpf_skb_store_bytes(skb, tcp_off + 14, &new_window, 2, 0))
        return TC_ACT_SHOT;
    return bpf_redirect(skb->ifindex, 0);
}

/*
 * Carries out a redirect verdict for a SYN, charging the pod `pod_ip`: assigned and
 * marked; refused with a reset when the listener is missing; dropped when the kernel
 * refuses the assignment. Never passed on in clear.
 */
static __always_inline int redirect_syn(struct __sk_buff *skb, struct packet *pkt,
                                        const struct settings *cfg, int verdict, __u32 pod_ip)
{
    int missing = 0;
    if (assign_listener(skb, pkt, listener_port(cfg, verdict), &missing) != 0) {
        if (missing) {
            COUNT(pod_ip, dropped_no_listener);
            count_drop(missing_listener_reason(verdict));
            return reset_syn(skb, pkt);
        }
        COUNT(pod_ip, dropped_assign_failed);
        count_drop(DROP_ASSIGN_FAILED);
        return TC_ACT_SHOT;
    }
    skb->mark = cfg->mark;
    count_verdict(verdict);
    if (verdict == VERDICT_REDIRECT_OUTBOUND)
        COUNT(pod_ip, redirected_outbound);
    else if (verdict == VERDICT_REDIRECT_HBONE)
        COUNT(pod_ip, redirected_hbone);
    else
        COUNT(pod_ip, redirected_inbound);
    return TC_ACT_OK;
}

/* Step 1 carried out: assigned and marked, dropped, or -1 when no socket matched. */
static __always_inline int handle_established(struct __sk_buff *skb, struct packet *pkt,
                                              const struct settings *cfg, __u32 pod_ip)
{
    int found = assign_established(skb, pkt);
    if (found == 0)
        return -1;
    if (found < 0) {
        COUNT(pod_ip, dropped_assign_failed);
        count_drop(DROP_ASSIGN_FAILED);
        return TC_ACT_SHOT;
    }
    skb->mark = cfg->mark;
    count_verdict(VERDICT_ASSIGN_ESTABLISHED);
    COUNT(pod_ip, assigned_established);
    return TC_ACT_OK;
}

#endif
