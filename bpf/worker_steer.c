/* SPDX-License-Identifier: Apache-2.0 */
/*
 * worker steering: SK_REUSEPORT programs on ztunnel's listeners (15001 outbound,
 * 15006 plaintext, 15008 HBONE). Each of ztunnel's worker processes listens on the
 * same ports (SO_REUSEPORT); without a program the kernel picks the worker by a hash
 * of the connection's 4-tuple, so consecutive connections of one client land on
 * workers that slept through the last one, and long-lived connections pile up on
 * one worker by chance.
 *
 * Here a new connection goes to the lowest-numbered worker with fewer than
 * SPREAD_AT connections open on that listener; when every worker has that many, to
 * the worker with the fewest. One client's connections one after another stay on one
 * warm worker (a worker often takes the next one before the last is counted
 * finished: hence two, not one); connections in parallel spread over all of them.
 *
 * A worker's open connections are counted in worker_load: `steered` by this program
 * (at the SYN, when it picks the worker), `finished` by the worker when it is done
 * with a connection (the map is memory-mapped into the workers: a store, no system
 * call). Where the pick fails (a worker that has not joined yet, or has closed its
 * listener) the program passes and the kernel's hash decides, as without it.
 *
 * Set at compile time (ztunnel/steering.py): WORKERS, and the file descriptors of the
 * three REUSEPORT_SOCKARRAY maps (made with libbpf, as BCC declares no such map):
 * SOCKS_OUTBOUND_FD, SOCKS_PLAINTEXT_FD, SOCKS_HBONE_FD.
 */
#include <uapi/linux/bpf.h>

#define LISTENER_OUTBOUND 0
#define LISTENER_PLAINTEXT 1
#define LISTENER_HBONE 2
#define LISTENERS 3

#define SPREAD_AT 2

struct worker_load {
    __u64 steered;  /* written by this program only */
    __u64 finished; /* written by the worker only */
};

/* Index: listener * WORKERS + worker. */
BPF_F_TABLE("array", __u32, struct worker_load, worker_load, LISTENERS * WORKERS,
            BPF_F_MMAPABLE);

static __always_inline int steer(struct sk_reuseport_md *ctx, void *socks, __u32 base)
{
    __u32 chosen = 0;
    __s64 fewest = 0x7fffffffffffffffLL;
    for (__u32 worker = 0; worker < WORKERS; worker++) {
        __u32 slot = base + worker;
        struct worker_load *load = worker_load.lookup(&slot);
        if (!load)
            return SK_PASS;
        /* Negative only for connections the kernel's hash gave the worker. */
        __s64 open = (__s64)(load->steered - load->finished);
        if (open < SPREAD_AT) {
            chosen = worker;
            break;
        }
        if (open < fewest) {
            fewest = open;
            chosen = worker;
        }
    }
    if (bpf_sk_select_reuseport(ctx, socks, &chosen, 0) != 0)
        return SK_PASS; /* that worker is not listening: the kernel's hash */
    __u32 slot = base + chosen;
    struct worker_load *load = worker_load.lookup(&slot);
    if (load)
        __sync_fetch_and_add(&load->steered, 1);
    return SK_PASS;
}

int steer_outbound(struct sk_reuseport_md *ctx)
{
    return steer(ctx, (void *)bpf_pseudo_fd(1, SOCKS_OUTBOUND_FD), LISTENER_OUTBOUND * WORKERS);
}

int steer_plaintext(struct sk_reuseport_md *ctx)
{
    return steer(ctx, (void *)bpf_pseudo_fd(1, SOCKS_PLAINTEXT_FD), LISTENER_PLAINTEXT * WORKERS);
}

int steer_hbone(struct sk_reuseport_md *ctx)
{
    return steer(ctx, (void *)bpf_pseudo_fd(1, SOCKS_HBONE_FD), LISTENER_HBONE * WORKERS);
}
