/* The packet ring's writer, in each meter process: every frame libpcap hands the meter, as captured, into pcap
 * files (sensor/evidence/ring.py names, prunes and reads them; ntds/flows/engine.py sets this up).
 *
 * Read by cffi's cdef as it stands: no preprocessor lines here. */

struct ntds_ring {
    int enabled;
    int meter;              /* this meter's id in file names (its process id) */
    int64_t file_bytes;     /* a file is closed at this size and the next one begun */
    uintptr_t counters;     /* three shared uint64: packets written, bytes written, failed writes */
    uintptr_t datalink;     /* libpcap's pcap_datalink, pcap_snapshot, pcap_get_tstamp_precision */
    uintptr_t snapshot;
    uintptr_t precision;
    char folder[4000];
};

struct ntds_ring *ntds_ring_settings(void);
void ntds_ring_record(void *capture, const void *header, const uint8_t *data);
void ntds_ring_idle(void);
void ntds_ring_close(void);
