/* The meter's per-packet capture bookkeeping: the stop switch, damaged files read up to their last intact
 * record, and the shared packet counter, in front of NFStream's capture_next.
 *
 * NFStream's meter loop calls capture_next once per packet; a Python function standing in front of it cost
 * as much as a tenth of the meter's time. The loop, the engine and this state live in one meter process
 * (forked), so the state is one static structure. Pacing a file at its recorded speed stays in Python.
 */

#include <pthread.h>
#include <stdint.h>

#include "capture_next.h"
#include "packet_ring.h"

#define END_OF_CAPTURE (-2)
#define NO_LIMIT ((int64_t)1 << 62)

typedef int (*capture_next_fn)(void *, void *, int, int, uint64_t, int);
typedef void (*breakloop_fn)(void *);

static struct ntds_capture state = {.file = -1, .limit = NO_LIMIT, .time_offset = -1};
static pthread_mutex_t closing = PTHREAD_MUTEX_INITIALIZER;

struct ntds_capture *ntds_capture_state(void) { return &state; }

static void publish(uint64_t root_idx) { ((volatile uint64_t *)state.read)[root_idx] = (uint64_t)state.total; }

/* Mark the capture handle as about to be closed (the meter closes it when it sees END_OF_CAPTURE). */
static int close_capture(uint64_t root_idx) {
    publish(root_idx);
    ntds_ring_close(); /* the ring's buffered packets are written before the meter ends */
    pthread_mutex_lock(&closing);
    state.closed = 1;
    pthread_mutex_unlock(&closing);
    return END_OF_CAPTURE;
}

int ntds_capture_next(void *capture, void *packet, int decode_tunnels, int n_roots, uint64_t root_idx, int mode) {
    if (capture != state.capture) { /* a new capture: the next file of a multi-file stream, or the interface */
        state.file += 1;
        state.records = 0;
        state.limit = state.file < state.n_limits && state.limits[state.file] >= 0 ? state.limits[state.file] : NO_LIMIT;
        pthread_mutex_lock(&closing);
        state.capture = capture;
        state.closed = 0;
        pthread_mutex_unlock(&closing);
    }
    state.calls += 1;
    if (!(state.calls & 63) && *(volatile int8_t *)state.stop) return close_capture(root_idx);
    if (state.records >= state.limit) return close_capture(root_idx); /* a damaged file: its last intact record was read */
    int ret = ((capture_next_fn)state.next)(capture, packet, decode_tunnels, n_roots, root_idx, mode);
    if (ret >= 0) {
        if (ret > 0 && state.time_offset >= 0) { /* the packet's own time, before the meter loop moves it (ntds_packet_time) */
            state.stamped = packet;
            state.stamped_time = *(const uint64_t *)((const char *)packet + state.time_offset);
        }
        state.records += 1;
        state.total += 1;
        if (!(state.total & 4095)) publish(root_idx);
        return ret;
    }
    if (ret == END_OF_CAPTURE) return close_capture(root_idx);
    return ret;
}

/* A meter waiting on a silent interface sits in libpcap's poll(), which signals do not end: pcap_breakloop
 * does. Never on a capture the meter is closing. Called from another thread of the meter. */
void ntds_capture_wake(void) {
    pthread_mutex_lock(&closing);
    if (state.capture && !state.closed) ((breakloop_fn)state.breakloop)(state.capture);
    pthread_mutex_unlock(&closing);
}

/* A packet's own capture time. NFStream's meter loop gives a packet whose time goes backwards the newest time
 * it has seen (its flow table's clock, `clock` here), so that a capture merged from several clocks would
 * stamp a flow lying wholly in an earlier stretch with a later time and a duration of 0. The feature step
 * reads the packet's own time instead, kept when capture_next filled the packet; any other packet (one not
 * read through this capture_next) has only its clock. */
uint64_t ntds_packet_time(const void *packet, uint64_t clock) {
    return packet == state.stamped ? state.stamped_time : clock;
}
