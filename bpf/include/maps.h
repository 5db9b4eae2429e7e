/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Layouts of every map shared between the capture programs and the agent, and the
 * pinned map declarations themselves. The agent reads and writes these maps through
 * the key/leaf types BCC derives from these structs (table.Key / table.Leaf); the
 * user-space-only mirrors in agent/layout.py are checked against them by a test.
 *
 * Addresses are IPv4 in network byte order; ports in host byte order.
 *
 * PIN_DIR (a string literal, e.g. "/sys/fs/bpf/ambient/lab-node1") is given by the
 * agent as a cflag. With BPF_TABLE_PINNED, BCC opens a map already pinned there
 * instead of creating it: a restarted agent adopts the maps the programs use.
 */
#ifndef AMBIENT_MAPS_H
#define AMBIENT_MAPS_H

#include "codes.h"

#ifndef PIN_DIR
#error "PIN_DIR must be defined (the agent passes -DPIN_DIR=\"/sys/fs/bpf/ambient/<node-id>\")"
#endif

#define MAX_WORKLOADS 4096
#define MAX_EXCLUDED_PORTS 16
#define MAX_EXCLUDED_CIDRS 16
#define MAX_ATTACHMENTS 4096

/* workloads: pod IP -> what the programs need to know about it. */
struct workload_key {
    __u32 ip;
};

struct workload_value {
    __u32 ifindex;     /* host-side interface of the pod (in the node namespace) */
    __u32 flags;       /* WORKLOAD_* */
    __u32 workload_id; /* stable id the agent gives the pod (its slot), for logs */
    __u32 reserved;
};

/* settings: one entry (key 0): listener ports, the mark, exclusions. */
struct cidr4 {
    __u32 addr; /* network order, already masked */
    __u32 mask; /* network order */
};

struct settings {
    __u32 flags;          /* SETTINGS_* */
    __u32 mark;           /* set on every assigned packet; a fwmark rule routes it locally */
    __u16 outbound_port;  /* 15001 */
    __u16 inbound_port;   /* 15006 */
    __u16 hbone_port;     /* 15008 */
    __u16 reserved;
    __u16 outbound_excluded_ports[MAX_EXCLUDED_PORTS]; /* dst ports never captured outbound (0 = empty) */
    __u16 inbound_excluded_ports[MAX_EXCLUDED_PORTS];  /* ports of enrolled pods never captured inbound */
    struct cidr4 excluded_cidrs[MAX_EXCLUDED_CIDRS];   /* destinations never captured (mask 0 = empty) */
};

/* stats: pod IP (0.0.0.0 = not attributed to a pod) -> counters. */
struct pod_stats {
    __u64 redirected_outbound;  /* connections assigned to the outbound listener */
    __u64 redirected_inbound;   /* connections assigned to the inbound plaintext listener */
    __u64 redirected_hbone;     /* connections assigned to the HBONE listener */
    __u64 assigned_established; /* packets assigned to an existing node-namespace socket */
    __u64 dropped_no_listener;  /* SYNs refused/dropped: the needed listener was missing */
    __u64 dropped_assign_failed;/* packets dropped because bpf_sk_assign refused */
    __u64 passed;               /* TCP packets of this pod left untouched */
};

/* attachments: host ifindex -> what the agent attached there (written by the agent only). */
struct attachment_value {
    __u32 kind;      /* ATTACH_* */
    __u32 pod_ip;    /* network order; 0 for the uplink */
    char ifname[16];
    char pod[64];    /* "<namespace>/<name>", or the node name for the uplink */
};

BPF_TABLE_PINNED("hash", struct workload_key, struct workload_value, workloads,
                 MAX_WORKLOADS, PIN_DIR "/workloads");
BPF_TABLE_PINNED("array", __u32, struct settings, settings, 1, PIN_DIR "/settings");
BPF_TABLE_PINNED("hash", struct workload_key, struct pod_stats, stats,
                 MAX_WORKLOADS + 1, PIN_DIR "/stats");
BPF_TABLE_PINNED("hash", __u32, struct attachment_value, attachments, MAX_ATTACHMENTS,
                 PIN_DIR "/attachments");
/* verdicts: VERDICT_* -> packets so decided; drops: DROP_* -> packets failed closed. */
BPF_TABLE_PINNED("array", __u32, __u64, verdicts, VERDICT_MAX, PIN_DIR "/verdicts");
BPF_TABLE_PINNED("array", __u32, __u64, drops, DROP_MAX, PIN_DIR "/drops");

#endif
