/* The per-packet step of the 87 CICFlowMeter features (spec/flow-features.md sections 2-4).
 *
 * Runs inside NFStream's meter processes, once per packet, on NFStream's own packet
 * structure read in place: this is the hot path that Python could not keep at the
 * speed of NFStream's engine. Everything per flow (orientation, end reasons, the
 * 85 columns) stays in Python (ntds/flows/features.py), which reads the state below.
 */

#include <stdint.h>
#include <string.h>

#include "accumulator.h"
#include "capture_next.h"

#define BIG ((int64_t)1 << 62)
#define WRAPPED ((uint64_t)1 << 63)
#define PCAP_SPAN_MS ((int64_t)4294967296LL * 1000)

/* A packet field at a byte offset of NFStream's packet structure. */
#define AT(type, packet, offset) (*(const type *)((const char *)(packet) + (offset)))
#define FLAG(meter, packet, bit) ((AT(uint16_t, packet, (meter)->layout.flags) >> (meter)->layout.bit) & 1)

/* NFStream reads a classic pcap's unsigned 32-bit seconds as signed: undo the 2038 wrap (ntds/flows/clock.py). */
static int64_t engine_ms(uint64_t ms) {
    /* As a signed number, a wrapped time is ms - 2**64 (two's complement). */
    return ms >= WRAPPED ? (int64_t)ms + PCAP_SPAN_MS : (int64_t)ms;
}

static void add_square(uint64_t *lo, uint64_t *hi, int64_t gap) {
    unsigned __int128 sum = ((unsigned __int128)*hi << 64) | *lo;
    __int128 g = gap;
    sum += (unsigned __int128)(g * g);
    *lo = (uint64_t)sum;
    *hi = (uint64_t)(sum >> 64);
}

static void accumulate(int64_t *acc, int64_t value) {
    acc[0] += 1;
    acc[1] += value;
    add_square((uint64_t *)&acc[2], (uint64_t *)&acc[5], value); /* an idle gap of an hour squares past 2**63 */
    if (value < acc[3]) acc[3] = value;
    if (value > acc[4]) acc[4] = value;
}

/* Raw TCP window field, read from the captured IP bytes (-1 when not captured). */
static int64_t window(const struct ntds_meter *m, const void *packet, int64_t transport) {
    const struct ntds_layout *L = &m->layout;
    int64_t off = (int64_t)AT(uint16_t, packet, L->ip_size) - transport + 14;
    if (off < 0 || (int64_t)AT(uint16_t, packet, L->ip_content_len) < off + 2) return -1;
    const uint8_t *content = AT(const uint8_t *, packet, L->ip_content);
    return ((int64_t)content[off] << 8) | content[off + 1];
}

static void fin_seen(struct ntds_flow *s, int fwd) {
    if (fwd) s->fin_f = 1;
    else s->fin_b = 1;
    s->last_fin_fwd = (uint8_t)fwd;
}

/* Active/Idle bookkeeping of spec 3.3. */
static void activity(const struct ntds_meter *m, struct ntds_flow *s, int64_t t) {
    if (t - s->end_active > m->profile.activity_timeout_us) {
        int64_t span = s->end_active - s->start_active;
        if (span > 0) accumulate(s->active, span);
        accumulate(s->idle, t - s->end_active);
        s->start_active = s->end_active = t;
    } else {
        s->end_active = t;
    }
}

/* Bulk state machine of spec 3.1 for one payload packet of direction d. */
static void bulk(const struct ntds_meter *m, struct ntds_direction *d, struct ntds_direction *other, int64_t t,
                 int64_t length) {
    int64_t least = m->profile.bulk_min_packets;
    other->cand_n = 0;
    if (d->cand_n == 0 || t - d->cand_last > m->profile.bulk_gap_us) {
        d->cand_n = 1;
        d->cand_bytes = length;
        d->cand_start = d->cand_last = t;
        return;
    }
    d->cand_n += 1;
    d->cand_bytes += length;
    if (d->cand_n == least) {
        d->bulk_n += 1;
        d->bulk_pkts += least;
        d->bulk_bytes += d->cand_bytes;
        d->bulk_dur += t - d->cand_start;
    } else if (d->cand_n > least) {
        d->bulk_pkts += 1;
        d->bulk_bytes += length;
        d->bulk_dur += t - d->cand_last;
    }
    d->cand_last = t;
}

