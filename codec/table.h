/*
 * table.h - growable arrays: the one way the codec (and fs/) grows a
 * malloc'd array of items.
 *
 * pf_table_grow() makes room for `need` items in *items (capacity *cap, in
 * items of `size` bytes): the capacity doubles from 16 until it fits.
 * Counts past UINT32_MAX / 2 are PF_E_LIMIT, a byte size that does not fit
 * in size_t or a failed realloc PF_E_NOMEM; *items and *cap are then left
 * as they were.
 */
#ifndef PF_TABLE_H
#define PF_TABLE_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"

int pf_table_grow(void **items, uint32_t *cap, uint32_t need, size_t size, pf_error *err);

#endif
