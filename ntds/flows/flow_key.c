/* The key NFStream's meter files a packet's flow under: its 7-tuple with the two ends in a fixed order, so
 * both directions find the same flow. NFStream builds it in Python from a dozen reads of the packet
 * structure on every packet; here it is 48 bytes written in one call. The ends are ordered exactly as
 * NFStream orders them (the address halves compared high word first, then the ports), so packets are
 * grouped into flows exactly as NFStream groups them.
 */

#include <stdint.h>
#include <string.h>

#include "accumulator.h"
#include "flow_key.h"

#define AT(type, packet, offset) (*(const type *)((const char *)(packet) + (offset)))

void ntds_flow_key(const struct ntds_meter *m, const void *packet, char *key) {
    const struct ntds_layout *L = &m->layout;
    const uint64_t *src = &AT(uint64_t, packet, L->src_ip), *dst = &AT(uint64_t, packet, L->dst_ip);
    uint16_t sport = AT(uint16_t, packet, L->src_port), dport = AT(uint16_t, packet, L->dst_port);
    int src_first;
    if (src[1] != dst[1]) src_first = src[1] < dst[1];
    else if (src[0] != dst[0]) src_first = src[0] < dst[0];
    else src_first = sport <= dport;
    const uint64_t *lo = src_first ? src : dst, *hi = src_first ? dst : src;
    uint16_t lo_port = src_first ? sport : dport, hi_port = src_first ? dport : sport;
    memset(key, 0, 48);
    memcpy(key, lo, 16);
    memcpy(key + 16, hi, 16);
    memcpy(key + 32, &lo_port, 2);
    memcpy(key + 34, &hi_port, 2);
    key[36] = (char)AT(uint8_t, packet, L->protocol);
    memcpy(key + 38, &AT(uint16_t, packet, L->vlan_id), 2);
    memcpy(key + 40, &AT(uint32_t, packet, L->tunnel_id), 4);
}
