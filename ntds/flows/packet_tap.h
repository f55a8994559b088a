/* A stand-in for libpcap's pcap_next_ex inside NFStream's engine library: frames are fixed up before the
 * engine parses them (ntds/flows/packet_tap.c, installed per meter process by ntds/flows/engine.py).
 *
 * Read by cffi's cdef as it stands: no preprocessor lines here. */

struct ntds_tap_counts {
    uint64_t ip_length_filled;         /* IPv4 total length 0 (segmentation offload): taken from the frame */
    uint64_t fabricpath_decapsulated;  /* EtherType 0x8903: the inner Ethernet frame was handed on */
    uint64_t fabricpath_skipped;       /* EtherType 0x8903 with no inner frame to hand on: ignored */
};

int ntds_tap_install(uintptr_t inside, char *error, int error_size);
void ntds_tap_count_into(uintptr_t counts);
int ntds_tap_fix(int dlt, const uint8_t *data, uint32_t caplen, uint32_t len, const uint8_t **data_out,
                 uint32_t *caplen_out, uint32_t *len_out);
