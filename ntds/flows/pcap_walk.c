/* Walks a classic pcap's record headers before the meter reads the file, so a damaged file is metered up
 * to its last intact record. In Python this walk was a serial pass costing about as much as a tenth of
 * metering the file; in C it is a small fraction of a second per million records.
 */

#include <stdint.h>

#include "pcap_walk.h"

/* Walk the records whose 16-byte headers lie in chunk (the file's bytes from chunk_off); a record's data
 * need not. Returns NTDS_WALK_MORE when the next header is past the chunk (read the file from w->off and
 * call again), NTDS_WALK_END at the end of the file, or what is wrong with the record at w->off. */
int ntds_pcap_walk(const char *chunk, int64_t chunk_off, int64_t chunk_len, int64_t size, int big_endian,
                   int64_t max_record, struct ntds_walk_state *w) {
    const uint8_t *buf = (const uint8_t *)chunk;
    int64_t off = w->off, n = w->n;
    int result = NTDS_WALK_END;
    while (off < size) {
        if (off + 16 > size) {
            result = NTDS_WALK_HEADER_CUT;
            break;
        }
        if (off + 16 > chunk_off + chunk_len) {
            result = NTDS_WALK_MORE;
            break;
        }
        const uint8_t *h = buf + (off - chunk_off) + 8; /* incl_len */
        int64_t caplen = big_endian ? ((int64_t)h[0] << 24 | h[1] << 16 | h[2] << 8 | h[3])
                                    : ((int64_t)h[3] << 24 | h[2] << 16 | h[1] << 8 | h[0]);
        w->caplen = caplen;
        if (caplen > max_record) {
            result = NTDS_WALK_TOO_LONG;
            break;
        }
        if (caplen == 0) { /* no capture tool writes these; a file of zeros (sparse, wiped) is all of them */
            result = NTDS_WALK_ZERO;
            break;
        }
        if (off + 16 + caplen > size) {
            result = NTDS_WALK_PACKET_CUT;
            break;
        }
        off += 16 + caplen;
        n += 1;
    }
    w->off = off;
    w->n = n;
    return result;
}
