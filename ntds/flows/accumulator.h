/* The per-flow state of the 87 CICFlowMeter features, shared by the C accumulator and cffi.
 *
 * Read by cffi's cdef as it stands: no preprocessor lines here. Times are integer
 * microseconds from the flow's first packet (the first packet's own millisecond
 * time is kept beside them), so every sum stays far inside 64 bits: NFStream ends
 * a flow 120 s after its first packet. Only squared gaps get 128 bits (lo, hi):
 * gaps may go backwards inside those 120 s, and squares of them add up.
 */

struct ntds_layout {
    /* Where NFStream's packet structure keeps each field: byte offsets, and bit
     * positions for the flag bits, filled in at run time from NFStream's own
     * cffi type (ntds/flows/engine.py), so no NFStream layout is compiled in. */
    int direction, time, transport_size, payload_size, ip_size, ip_content_len, ip_content, flags;
    int src_ip, dst_ip, src_port, dst_port, protocol, vlan_id, tunnel_id;
    int fin_bit, syn_bit, rst_bit, psh_bit, ack_bit, urg_bit, cwr_bit, ece_bit;
};

struct ntds_profile {
    /* The switches of ntds/flows/profiles.py the per-packet step reads. */
    int count_ethernet_padding, last_backward_window, first_packet_flags_only, bulk_and_subflows;
    int close_on_first_fin;
    int64_t activity_timeout_us, subflow_gap_us, bulk_gap_us, bulk_min_packets;
};

struct ntds_meter {
    struct ntds_layout layout;
    struct ntds_profile profile;
    int64_t now_ms;  /* time of the newest packet this meter has seen */
};

struct ntds_direction {
    int64_t n, bytes, sq, min, max, hdr, min_hdr;
    int64_t first_t, last_t, iat_min, iat_max;
    uint64_t iat_sq_lo, iat_sq_hi;
    int64_t data_pkts, psh, urg, win_first, win_last;
    int64_t cand_n, cand_bytes, cand_start, cand_last;
    int64_t bulk_n, bulk_pkts, bulk_bytes, bulk_dur;
};

struct ntds_payloads {
    /* What the host detectors read inside a few protocols' payloads (ntds/detect/hosts, dns.py and icmp.py):
     * the DNS question and answers of a flow on port 53, and what its ICMP packets carry. */
    int32_t dns_qtype, dns_rcode;  /* the first question's type and the last response's code; 0 and -1: none */
    int64_t dns_queries, dns_answers, dns_reply_max;  /* answer records in responses; the largest response */
    int64_t dns_names, dns_encoded, dns_name_chars;  /* names asked in turn under the first name's last two
                                                      * labels; those with 24+ characters below them; their sum */
    int64_t dns_data_types;  /* questions for record types that carry data: TXT, NULL, CNAME, MX, ANY, private */
    int64_t echo_requests, echo_replies, unmatched;  /* replies beyond the other side's requests */
    int64_t carried, carried_bytes;  /* ICMP payloads that are no ping fill (data), and their bytes */
    int64_t echo_min, echo_max;  /* echo payload sizes, bytes */
};

struct ntds_flow {
    int64_t first_ms;  /* the first packet's time, ms since the epoch (2038 wrap undone) */
    int64_t last_t, n, iat_min, iat_max;
    uint64_t iat_sq_lo, iat_sq_hi;
    int64_t first_len, start_active, end_active, subflows, payload;
    int64_t active[6];  /* count, sum, sum of squares (low 64 bits), min, max, sum of squares (high 64 bits) */
    int64_t idle[6];
    int64_t flags[8];  /* FIN, SYN, RST, PSH, ACK, URG, CWR, ECE packet counts */
    uint8_t first_flags[8];
    struct ntds_direction f, b;
    int8_t fwd_code;  /* NFStream direction that counts as forward; -1: every packet */
    uint8_t tcp, l4, first_fwd, fin_f, fin_b, last_fin_fwd, opens, rst, evicted;
    uint8_t end;  /* 0 open, 1 FIN rule, 2 RST, 3 both FINs and the closing ACK */
    uint8_t proto, dns;  /* IP protocol; 1 when a UDP port is 53 (DNS) */
    uint64_t dns_tail, dns_last;  /* hashes of the first name's last two labels and of the last name asked */
    int64_t checkins;  /* requests of the flow's opener that start a burst after a quiet second (polls) */
    int32_t checkin_ms[16];  /* the first 16 of them, ms after the flow's first packet */
    int64_t echo_dir[4];  /* echo requests forward, replies forward, requests backward, replies backward */
    struct ntds_payloads p;
};

void ntds_start(struct ntds_meter *meter, struct ntds_flow *s, void *packet, int protocol, int fwd_code);
int ntds_add(struct ntds_meter *meter, struct ntds_flow *s, void *packet);
