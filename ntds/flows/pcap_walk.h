/* A classic pcap file's record headers, walked in C (ntds/flows/captures.py).
 *
 * Read by cffi's cdef as it stands: no preprocessor lines here. */

enum ntds_walk { NTDS_WALK_MORE, NTDS_WALK_END, NTDS_WALK_HEADER_CUT, NTDS_WALK_TOO_LONG, NTDS_WALK_ZERO,
                 NTDS_WALK_PACKET_CUT };

struct ntds_walk_state {
    int64_t off;     /* file offset of the next record header */
    int64_t n;       /* records walked */
    int64_t caplen;  /* captured length of the record the walk stopped at */
};

int ntds_pcap_walk(const char *chunk, int64_t chunk_off, int64_t chunk_len, int64_t size, int big_endian,
                   int64_t max_record, struct ntds_walk_state *w);
