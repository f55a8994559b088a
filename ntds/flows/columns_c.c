/* The numeric feature columns of a finished flow, computed as ntds/flows/features.py `finalize` computes them.
 *
 * Exactness: every value must equal Python's, bit for bit. Python divides integers exactly and rounds once
 * (int/int is correctly rounded); a double division of two integers below 2^53 is exact in its operands and
 * rounds once too, so it gives the same double. Larger operands make this code decline (return 1) and Python
 * does the row. Sums of squares are 128-bit, as in Python; conversions of int64 to double round to nearest in
 * both; sqrt is correctly rounded in both (IEEE 754). */

#include <math.h>
#include <stdint.h>

#include "accumulator.h"
#include "columns_c.h"

const char ntds_column_kinds[] =
    "iiiif"          /* duration, fwd packets, bwd packets, fwd bytes, bwd bytes (float, as the data set) */
    "iiff" "iiff"    /* fwd length max, min, mean, std; bwd the same */
    "ff"             /* bytes/s, packets/s */
    "fffi"           /* flow IAT mean, std, max, min (the min stays an integer) */
    "fffff" "fffff"  /* fwd IAT total, mean, std, max, min; bwd the same */
    "iiiiii"         /* fwd/bwd PSH, URG, header bytes */
    "ff"             /* fwd and bwd packets/s */
    "iifff"          /* length min, max, mean, std, variance */
    "iiiiiiii"       /* the eight flag counts */
    "ifffi"          /* down/up ratio, average packet size, fwd/bwd segment size avg, fwd header bytes again */
    "iiiiii"         /* bulk: fwd bytes, packets, rate; bwd the same */
    "iiii"           /* subflows */
    "iiii"           /* init windows fwd, bwd; fwd data packets, fwd min header */
    "ffff" "ffff";   /* active mean, std, max, min; idle the same */

#define BIG ((__int128)1 << 53)

struct out {
    union ntds_value *row;
    int n, declined;
};

static void put_i(struct out *o, int64_t v) { o->row[o->n++].i = v; }
static void put_f(struct out *o, double v) { o->row[o->n++].f = v; }

static double divide(struct out *o, __int128 a, __int128 b) {
    /* a / b as Python's int/int; b != 0. */
    if (a >= BIG || a <= -BIG || b >= BIG || b <= -BIG) o->declined = 1;
    return (double)(int64_t)a / (double)(int64_t)b;
}

static double mean(struct out *o, int64_t total, int64_t n) { return n ? divide(o, total, n) : 0.0; }

static double sample_var(struct out *o, int64_t n, __int128 total, unsigned __int128 sq) {
    if (n < 2) return 0.0;
    __int128 nsq, tt;
    if (sq > (unsigned __int128)(((__int128)1 << 126) - 1) || __builtin_mul_overflow((__int128)n, (__int128)sq, &nsq)
        || __builtin_mul_overflow(total, total, &tt)) {
        o->declined = 1;
        return 0.0;
    }
    if (nsq < tt) {  /* sums no flow can have: Python's sqrt of the negative variance raises, let it */
        o->declined = 1;
        return 0.0;
    }
    return divide(o, nsq - tt, (__int128)n * (n - 1));
}

static double stdev(struct out *o, int64_t n, __int128 total, unsigned __int128 sq) {
    return sqrt(sample_var(o, n, total, sq));
}

static unsigned __int128 wide(uint64_t hi, uint64_t lo) { return (unsigned __int128)hi << 64 | lo; }

static double rate(int64_t count, int64_t duration_us) {
    if (duration_us == 0) return count ? INFINITY : NAN;
    return (double)count / ((double)duration_us / 1e6);
}

static void iat(struct out *o, const struct ntds_direction *d) {
    int64_t gaps = d->n - 1;
    if (gaps < 1) {
        for (int i = 0; i < 5; i++) put_f(o, 0.0);
        return;
    }
    int64_t total;
    if (__builtin_sub_overflow(d->last_t, d->first_t, &total)) {
        o->declined = 1;
        total = 0;
    }
    put_f(o, (double)total);
    put_f(o, divide(o, total, gaps));
    put_f(o, stdev(o, gaps, total, wide(d->iat_sq_hi, d->iat_sq_lo)));
    put_f(o, (double)d->iat_max);
    put_f(o, (double)d->iat_min);
}

static void stats4(struct out *o, const int64_t *acc) {
    /* count, sum, sum of squares low 64 bits, min, max, sum of squares high 64 bits */
    int64_t n = acc[0], total = acc[1];
    if (!n) {
        for (int i = 0; i < 4; i++) put_f(o, 0.0);
        return;
    }
    put_f(o, divide(o, total, n));
    put_f(o, stdev(o, n, total, wide((uint64_t)acc[5], (uint64_t)acc[2])));
    put_f(o, (double)acc[4]);
    put_f(o, (double)acc[3]);
}

static void bulk_cols(struct out *o, const struct ntds_direction *d) {
    if (!d->bulk_n) {
        put_i(o, 0), put_i(o, 0), put_i(o, 0);
        return;
    }
    int64_t r = 0;
    if (d->bulk_dur) {
        double x = (double)d->bulk_bytes / ((double)d->bulk_dur / 1e6);
        if (!(x > -9.2e18 && x < 9.2e18)) o->declined = 1;
        else r = (int64_t)x;  /* truncation, as Python's int() */
    }
    put_i(o, d->bulk_bytes / d->bulk_n), put_i(o, d->bulk_pkts / d->bulk_n), put_i(o, r);
}

