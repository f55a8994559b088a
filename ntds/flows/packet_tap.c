/* A stand-in for libpcap's pcap_next_ex inside NFStream's engine library, so frames the engine would drop or
 * misread are fixed up before it parses them.
 *
 * NFStream 6.6.0 parses frames in its C capture_next (a static packet_process), which gets each frame from
 * pcap_next_ex through the engine library's PLT. `ntds_tap_install` (called per meter process, after fork,
 * by ntds/flows/engine.py) finds that call's GOT slot by walking the loaded library's dynamic section
 * (DT_JMPREL, DT_PLTRELSZ, DT_SYMTAB, DT_STRTAB: the PLT relocation whose symbol is "pcap_next_ex", so it
 * works alike on x86_64 and aarch64) and points it here. Per frame the stand-in then
 *
 *   - hands the frame exactly as captured to the packet ring (packet_ring.c; a no-op unless it is on), then
 *   - an Ethernet frame with EtherType 0x8903 (Cisco FabricPath, MAC-in-MAC: 6 + 6 bytes of outer MAC,
 *     0x8903, 2 bytes of FTag/TTL) is handed on as its inner Ethernet frame; one too short to hold an
 *     inner Ethernet header (or holding another 0x8903) is handed on with a captured length of 0, which
 *     the engine ignores, and counted;
 *   - an IPv4 header right after the link header (Ethernet after any 802.1Q/802.1ad tags, Linux cooked,
 *     raw IP, NULL, PPP and Cisco HDLC) whose total length is 0 (segmentation offload on the capturing
 *     host: the NIC fills it in later) gets the length the captured frame implies (capped at 65,535).
 *
 * A fixed frame is a private copy with its own pcap_pkthdr: the capture buffer's bytes are never written.
 * The copy lives until the next call, as libpcap's own buffer does. Counts go to the meter's slot of
 * shared memory (`ntds_tap_count_into`), which the sensor reads.
 */

#define _GNU_SOURCE
#include <dlfcn.h>
#include <elf.h>
#include <link.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/time.h>
#include <unistd.h>

#include "packet_ring.h"
#include "packet_tap.h"

#define DLT_NULL 0
#define DLT_EN10MB 1
#define DLT_PPP 9
#define DLT_RAW 12
#define DLT_RAW_BSD 14
#define DLT_PPP_SERIAL 50
#define DLT_C_HDLC 104
#define DLT_LINUX_SLL 113
#define DLT_IPV4 228

#define ETH_FABRICPATH 0x8903
#define FABRICPATH_HEADER 16
#define ETH_HEADER 14
#define MAX_FRAME 262144 /* libpcap's MAXIMUM_SNAPLEN */

#if UINTPTR_MAX > 0xFFFFFFFFu
#define RELOC_SYMBOL(info) ELF64_R_SYM(info)
#else
#define RELOC_SYMBOL(info) ELF32_R_SYM(info)
#endif

struct pkthdr { /* libpcap's struct pcap_pkthdr */
    struct timeval ts;
    uint32_t caplen;
    uint32_t len;
};

typedef int (*next_ex_fn)(void *, struct pkthdr **, const uint8_t **);
typedef int (*datalink_fn)(void *);

static next_ex_fn real_next_ex;
static datalink_fn real_datalink;
static struct ntds_tap_counts scratch;
static struct ntds_tap_counts *counts = &scratch;
static struct pkthdr fixed_header;
static uint8_t fixed_frame[MAX_FRAME];

static inline uint16_t be16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static inline uint32_t be32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

void ntds_tap_count_into(uintptr_t where) { counts = where ? (struct ntds_tap_counts *)where : &scratch; }

