/* The meter's capture loop bookkeeping, in front of NFStream's own capture_next (ntds/flows/engine.py).
 *
 * Read by cffi's cdef as it stands: no preprocessor lines here. */

struct ntds_capture {
    uintptr_t next;       /* NFStream's capture_next, called through */
    uintptr_t breakloop;  /* libpcap's pcap_breakloop, from the library NFStream's engine links */
    uintptr_t stop;       /* address of the shared stop switch (one byte) */
    uintptr_t read;       /* address of this streamer's shared packet counters (one uint64 per meter) */
    int64_t *limits;      /* per input file: read at most this many records; -1: the whole file */
    int64_t n_limits;
    void *capture;        /* the capture being read (files are read one after the other) */
    int64_t file, records, limit, total, calls;
    int closed;
    int64_t time_offset;  /* where NFStream's packet structure keeps the packet's time */
    const void *stamped;  /* the packet capture_next filled last, and its own time: the meter loop then */
    uint64_t stamped_time;  /* moves a time that goes backwards up to the newest it has seen */
};

struct ntds_capture *ntds_capture_state(void);
int ntds_capture_next(void *capture, void *packet, int decode_tunnels, int n_roots, uint64_t root_idx, int mode);
void ntds_capture_wake(void);
uint64_t ntds_packet_time(const void *packet, uint64_t clock);