int ntds_columns(const struct ntds_flow *s, const struct ntds_columns_profile *p, union ntds_value *row) {
    struct out o = {row, 0, 0};
    const struct ntds_direction *f = &s->f, *b = &s->b;
    int64_t n = s->n, duration = s->last_t;
    int64_t total_bytes = f->bytes + b->bytes;
    __int128 total_sq = (__int128)f->sq + b->sq;
    int64_t n_len;
    __int128 len_sum, len_sq;
    double avg_size;
    if (n < 2 || f->n < 0 || b->n < 0 || f->bytes < 0 || b->bytes < 0 || f->sq < 0 || b->sq < 0) return 1;
    if (f->bulk_bytes < 0 || b->bulk_bytes < 0 || f->bulk_pkts < 0 || b->bulk_pkts < 0) return 1;
    if (p->duplicate_first_length) {
        n_len = n + 1;
        len_sum = (__int128)total_bytes + s->first_len;
        len_sq = total_sq + (__int128)s->first_len * s->first_len;
        avg_size = divide(&o, len_sum, n);
    } else {
        n_len = n, len_sum = total_bytes, len_sq = total_sq;
        avg_size = divide(&o, total_bytes, n);
    }
    if (len_sq < 0) return 1;
    double len_var = sample_var(&o, n_len, len_sum, (unsigned __int128)len_sq);

    put_i(&o, duration), put_i(&o, f->n), put_i(&o, b->n), put_i(&o, f->bytes), put_f(&o, (double)b->bytes);
    put_i(&o, f->n ? f->max : 0), put_i(&o, f->n ? f->min : 0);
    put_f(&o, mean(&o, f->bytes, f->n)), put_f(&o, stdev(&o, f->n, f->bytes, (unsigned __int128)(uint64_t)f->sq));
    put_i(&o, b->n ? b->max : 0), put_i(&o, b->n ? b->min : 0);
    put_f(&o, mean(&o, b->bytes, b->n)), put_f(&o, stdev(&o, b->n, b->bytes, (unsigned __int128)(uint64_t)b->sq));
    put_f(&o, rate(total_bytes, duration)), put_f(&o, rate(n, duration));

    int64_t gaps = n - 1;
    put_f(&o, divide(&o, duration, gaps));
    put_f(&o, stdev(&o, gaps, duration, wide(s->iat_sq_hi, s->iat_sq_lo)));
    put_f(&o, (double)s->iat_max), put_i(&o, s->iat_min);
    iat(&o, f), iat(&o, b);

    put_i(&o, f->psh), put_i(&o, b->psh), put_i(&o, f->urg), put_i(&o, b->urg), put_i(&o, f->hdr), put_i(&o, b->hdr);
    put_f(&o, duration ? (double)f->n / ((double)duration / 1e6) : 0.0);
    put_f(&o, duration ? (double)b->n / ((double)duration / 1e6) : 0.0);
    put_i(&o, f->min < b->min ? f->min : b->min), put_i(&o, f->max > b->max ? f->max : b->max);
    put_f(&o, divide(&o, len_sum, n_len)), put_f(&o, sqrt(len_var)), put_f(&o, len_var);

    int64_t fl[8];  /* FIN, SYN, RST, PSH, ACK, URG, CWR, ECE */
    for (int i = 0; i < 8; i++) fl[i] = p->first_packet_flags_only ? (s->tcp ? s->first_flags[i] : 0) : s->flags[i];
    static const int permuted[8] = {2, 3, 7, 1, 4, 0, 5, 6};  /* RST, PSH, ECE, SYN, ACK, FIN, URG, CWR */
    for (int i = 0; i < 8; i++) put_i(&o, fl[p->permuted_flag_columns ? permuted[i] : i]);

    put_i(&o, f->n ? b->n / f->n : 0);
    put_f(&o, avg_size);
    put_f(&o, mean(&o, f->bytes, f->n)), put_f(&o, mean(&o, b->bytes, b->n));
    put_i(&o, f->hdr);
    if (p->bulk_and_subflows) {
        bulk_cols(&o, f), bulk_cols(&o, b);
        int64_t k = s->subflows;
        if (k < 1) return 1;
        put_i(&o, f->n / k), put_i(&o, f->bytes / k), put_i(&o, b->n / k), put_i(&o, b->bytes / k);
    } else {
        for (int i = 0; i < 6; i++) put_i(&o, 0);
        put_i(&o, f->n), put_i(&o, f->bytes), put_i(&o, b->n), put_i(&o, b->bytes);
    }
    if (s->tcp) {
        put_i(&o, f->win_first), put_i(&o, p->last_backward_window ? b->win_last : b->win_first);
    } else {
        put_i(&o, -1), put_i(&o, -1);
    }
    put_i(&o, f->data_pkts), put_i(&o, f->n ? f->min_hdr : 0);
    stats4(&o, s->active), stats4(&o, s->idle);
    return o.declined;
}