/* The frame the engine should parse instead of (data, caplen, len), or 0: parse it as it is. */
int ntds_tap_fix(int dlt, const uint8_t *data, uint32_t caplen, uint32_t len, const uint8_t **data_out,
                 uint32_t *caplen_out, uint32_t *len_out) {
    uint32_t off;
    uint16_t type;
    int changed = 0;
    switch (dlt) {
    case DLT_EN10MB:
        if (caplen < ETH_HEADER) return 0;
        type = be16(data + 12);
        if (type == ETH_FABRICPATH) {
            if (caplen < FABRICPATH_HEADER + ETH_HEADER || be16(data + FABRICPATH_HEADER + 12) == ETH_FABRICPATH) {
                counts->fabricpath_skipped += 1;
                *data_out = data, *caplen_out = 0, *len_out = len;
                return 1;
            }
            counts->fabricpath_decapsulated += 1;
            data += FABRICPATH_HEADER;
            caplen -= FABRICPATH_HEADER;
            len = len >= FABRICPATH_HEADER + caplen ? len - FABRICPATH_HEADER : caplen;
            changed = 1;
            type = be16(data + 12);
        }
        off = ETH_HEADER;
        while ((type == 0x8100 || type == 0x88A8) && off + 4 <= caplen) {
            type = be16(data + off + 2);
            off += 4;
        }
        if (type != 0x0800) goto done;
        break;
    case DLT_LINUX_SLL:
        if (caplen < 16 || be16(data + 14) != 0x0800) goto done;
        off = 16;
        break;
    case DLT_RAW:
    case DLT_RAW_BSD:
    case DLT_IPV4:
        off = 0;
        break;
    case DLT_NULL:
        if (caplen < 4 || be32(data) != 2) goto done; /* read as the engine reads it */
        off = 4;
        break;
    case DLT_PPP_SERIAL:
    case DLT_PPP:
    case DLT_C_HDLC:
        if (caplen < 4) goto done;
        if (dlt == DLT_PPP_SERIAL || data[0] == 0x0F || data[0] == 0x8F) off = 4, type = be16(data + 2);
        else off = 2, type = be16(data);
        if (type != 0x0800 && type != 0x0021) goto done; /* Cisco HDLC's IPv4, PPP's IPv4 */
        break;
    default:
        goto done;
    }
    if (caplen >= off + 20) {
        const uint8_t *ip = data + off;
        uint32_t header = (ip[0] & 15u) * 4, available = caplen - off;
        if ((ip[0] >> 4) == 4 && ip[2] == 0 && ip[3] == 0 && header >= 20 && header <= available) {
            uint32_t total = available > 65535 ? 65535 : available;
            memcpy(fixed_frame, data, caplen); /* caplen <= MAX_FRAME: libpcap refuses longer records */
            fixed_frame[off + 2] = (uint8_t)(total >> 8);
            fixed_frame[off + 3] = (uint8_t)total;
            data = fixed_frame;
            changed = 1;
            counts->ip_length_filled += 1;
        }
    }
done:
    if (changed) *data_out = data, *caplen_out = caplen, *len_out = len;
    return changed;
}

/* The packet ring (packet_ring.c) gets every frame the real pcap_next_ex returns (rv 1, or rv 0 with a frame),
 * exactly as captured (header and bytes untouched), before any fixup; and a live timeout, to flush. */
static int tap_next_ex(void *capture, struct pkthdr **header, const uint8_t **data) {
    int rv = real_next_ex(capture, header, data);
    if (rv < 0 || *header == NULL || *data == NULL) { /* rv 0 with no frame: a live timeout */
        if (rv == 0) ntds_ring_idle();
        return rv;
    }
    ntds_ring_record(capture, *header, *data);
    const uint8_t *frame;
    uint32_t caplen, len;
    if (__builtin_expect(ntds_tap_fix(real_datalink(capture), *data, (*header)->caplen, (*header)->len, &frame,
                                      &caplen, &len), 0)) {
        fixed_header.ts = (*header)->ts;
        fixed_header.caplen = caplen;
        fixed_header.len = len;
        *header = &fixed_header;
        *data = frame;
    }
    return rv;
}

/* -- installing: the engine library's GOT slot of pcap_next_ex ------------------------------------------- */

struct object {
    uintptr_t inside, base;
    const char *name;
    const ElfW(Phdr) *phdr;
    int phnum, found;
};

static int find_object(struct dl_phdr_info *info, size_t size, void *arg) {
    struct object *o = arg;
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        uintptr_t start = info->dlpi_addr + ph->p_vaddr;
        if (ph->p_type == PT_LOAD && o->inside >= start && o->inside < start + ph->p_memsz) {
            o->base = info->dlpi_addr;
            o->name = info->dlpi_name;
            o->phdr = info->dlpi_phdr;
            o->phnum = info->dlpi_phnum;
            o->found = 1;
            return 1;
        }
    }
    return 0;
}

/* glibc relocates the dynamic section's addresses in place on most targets, not on all: take either. */
static uintptr_t dynamic_address(uintptr_t base, ElfW(Addr) value) { return value < base ? base + value : value; }

