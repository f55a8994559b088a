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

/* -- inside payloads: what the host detectors read of DNS and ICMP (struct ntds_payloads) -- */

/* Offset of the transport header in the captured IP bytes, or -1 (the IP size is the whole packet's, IPv6 too,
 * as window() reads it). */
static int64_t transport_offset(const struct ntds_meter *m, const void *packet) {
    const struct ntds_layout *L = &m->layout;
    int64_t len = AT(uint16_t, packet, L->ip_content_len);
    const uint8_t *c = AT(const uint8_t *, packet, L->ip_content);
    if (len < 1 || !c) return -1;
    int64_t off = (int64_t)AT(uint16_t, packet, L->ip_size) - AT(uint16_t, packet, L->transport_size);
    return off >= 0 && off < len ? off : -1;
}

static int be16(const uint8_t *c) { return (c[0] << 8) | c[1]; }

#define ENCODED_CHARS 24 /* characters below a name's registered domain that are more than a host name */

static int data_type(int qtype) { /* record types whose answers carry data: how tunnels download */
    return qtype == 16 || qtype == 10 || qtype == 5 || qtype == 15 || qtype == 255 || qtype >= 65280;
}

/* The question of a query: its type, and whether its name is new, under the flow's first name's last two
 * labels (the registered domain of most names), and how many characters it carries below them. */
static void dns_question(struct ntds_flow *s, const uint8_t *d, int64_t n, int query) {
    int64_t q = 12, chars = 0;
    int lens[128], labels = 0;
    uint64_t hash = 1469598103934665603ULL;
    while (q < n && labels < 128) {
        int len = d[q];
        if (len == 0 || (len & 0xC0) == 0xC0) {
            q += len ? 2 : 1;
            break;
        }
        if (len & 0xC0 || q + 1 + len > n) return; /* not a name, or not all captured */
        for (int i = 1; i <= len; i++) hash = (hash ^ (uint8_t)(d[q + i] | 0x20)) * 1099511628211ULL;
        hash = (hash ^ '.') * 1099511628211ULL;
        lens[labels++] = len;
        chars += len;
        q += 1 + len;
    }
    if (q + 2 > n) return;
    int qtype = be16(d + q);
    if (!s->p.dns_qtype) s->p.dns_qtype = qtype;
    if (!query) return;
    s->p.dns_data_types += data_type(qtype);
    /* the last two labels: hashed again from their start */
    uint64_t tail = 1469598103934665603ULL;
    int64_t at = q - (d[q - 1] == 0 ? 1 : 2), below = chars;
    if (labels >= 2 && d[q - 1] == 0) {
        int64_t start = 12;
        for (int i = 0; i < labels - 2; i++) start += 1 + lens[i];
        for (int64_t i = start; i < at; i++) tail = (tail ^ (uint8_t)(d[i] | 0x20)) * 1099511628211ULL;
        below = chars - lens[labels - 1] - lens[labels - 2];
    }
    if (!s->dns_tail) s->dns_tail = tail;
    if (hash == s->dns_last || tail != s->dns_tail) return;
    s->dns_last = hash;
    s->p.dns_names += 1;
    s->p.dns_name_chars += below;
    if (below >= ENCODED_CHARS) s->p.dns_encoded += 1;
}

/* One DNS message on UDP port 53: its question, and for a response its code, answers and size. */
static void dns_message(const struct ntds_meter *m, struct ntds_flow *s, const void *packet) {
    const struct ntds_layout *L = &m->layout;
    int64_t off = transport_offset(m, packet);
    if (off < 0) return;
    off += 8; /* the UDP header */
    int64_t n = (int64_t)AT(uint16_t, packet, L->ip_content_len) - off;
    if (n < 12) return;
    const uint8_t *d = AT(const uint8_t *, packet, L->ip_content) + off;
    int response = d[2] >> 7;
    if (be16(d + 4)) dns_question(s, d, n, !response);
    if (response) {
        s->p.dns_rcode = d[3] & 0x0F;
        s->p.dns_answers += be16(d + 6);
        int64_t size = AT(uint16_t, packet, L->payload_size);
        if (size > s->p.dns_reply_max) s->p.dns_reply_max = size;
    } else {
        s->p.dns_queries += 1;
    }
}

/* Do bytes [from, n) count up by one, or repeat a unit of at most 32 bytes (at least 8 bytes repeated)?
 * Fewer than 16 bytes are too few to carry anything worth judging. */
