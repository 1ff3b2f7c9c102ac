/*
 * model.h - a saved model file as tensors, storages and an object graph.
 *
 * pf_model_open() recognises the container by content (formats.md §0):
 *   - "PK\3\4": a torch.save zip (data.pkl) or a TorchScript zip
 *     (constants.pkl; its data.pkl and constants.pkl are both read);
 *   - a first pickle whose value is the legacy magic number: legacy torch.save;
 *   - any other pickle: a plain pickle.
 * and then finds, without executing anything:
 *   - storages: persistent ids ('storage', <X>Storage, key, location, numel
 *     [, view]) resolved to zip records or legacy raw sections, and
 *     torch.storage._load_from_bytes(blob) calls whose blob is itself a
 *     legacy or zip torch.save file;
 *   - embedded archives: any bytes value that parses as a whole torch.save
 *     file (zip or legacy), nested up to pf_limits.max_embed_depth levels,
 *     found by a work list (no recursion);
 *   - tensors: the rebuild functions of formats.md §2.3
 *     (_rebuild_tensor, _v2, _v3, _rebuild_parameter[_with_state],
 *     Parameter NEWOBJ, _rebuild_from_type_v2, _rebuild_qtensor,
 *     _rebuild_device_tensor_from_numpy/_cpu_tensor) and numpy arrays
 *     (_reconstruct + BUILD, protocol-5 _frombuffer, numpy.core and
 *     numpy._core names).
 *
 * Bytes encodings: protocol 0-2 pickles store bytes as
 * _codecs.encode(text, 'latin1'); such text is decoded into the model's
 * arena (a "decoded segment") when a blob or array data lives in it.
 *
 * For every tensor the model gives dtype, shape, stride, storage offset,
 * device, and where its bytes are: a segment and an offset.  Segment 0 is
 * the model file itself; any segment whose file_off is >= 0 is a plain
 * slice of the file, so the bytes of a contiguous tensor are the file
 * range [file_off + data_off, ... + nbytes) and nothing needs copying.
 * Other tensors are read through pf_tensor_read(), which gathers strided
 * views and reads decoded segments.
 *
 * The model keeps pointers into the input buffer, which must stay mapped
 * for the model's lifetime.
 */
#ifndef PF_MODEL_H
#define PF_MODEL_H

#include <stdbool.h>
#include <stdint.h>

#include "dtype.h"
#include "error.h"
#include "hashmap.h"
#include "pf_limits.h"
#include "pickle.h"
#include "zip.h"

typedef enum pf_container {
	PF_C_PICKLE = 0,
	PF_C_TORCH_ZIP,
	PF_C_TORCH_LEGACY,
	PF_C_TORCHSCRIPT,
} pf_container;

const char *pf_container_name(pf_container c); /* "pickle", "torch-zip", ... */

typedef enum pf_seg_how {
	PF_SEG_FILE = 0,  /* the model file */
	PF_SEG_SLICE,     /* a raw slice of its parent (a bytes value, a stored record) */
	PF_SEG_LATIN1,    /* bytes decoded from latin-1 text held as UTF-8 (protocol <= 2 bytes) */
	PF_SEG_INFLATE,   /* a deflated zip record, inflated */
} pf_seg_how;

typedef struct pf_segment {
	const uint8_t *p;
	uint64_t len;
	int64_t file_off;   /* absolute offset of p[0] in the model file, or -1 when decoded */
	uint32_t parent;    /* segment the encoded bytes came from */
	uint64_t parent_off; /* offset in parent of the encoded bytes */
	uint64_t parent_len;
	pf_seg_how how;
} pf_segment;

typedef struct pf_archive {
	pf_container container;
	int protocol;       /* of the main pickle (data.pkl / P4 / the pickle) */
	uint32_t seg;       /* segment holding the whole archive */
	pf_nid root;        /* the main pickle's value */
	pf_nid constants;   /* TorchScript: the constants.pkl tuple, else 0 */
	pf_nid host;        /* bytes value or _load_from_bytes call it was found in; 0 at the top */
	uint32_t depth;     /* 0 at the top */
	pf_zip zip;         /* zip containers only */
	uint32_t first_node, end_node; /* nodes its pickles made: [first_node, end_node) */
} pf_archive;

/* Where one pickle of the model lies: the ones a device rewrite edits. */
typedef struct pf_pickle_span {
	uint32_t archive;
	uint32_t seg;              /* segment holding it */
	uint64_t start, end;       /* [start, end) in seg: first opcode .. one past STOP */
	int32_t zip_entry;         /* index in the archive's zip of the record it is, or -1 */
} pf_pickle_span;

