/* The key of NFStream's flow table, made in C (ntds/flows/engine.py).
 *
 * Read by cffi's cdef as it stands: no preprocessor lines here. */

void ntds_flow_key(const struct ntds_meter *meter, const void *packet, char *key);