static int fill_from(const uint8_t *p, int64_t from, int64_t n) {
    int64_t tail = n - from;
    if (tail < 16) return 1;
    int64_t i = from + 1;
    while (i < n && p[i] == (uint8_t)(p[i - 1] + 1)) i++;
    if (i == n) return 1;
    for (int64_t unit = 1; unit <= 32 && unit <= tail - 8; unit++) {
        i = from + unit;
        while (i < n && p[i] == p[i - unit]) i++;
        if (i == n) return 1;
    }
    return 0;
}

/* Is an ICMP payload a ping's fill? Ping tools fill with bytes that count up (Linux, BSD, macOS), a repeated
 * unit (Windows' alphabet, zeros, `ping -p`), after at most a 16-byte binary timestamp. A short text padded
 * with zeros is a message in a fixed-size buffer: data, however empty the rest. */
static int ping_fill(const uint8_t *p, int64_t n) {
    int64_t text = 0;
    while (text < n && p[text] >= 0x20 && p[text] < 0x7F) text++;
    if (text >= 2 && text + 8 <= n) {
        int64_t i = text;
        while (i < n && !p[i]) i++;
        if (i == n) return 0;
    }
    return fill_from(p, 0, n) || fill_from(p, 8, n) || fill_from(p, 16, n);
}

/* One ICMP or ICMPv6 packet: echo requests and replies by direction, their sizes, and data carried. */
static void icmp_message(const struct ntds_meter *m, struct ntds_flow *s, const void *packet, int fwd) {
    const struct ntds_layout *L = &m->layout;
    int64_t off = transport_offset(m, packet);
    if (off < 0) return;
    const uint8_t *c = AT(const uint8_t *, packet, L->ip_content);
    int type = c[off], v6 = s->proto == 58;
    int64_t size = AT(uint16_t, packet, L->payload_size);
    int64_t n = (int64_t)AT(uint16_t, packet, L->ip_content_len) - off - 8; /* captured after the 8-byte header */
    if (n > size) n = size;
    if (n < 0) n = 0;
    int request = type == (v6 ? 128 : 8), reply = type == (v6 ? 129 : 0);
    int data;
    if (request || reply) {
        int64_t seen = s->echo_dir[0] + s->echo_dir[1] + s->echo_dir[2] + s->echo_dir[3];
        s->echo_dir[(fwd ? 0 : 2) + reply] += 1;
        if (!seen || size < s->p.echo_min) s->p.echo_min = size;
        if (size > s->p.echo_max) s->p.echo_max = size;
        data = 1;
    } else if (v6) { /* errors (1-4) quote a packet; 130-161 are neighbour discovery, MLD and the like */
        data = !(type >= 1 && type <= 4) && !(type >= 130 && type <= 161);
    } else { /* errors quote a packet; router discovery, redirects and timestamps have fixed contents */
        data = !(type == 3 || type == 4 || type == 5 || (type >= 9 && type <= 14));
    }
    if (data && n && !ping_fill(c + off + 8, n)) {
        s->p.carried += 1;
        s->p.carried_bytes += size;
    }
}

#define CHECKIN_GAP_US 1000000 /* quiet before a request that starts a check-in */
#define CHECKIN_BYTES 128      /* payload of a request: more than any keepalive carries */

/* A poll inside one long connection (an implant checking in over one QUIC or TCP session): a request of the
 * flow's opener, carrying more than a keepalive, after a quiet second or as its first request. */
static void checkin(const struct ntds_meter *m, struct ntds_flow *s, const void *packet, int64_t t, int64_t gap) {
    const struct ntds_layout *L = &m->layout;
    if (AT(uint8_t, packet, L->direction) != 0 || AT(uint16_t, packet, L->payload_size) < CHECKIN_BYTES) return;
    if (s->checkins && gap < CHECKIN_GAP_US) return;
    if (s->checkins < 16) s->checkin_ms[s->checkins] = (int32_t)(t / 1000);
    s->checkins += 1;
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
    if (s->l4) checkin(m, s, packet, t, first ? 0 : t - s->last_t);
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
    if (s->dns) dns_message(m, s, packet);
    else if (s->proto == 1 || s->proto == 58) icmp_message(m, s, packet, fwd);
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
    s->proto = (uint8_t)protocol;
    s->dns = protocol == 17 && (AT(uint16_t, packet, L->src_port) == 53 || AT(uint16_t, packet, L->dst_port) == 53);
    s->p.dns_rcode = -1;
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
