/* The packet ring's writer: every frame the meter's libpcap returns, as captured, into pcap files.
 *
 * Called from the stand-in for pcap_next_ex (packet_tap.c) with the frame exactly as libpcap returned it,
 * before any fixup, so a file holds the same bytes and timestamps as the wire. Records are gathered in a
 * buffer and written with write(2) when it fills, twice a second from a thread of the meter (whether the link
 * is busy or silent: libpcap may wait in poll() for good on a silent one), and when the capture closes: the ring
 * is never more than about half a second behind the wire. A file is closed at `file_bytes`, and the next packet begins the next one,
 * named for this meter and its first packet's time (ring-METER-SECONDS-NANOSECONDS.pcap): the name is the
 * ring's index by time.
 *
 * A write that fails (a full disk) never stops capture or metering: the file is closed where it is, the
 * failure counted (the sensor warns and reports it in health), and writing resumes with a new file ten
 * seconds of packet time later. A crash leaves at most a cut last record, which readers stop before.
 * Counters are added to shared memory once a second (atomic: the meters of one interface share them).
 */

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

#include "packet_ring.h"

#define BUFFER (1 << 20)
#define RETRY_S 10
#define MAGIC_US 0xA1B2C3D4u
#define MAGIC_NS 0xA1B23C4Du

struct ring_pkthdr { /* libpcap's struct pcap_pkthdr */
    struct timeval ts;
    uint32_t caplen;
    uint32_t len;
};

typedef int (*int_of_capture_fn)(void *);

static struct ntds_ring settings;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER; /* the meter's thread and its flusher (idle links) */
static int fd = -1;
static uint8_t buffer[BUFFER];
static size_t used;
static int64_t file_size, last_sec, retry_sec, pending_packets, pending_bytes;

struct ntds_ring *ntds_ring_settings(void) { return &settings; }

static void publish(void) {
    if (!settings.counters || !(pending_packets | pending_bytes)) return;
    uint64_t *c = (uint64_t *)settings.counters;
    __atomic_fetch_add(&c[0], (uint64_t)pending_packets, __ATOMIC_RELAXED);
    __atomic_fetch_add(&c[1], (uint64_t)pending_bytes, __ATOMIC_RELAXED);
    pending_packets = pending_bytes = 0;
}

static void failed(int64_t now_sec) {
    if (settings.counters) __atomic_fetch_add(&((uint64_t *)settings.counters)[2], 1, __ATOMIC_RELAXED);
    if (fd >= 0) close(fd);
    fd = -1;
    used = 0;
    retry_sec = now_sec + RETRY_S;
}

static void flush(int64_t now_sec) {
    size_t done = 0;
    while (done < used) {
        ssize_t n = write(fd, buffer + done, used - done);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            failed(now_sec);
            return;
        }
        done += (size_t)n;
    }
    used = 0;
    publish();
}

static int open_file(void *capture, const struct ring_pkthdr *h) {
    int nano = settings.precision && ((int_of_capture_fn)settings.precision)(capture) == 1;
    int64_t sub = nano ? (int64_t)h->ts.tv_usec : (int64_t)h->ts.tv_usec * 1000;
    char path[sizeof settings.folder + 64];
    snprintf(path, sizeof path, "%s/ring-%d-%010lld-%09lld.pcap", settings.folder, settings.meter,
             (long long)h->ts.tv_sec, (long long)sub);
    fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) return -1;
    uint32_t header[6] = {nano ? MAGIC_NS : MAGIC_US, 2 | (4u << 16), 0, 0, 262144, 1};
    header[4] = settings.snapshot ? (uint32_t)((int_of_capture_fn)settings.snapshot)(capture) : 262144;
    header[5] = settings.datalink ? (uint32_t)((int_of_capture_fn)settings.datalink)(capture) : 1;
    memcpy(buffer, header, sizeof header);
    used = sizeof header;
    file_size = sizeof header;
    return 0;
}

static void record(void *capture, const struct ring_pkthdr *h, const uint8_t *data) {
    int64_t sec = h->ts.tv_sec;
    if (fd < 0) {
        if (sec < retry_sec) return;
        if (open_file(capture, h) < 0) {
            failed(sec);
            return;
        }
    }
    size_t size = 16 + (size_t)h->caplen;
    if (used + size > BUFFER) flush(sec);
    if (fd < 0) return;
    uint32_t rec[4] = {(uint32_t)sec, (uint32_t)h->ts.tv_usec, h->caplen, h->len};
    memcpy(buffer + used, rec, 16);
    memcpy(buffer + used + 16, data, h->caplen);
    used += size;
    file_size += (int64_t)size;
    pending_packets += 1;
    pending_bytes += (int64_t)size;
    last_sec = sec;
    if (fd >= 0 && file_size >= settings.file_bytes) {
        flush(sec);
        if (fd >= 0) close(fd);
        fd = -1;
    }
}

void ntds_ring_record(void *capture, const void *header, const uint8_t *data) {
    if (!settings.enabled) return;
    pthread_mutex_lock(&lock);
    record(capture, header, data);
    pthread_mutex_unlock(&lock);
}

/* Called twice a second by a thread of the meter: a busy link's buffer reaches the disk within half a second,
 * and a silent one's too (libpcap may then block in poll() for good: TPACKET_V3 hands over only full blocks). */
void ntds_ring_idle(void) {
    if (!settings.enabled) return;
    pthread_mutex_lock(&lock);
    if (fd >= 0 && used) flush(last_sec);
    pthread_mutex_unlock(&lock);
}

void ntds_ring_close(void) {
    if (!settings.enabled) return;
    pthread_mutex_lock(&lock);
    if (fd >= 0 && used) flush(last_sec);
    if (fd >= 0) close(fd);
    fd = -1;
    pthread_mutex_unlock(&lock);
}