/* Point the GOT slot of pcap_next_ex in the library holding `inside` (an address in NFStream's engine) at the
 * stand-in. 0 on success (also when already installed in this process); else -1 and why in `error`. */
int ntds_tap_install(uintptr_t inside, char *error, int error_size) {
    struct object o = {.inside = inside};
    dl_iterate_phdr(find_object, &o);
    if (!o.found) return snprintf(error, error_size, "no loaded library holds address %#lx", (unsigned long)inside), -1;
    const char *name = o.name && o.name[0] ? o.name : "the main program";
    const ElfW(Dyn) *dyn = NULL;
    uintptr_t relro = 0, relro_end = 0;
    for (int i = 0; i < o.phnum; i++) {
        if (o.phdr[i].p_type == PT_DYNAMIC) dyn = (const ElfW(Dyn) *)(o.base + o.phdr[i].p_vaddr);
        if (o.phdr[i].p_type == PT_GNU_RELRO) {
            relro = o.base + o.phdr[i].p_vaddr;
            relro_end = relro + o.phdr[i].p_memsz;
        }
    }
    uintptr_t jmprel = 0, symtab = 0, strtab = 0;
    size_t pltrelsz = 0, strsz = 0;
    long pltrel = DT_RELA;
    for (; dyn && dyn->d_tag != DT_NULL; dyn++) {
        switch (dyn->d_tag) {
        case DT_JMPREL: jmprel = dynamic_address(o.base, dyn->d_un.d_ptr); break;
        case DT_PLTRELSZ: pltrelsz = dyn->d_un.d_val; break;
        case DT_PLTREL: pltrel = (long)dyn->d_un.d_val; break;
        case DT_SYMTAB: symtab = dynamic_address(o.base, dyn->d_un.d_ptr); break;
        case DT_STRTAB: strtab = dynamic_address(o.base, dyn->d_un.d_ptr); break;
        case DT_STRSZ: strsz = dyn->d_un.d_val; break;
        default: break;
        }
    }
    void **slot = NULL;
    if (jmprel && symtab && strtab) {
        size_t entry = pltrel == DT_REL ? sizeof(ElfW(Rel)) : sizeof(ElfW(Rela));
        for (size_t at = 0; at + entry <= pltrelsz; at += entry) {
            const ElfW(Rel) *r = (const ElfW(Rel) *)(jmprel + at); /* Rel and Rela begin alike */
            const ElfW(Sym) *sym = (const ElfW(Sym) *)symtab + RELOC_SYMBOL(r->r_info);
            if (sym->st_name < strsz && strcmp((const char *)strtab + sym->st_name, "pcap_next_ex") == 0) {
                slot = (void **)(o.base + r->r_offset);
                break;
            }
        }
    }
    if (!slot)
        return snprintf(error, error_size, "%s calls pcap_next_ex through no PLT slot (no JUMP_SLOT relocation)",
                        name), -1;
    if (*slot == (void *)tap_next_ex) return 0;
    void *library = o.name && o.name[0] ? dlopen(o.name, RTLD_LAZY | RTLD_NOLOAD) : dlopen(NULL, RTLD_LAZY);
    if (!library) return snprintf(error, error_size, "dlopen of %s: %s", name, dlerror()), -1;
    /* As the PLT would bind them: the library's own lookup scope. */
    next_ex_fn next = (next_ex_fn)dlsym(library, "pcap_next_ex");
    datalink_fn datalink = (datalink_fn)dlsym(library, "pcap_datalink");
    dlclose(library);
    if (!next || !datalink || next == tap_next_ex)
        return snprintf(error, error_size, "%s: pcap_next_ex or pcap_datalink not found", name), -1;
    real_next_ex = next;
    real_datalink = datalink;
    uintptr_t at = (uintptr_t)slot;
    if (at >= relro && at < relro_end) { /* RELRO made the GOT read-only after relocation */
        long page = sysconf(_SC_PAGESIZE);
        void *start = (void *)(at & ~(uintptr_t)(page - 1));
        if (mprotect(start, (size_t)page, PROT_READ | PROT_WRITE) != 0)
            return snprintf(error, error_size, "%s: cannot make the GOT writable", name), -1;
        __atomic_store_n(slot, (void *)tap_next_ex, __ATOMIC_SEQ_CST);
        mprotect(start, (size_t)page, PROT_READ);
    } else {
        __atomic_store_n(slot, (void *)tap_next_ex, __ATOMIC_SEQ_CST);
    }
    return 0;
}
