/* The numeric feature columns of a finished flow, from its running sums (ntds/flows/features.py `finalize`
 * is the reference, and computes a row itself whenever this code declines). */

struct ntds_columns_profile {
    /* The switches of ntds/flows/profiles.py that change the arithmetic of the columns. */
    int duplicate_first_length, first_packet_flags_only, permuted_flag_columns, bulk_and_subflows;
    int last_backward_window;
};

union ntds_value {
    int64_t i;
    double f;
};

extern const char ntds_column_kinds[];
/* One letter per numeric column, Flow.Duration .. Idle.Min in order: 'i' an integer, 'f' a float; the row
 * holds them in that order, eight bytes each (Python reads it with one struct.unpack). */

int ntds_columns(const struct ntds_flow *s, const struct ntds_columns_profile *p, union ntds_value *row);
/* 0 when every column was computed exactly as Python computes it; 1 when some division had an operand of 2^53
 * or more (Python's int/int is correctly rounded for any size; a double division only below 2^53), or a value
 * overflowed: the caller then computes the row in Python. */
