/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Verdict and drop codes of the capture programs.
 *
 * SHARED WITH USER SPACE (agent/layout.py mirrors them; tests/unit/test_bpf_layout.py
 * checks the mirror against this file). Numbered once: never renumber a code, never
 * reuse a retired number; add new codes at the end.
 */
#ifndef AMBIENT_CODES_H
#define AMBIENT_CODES_H

/* What a program decided for one packet. */
#define VERDICT_PASS 0              /* not ours: the stack routes it as usual */
#define VERDICT_ASSIGN_ESTABLISHED 1 /* matched a node-namespace socket by its 4-tuple */
#define VERDICT_REDIRECT_OUTBOUND 2 /* SYN from an enrolled pod -> outbound listener */
#define VERDICT_REDIRECT_INBOUND 3  /* plaintext SYN to an enrolled pod -> inbound listener */
#define VERDICT_REDIRECT_HBONE 4    /* SYN to an enrolled pod's HBONE port -> HBONE listener */
#define VERDICT_DROP 5              /* fail closed; the reason is one of DROP_* */
#define VERDICT_MAX 8               /* size of the verdicts map (room to grow) */

/* Why a packet was dropped (fail closed). */
#define DROP_NONE 0
#define DROP_NO_OUTBOUND_LISTENER 1 /* ztunnel's outbound listener (15001) is not there */
#define DROP_NO_INBOUND_LISTENER 2  /* ztunnel's inbound plaintext listener (15006) is not there */
#define DROP_NO_HBONE_LISTENER 3    /* ztunnel's HBONE listener (15008) is not there */
#define DROP_ASSIGN_FAILED 4        /* bpf_sk_assign refused the socket it found */
#define DROP_MAX 8                  /* size of the drops map (room to grow) */

/* Bits of workload_value.flags. */
#define WORKLOAD_ENROLLED 1 /* in the mesh: its traffic goes through ztunnel */
#define WORKLOAD_LOCAL 2    /* runs on this node (its host-side veth is here) */

/* Bits of settings.flags. */
#define SETTINGS_CONFIGURED 1 /* the agent wrote the settings; until then nothing is captured */

/* Kinds of attachment (attachment_value.kind). */
#define ATTACH_POD_EGRESS 1
#define ATTACH_NODE_INGRESS 2

#endif
