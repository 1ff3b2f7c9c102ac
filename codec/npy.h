/*
 * npy.h - the NumPy .npy file header (format 1.0, 2.0 when needed).
 *
 * A tensor file is this header followed by the tensor's logical contents.
 * The header is what numpy.save writes: magic "\x93NUMPY", version, a
 * little-endian header length (u16 for 1.0, u32 for 2.0), then a Python
 * dict literal {'descr': ..., 'fortran_order': ..., 'shape': (...), }
 * padded with spaces and ended by '\n' so that the data starts at a
 * multiple of 64 bytes.  Version 2.0 is used only when the dict does not
 * fit the 1.0 u16 length.
 */
#ifndef PF_NPY_H
#define PF_NPY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"

#define PF_NPY_MAX_DIMS 64
#define PF_NPY_DESCR_MAX 32

typedef struct pf_npy_info {
	char descr[PF_NPY_DESCR_MAX]; /* e.g. "<f4", "|b1", "|V2" */
	bool fortran;
	unsigned ndim;
	int64_t shape[PF_NPY_MAX_DIMS];
	uint64_t data_off;            /* header length = offset of the first data byte */
} pf_npy_info;

/*
 * Write the header into buf (at most cap bytes) and set *out_len to its
 * length.  With buf == NULL only *out_len is computed.  Fails with
 * PF_E_LIMIT when ndim > PF_NPY_MAX_DIMS or a dim is negative, and
 * PF_E_FORMAT when cap is too small.
 */
int pf_npy_header(char *buf, size_t cap, size_t *out_len, const char *descr,
		  const int64_t *shape, unsigned ndim, bool fortran, pf_error *err);

/*
 * Parse a header as numpy.lib.format.read_array_header_* accepts it (any
 * key order, any whitespace, versions 1.0, 2.0 and 3.0), from buf[0..len).
 * Fails with PF_E_TRUNCATED when more bytes are needed, PF_E_FORMAT
 * otherwise.
 */
int pf_npy_parse(const uint8_t *buf, size_t len, pf_npy_info *out, pf_error *err);

#endif