/* Add one packet to the running statistics; returns its length L. */
static int64_t add_packet(const struct ntds_meter *m, struct ntds_flow *s, const void *packet, int64_t t, int fwd,
                          int first) {
    const struct ntds_layout *L = &m->layout;
    const struct ntds_profile *p = &m->profile;
    int64_t transport = AT(uint16_t, packet, L->transport_size);
    int64_t length, header;
    if (transport && s->l4) { /* 0: header not parseable (too short), NFStream gives no ports or flags */
        length = AT(uint16_t, packet, L->payload_size);
        s->payload += length;
        header = transport - length;
        if (p->count_ethernet_padding) {
            int64_t trailer = (int64_t)AT(uint16_t, packet, L->ip_content_len) - AT(uint16_t, packet, L->ip_size);
            if (trailer > 0) length += trailer;
        }
    } else {
        header = length = 0;
    }
    struct ntds_direction *d = fwd ? &s->f : &s->b;
    if (!first) {
        int64_t gap = t - s->last_t;
        add_square(&s->iat_sq_lo, &s->iat_sq_hi, gap);
        if (gap < s->iat_min) s->iat_min = gap;
        if (gap > s->iat_max) s->iat_max = gap;
        if (gap > p->subflow_gap_us) s->subflows += 1;
    }
    s->last_t = t;
    s->n += 1;
    int64_t dn = d->n;
    if (dn) {
        int64_t gap = t - d->last_t;
        add_square(&d->iat_sq_lo, &d->iat_sq_hi, gap);
        if (gap < d->iat_min) d->iat_min = gap;
        if (gap > d->iat_max) d->iat_max = gap;
        if (length && !first) d->data_pkts += 1;
    } else {
        d->first_t = t;
        if (length && !first && fwd) d->data_pkts += 1;
    }
    d->last_t = t;
    d->n = dn + 1;
    if (length) {
        d->bytes += length;
        d->sq += length * length;
        if (length > d->max) d->max = length;
    }
    if (length < d->min) d->min = length;
    d->hdr += header;
    if (header < d->min_hdr) d->min_hdr = header;
    if (s->tcp) {
        if (FLAG(m, packet, rst_bit)) s->rst = 1;
        if (first) /* spec 3, column 73: W_1, the flow's first packet, whatever its direction */
            s->f.win_first = transport ? window(m, packet, transport) : -1;
        if (p->last_backward_window && !fwd)
            d->win_last = transport ? window(m, packet, transport) : -1;
        else if (!dn && !fwd)
            d->win_first = transport ? window(m, packet, transport) : -1;
        if (!p->first_packet_flags_only) {
            int psh = FLAG(m, packet, psh_bit), urg = FLAG(m, packet, urg_bit);
            s->flags[0] += FLAG(m, packet, fin_bit);
            s->flags[1] += FLAG(m, packet, syn_bit);
            s->flags[2] += FLAG(m, packet, rst_bit);
            s->flags[3] += psh;
            s->flags[4] += FLAG(m, packet, ack_bit);
            s->flags[5] += urg;
            s->flags[6] += FLAG(m, packet, cwr_bit);
            s->flags[7] += FLAG(m, packet, ece_bit);
            d->psh += psh;
            d->urg += urg;
        } else if (first) { /* spec 3, columns 37-40: the first packet's PSH/URG, counted forward */
            s->f.psh = FLAG(m, packet, psh_bit);
            s->f.urg = FLAG(m, packet, urg_bit);
        }
    }
    if (p->bulk_and_subflows && length) bulk(m, d, fwd ? &s->b : &s->f, t, length);
    return length;
}