typedef struct pf_storage {
	uint32_t archive;
	const char *dir;       /* zip: the record folder ("data", "constants"); legacy: "" */
	const char *key;       /* record name <dir>/<key> or legacy key */
	pf_dtype dtype;
	uint64_t numel;        /* elements of dtype (bytes for UntypedStorage) */
	uint64_t nbytes;
	const char *location;  /* "cpu", "cuda:0", ... (NUL-terminated, arena) */
	pf_nid location_node;  /* the str node holding it */
	pf_nid pid;            /* the persistent id tuple */
	uint32_t seg;          /* where the bytes are */
	uint64_t off;
	bool have_data;        /* false until the record / raw section is found */
} pf_storage;

typedef enum pf_tensor_layout {
	PF_TL_CONTIGUOUS = 0,  /* logical bytes = [data_off, data_off + nbytes) of seg */
	PF_TL_STRIDED,         /* gathered element by element (pf_tensor_read) */
} pf_tensor_layout;

typedef struct pf_tensor {
	pf_nid node;           /* the node standing for it in the graph (outermost wrapper) */
	int32_t storage;       /* index into storages, -1 for numpy arrays */
	pf_dtype dtype;        /* PF_DT_NUMPY for numpy arrays */
	char dtype_name[24];   /* "float32"; numpy's dtype.name for arrays */
	char descr[24];        /* .npy descr: "<f4", "|V2" */
	unsigned itemsize;
	uint32_t ndim;
	const int64_t *shape;  /* ndim entries (arena) */
	const int64_t *stride; /* ndim entries, in elements */
	uint64_t offset;       /* storage offset, elements */
	uint64_t numel;
	uint64_t nbytes;       /* numel * itemsize */
	bool requires_grad;
	bool is_parameter;
	bool fortran;          /* .npy data in Fortran order (storage is column-major) */
	pf_tensor_layout layout;
	const char *device;    /* storage location or device string; NULL for numpy arrays */
	uint32_t seg;          /* segment of element [0,...,0] */
	uint64_t data_off;     /* offset in seg of element [0,...,0] */
	int64_t file_off;      /* absolute file offset of the data when contiguous in the file, else -1 */
} pf_tensor;

typedef struct pf_model {
	const uint8_t *file;
	uint64_t file_len;
	pf_limits limits;
	pf_graph g;
	pf_segment *segs;
	uint32_t n_segs, cap_segs;
	pf_archive *archives;  /* [0] is the file itself */
	uint32_t n_archives, cap_archives;
	pf_storage *storages;
	uint32_t n_storages, cap_storages;
	pf_pickle_span *pickles;  /* the object pickles: data.pkl, constants.pkl, a legacy P4, a plain pickle */
	uint32_t n_pickles, cap_pickles;
	pf_tensor *tensors;    /* in graph order */
	uint32_t n_tensors, cap_tensors;
	pf_hashmap node_tensor;   /* nid -> tensor index (wrappers and inner nodes) */
	pf_hashmap node_storage;  /* nid (persid or _load_from_bytes call) -> storage index */
	pf_hashmap node_archive;  /* host nid -> archive index */
	pf_hashmap node_seg;      /* nid of an encoded bytes value -> decoded segment */
	pf_hashmap key_storage;   /* hash(archive, key) -> storage index */
} pf_model;

/*
 * Whether file[0..len) may be a model, without running any pickle: a binary
 * pickle (PROTO 2-5 first); a protocol 0/1 legacy file (the magic as LONG
 * text first); a protocol 0/1 pickle (MARK, EMPTY_DICT, EMPTY_LIST,
 * EMPTY_TUPLE or GLOBAL first and STOP last); a zip whose central directory
 * names <prefix>/data.pkl.  1 yes, 0 no, with *err saying why not when the
 * file looks like a zip.
 */
int pf_model_sniff(const uint8_t *file, uint64_t len, pf_error *err);

/* Parse file[0..len); limits may be NULL for the defaults. */
int pf_model_open(pf_model *m, const uint8_t *file, uint64_t len, const pf_limits *limits,
		  pf_error *err);
void pf_model_free(pf_model *m);

/* Absolute offset in the model file of the opcode that made node id (for
 * decoded bytes: of the value they were decoded from). */
uint64_t pf_model_node_offset(const pf_model *m, pf_nid id);

/* Tensor standing for node id, or NULL. */
const pf_tensor *pf_model_tensor_of(const pf_model *m, pf_nid id);

/* Archive embedded at host node id (a bytes value / _load_from_bytes call), or NULL. */
const pf_archive *pf_model_archive_at(const pf_model *m, pf_nid id);

/*
 * Copy n logical bytes of tensor t starting at logical offset off into buf
 * (C order, or Fortran order when t->fortran).  off + n must be <= nbytes.
 */
int pf_tensor_read(const pf_model *m, const pf_tensor *t, uint64_t off, void *buf, uint64_t n,
		   pf_error *err);

#endif
