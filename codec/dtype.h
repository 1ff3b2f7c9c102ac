/*
 * dtype.h - element types of torch storages and numpy arrays.
 *
 * One table maps each torch dtype to its legacy storage class name
 * (torch.FloatStorage, ...), its element size and the .npy descr used for
 * its tensor file.  dtypes numpy lacks (bfloat16, the float8 kinds, the
 * quantized ones) are written as raw void items "|V<itemsize>" and named
 * in meta.json.  numpy arrays keep numpy's own typestr.
 */
#ifndef PF_DTYPE_H
#define PF_DTYPE_H

#include <stdbool.h>
#include <stddef.h>

typedef enum pf_dtype {
	PF_DT_NONE = 0,
	PF_DT_F64, PF_DT_F32, PF_DT_F16, PF_DT_BF16,
	PF_DT_I64, PF_DT_I32, PF_DT_I16, PF_DT_I8, PF_DT_U8, PF_DT_BOOL,
	PF_DT_C128, PF_DT_C64, PF_DT_C32,
	PF_DT_QINT8, PF_DT_QUINT8, PF_DT_QINT32, PF_DT_QUINT4X2, PF_DT_QUINT2X4,
	PF_DT_F8_E5M2, PF_DT_F8_E4M3FN, PF_DT_F8_E5M2FNUZ, PF_DT_F8_E4M3FNUZ,
	PF_DT_U16, PF_DT_U32, PF_DT_U64,
	PF_DT_NUMPY, /* a numpy array: the element type is its typestr */
	PF_DT_COUNT
} pf_dtype;

typedef struct pf_dtype_info {
	const char *name;         /* torch name: "float32" */
	const char *storage;      /* legacy storage class: "FloatStorage", or NULL */
	unsigned itemsize;
	const char *npy_descr;    /* "<f4"; "|V2" where numpy has no such type */
} pf_dtype_info;

const pf_dtype_info *pf_dtype_get(pf_dtype dt);

/* dtype of a storage class name such as "FloatStorage" (module ignored, as
 * torch's find_class does); PF_DT_NONE if unknown. */
pf_dtype pf_dtype_from_storage(const char *name);

/* dtype of a torch dtype global such as torch.float32 ("float32"). */
pf_dtype pf_dtype_from_name(const char *name);

/*
 * Check a numpy typestr ("<f8", "|b1", ">i4", "<U5", "|V16", "f4") and give
 * its item size and the normalised descr (byte-order char added: '|' for
 * one-byte and void/bytes kinds, '<' where none was given).  Returns false
 * for object ('O') and anything unparsable.  *name gets numpy's
 * dtype.name ("float64", "int32", "bool", "complex128", "bytes40"...)
 * written into name_buf.
 */
bool pf_numpy_typestr(const char *typestr, size_t len, unsigned *itemsize,
		      char *descr, size_t descr_cap, char *name_buf, size_t name_cap);

#endif