static void init_direction(struct ntds_direction *d) {
    memset(d, 0, sizeof(*d));
    d->min = d->min_hdr = d->iat_min = BIG;
    d->win_first = d->win_last = -1;
}

/* The flow's first packet. s must be zeroed (cffi's ffi.new is); fwd_code as decided in Python. */
void ntds_start(struct ntds_meter *m, struct ntds_flow *s, void *packet, int protocol, int fwd_code) {
    const struct ntds_layout *L = &m->layout;
    uint64_t clock = AT(uint64_t, packet, L->time);
    s->first_ms = engine_ms(ntds_packet_time(packet, clock)); /* the packet's own time, not the loop's clock */
    s->tcp = protocol == 6;
    s->l4 = s->tcp || protocol == 17;
    s->fwd_code = (int8_t)fwd_code;
    s->iat_min = BIG;
    s->active[3] = s->idle[3] = BIG;
    init_direction(&s->f);
    init_direction(&s->b);
    s->subflows = 1;
    s->first_flags[0] = FLAG(m, packet, fin_bit);
    s->first_flags[1] = FLAG(m, packet, syn_bit);
    s->first_flags[2] = FLAG(m, packet, rst_bit);
    s->first_flags[3] = FLAG(m, packet, psh_bit);
    s->first_flags[4] = FLAG(m, packet, ack_bit);
    s->first_flags[5] = FLAG(m, packet, urg_bit);
    s->first_flags[6] = FLAG(m, packet, cwr_bit);
    s->first_flags[7] = FLAG(m, packet, ece_bit);
    s->first_fwd = fwd_code != 1;
    if (s->first_flags[0]) fin_seen(s, s->first_fwd);
    /* Does this flow start a conversation (for "unanswered" in the summaries)? A TCP flow
     * only if it begins with a bare SYN: FIN/ACK leftovers of a split flow do not. */
    s->opens = !s->tcp || (s->first_flags[1] && !s->first_flags[4]);
    s->first_len = add_packet(m, s, packet, 0, s->first_fwd, 1);
    m->now_ms = engine_ms(clock);
}

/* A later packet (the engine has set its direction). Returns 1 when the flow ends with it. */
int ntds_add(struct ntds_meter *m, struct ntds_flow *s, void *packet) {
    const struct ntds_layout *L = &m->layout;
    uint64_t clock = AT(uint64_t, packet, L->time);
    m->now_ms = engine_ms(clock); /* the meter's clock: the newest time seen, as NFStream's flow table keeps it */
    /* The packet's own time, never before the flow's previous packet (a flow's times do not go backwards).
     * NFStream ends a flow 120 s after its first packet on its clock, which is never behind: small. */
    int64_t t = (int64_t)((uint64_t)engine_ms(ntds_packet_time(packet, clock)) - (uint64_t)s->first_ms) * 1000;
    if (t < s->last_t) t = s->last_t;
    int fwd = s->fwd_code < 0 || AT(uint8_t, packet, L->direction) == s->fwd_code;
    if (m->profile.close_on_first_fin) {
        if (FLAG(m, packet, fin_bit)) {
            /* Java-2017: the FIN packet is added, then the flow is written (no Active/Idle
             * update for it); the next packet opens an appendix flow. */
            add_packet(m, s, packet, t, fwd, 0);
            s->end = 1;
            return 1;
        }
    } else {
        /* RST ends the flow; so does the ACK that answers the last FIN once both sides sent one. */
        int rst = FLAG(m, packet, rst_bit);
        int closing = rst || (s->fin_f && s->fin_b && FLAG(m, packet, ack_bit) && fwd != s->last_fin_fwd);
        if (FLAG(m, packet, fin_bit)) fin_seen(s, fwd);
        if (closing) {
            activity(m, s, t);
            add_packet(m, s, packet, t, fwd, 0);
            s->end = rst ? 2 : 3;
            return 1;
        }
    }
    activity(m, s, t);
    add_packet(m, s, packet, t, fwd, 0);
    return 0;
}
