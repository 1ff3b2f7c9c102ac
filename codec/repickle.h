/*
 * repickle.h - re-emit one pickle with chosen str values replaced, and
 * list the edits that `echo DEV > device` makes (DESIGN §4.2).
 *
 * pf_repickle() copies a pickle's bytes through unchanged except at the
 * edited values (str values, device tuples, bytes payloads, global names
 * and scalar values: pf_edit_kind).  Every other opcode, the protocol and every memo index
 * stay as they were; nothing is unpickled.  An edited value is one
 * "unit" of opcodes: the value's own opcodes plus the memo writes
 * (PUT/BINPUT/LONG_BINPUT/MEMOIZE; at most 3, in the same frame) that
 * directly follow it.  The unit is
 * re-encoded with, in this order of preference (formats.md §10.1):
 *
 *   1. the same byte length, so that nothing after it moves: the string
 *      opcode may change (SHORT_BINUNICODE <-> BINUNICODE <-> BINUNICODE8,
 *      SHORT_BINSTRING <-> BINSTRING, text STRING/UNICODE in protocol 0),
 *      a memo write may change form with the SAME index (MEMOIZE <->
 *      BINPUT m <-> LONG_BINPUT m, where m is the slot MEMOIZE fills;
 *      protocol-0 PUT m may carry leading zeros: `p0005\n`), and, only in
 *      streams without MEMOIZE, up to 8 "padding" memo writes may be added,
 *      each to its own index below 4096 that the stream never reads or
 *      writes (formats.md §10.1; trap 3: a MEMOIZE-based stream never gets
 *      an extra memo write; one index per pad keeps pickletools.dis happy);
 *   2. otherwise the shortest such encoding, and then the length field of
 *      every FRAME that holds the unit is rewritten.
 * Only opcodes of the stream's own protocol are emitted (effective
 * protocol: the PROTO argument; without PROTO, 1 when any binary opcode
 * appears, else 0).  Python 2 string opcodes are emitted for ASCII text in
 * place of one (S/T/U), and SHORT_BINSTRING also for a str when only it
 * keeps the length (at protocol 2, 'meta' -> 'cpu' is one byte shorter and
 * BINUNICODE + memo writes cannot lose one byte): pickle.load (encoding
 * 'ASCII', 'latin1', 'utf-8') and torch.load, weights_only included, read
 * it as a str; only pickle.load(..., encoding='bytes') would see bytes.
 *
 * Frames: the input must be strictly framed the way pickle.py's
 * _Unframer requires (a frame ends at an opcode boundary, no FRAME inside
 * a frame, no frame past STOP), else PF_E_FORMAT.  A PF_EDIT_TUPLE1 unit
 * that spans a frame boundary (possible when a frame was cut between the
 * items) merges the frames: the inner FRAME opcode is dropped and the
 * first frame's length covers both (frames are only I/O hints; any exact
 * framing is valid).
 *
 * Error offsets are positions in the pickle buffer passed in.
 */
#ifndef PF_REPICKLE_H
#define PF_REPICKLE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "model.h"

/* ---- device strings ------------------------------------------------------ */

enum { PF_DEVICE_MAX = 16 };

typedef struct pf_device {
	char text[PF_DEVICE_MAX]; /* canonical text, e.g. "cuda:1" (NUL-terminated) */
	uint8_t len;              /* strlen(text) */
	uint8_t type_len;         /* length of the type part ("cuda" -> 4) */
	int16_t index;            /* N of "type:N", -1 when there is none */
} pf_device;

/*
 * Parse what was written to a model's `device` file: exactly one of
 * cpu, meta, cuda, cuda:N, mps, mps:N, xpu, xpu:N (N decimal without sign
 * or leading zeros, 0..127: torch's DeviceIndex is int8), optionally
 * followed by one "\n".  Nothing else (no spaces, no "cpu:0", no "gpu").
 * Returns 0 and fills *dev (dev may be NULL), or -1.  Pure: no errno, no
 * allocation.
 */
int pf_device_parse(const char *s, size_t len, pf_device *dev);

/* ---- the re-emitter ------------------------------------------------------ */

typedef enum pf_edit_kind {
	/* Replace the str value pushed by the string opcode at op_off
	 * (BINUNICODE, SHORT_BINUNICODE, BINUNICODE8, UNICODE, STRING,
	 * BINSTRING, SHORT_BINSTRING).  Every memo reference to it (BINGET
	 * etc.) then yields the new text too. */
	PF_EDIT_STR = 0,
	/* Replace the tuple built by the opcode at op_off (TUPLE1, TUPLE2,
	 * TUPLE3, or TUPLE with its MARK) by the 1-tuple (new_text,).  Its
	 * items must be plain values (str/bytes/int/float/bool/None opcodes or
	 * memo GETs) pushed directly before it; memo writes may follow the
	 * first item only (they then memoize the new str) and the tuple itself
	 * (kept).  This is how torch.device('cuda', 0) -- pickled as
	 * REDUCE(torch.device, ('cuda', 0)) -- becomes torch.device('cpu'):
	 * the 2-tuple's int cannot stay, and torch.device accepts one string
	 * ('cpu', 'cuda:1'). */
	PF_EDIT_TUPLE1 = 1,
	/* Replace the payload of the bytes or str opcode at op_off (BINBYTES,
	 * SHORT_BINBYTES, BINBYTES8, BINUNICODE, SHORT_BINUNICODE, BINUNICODE8)
	 * by new_text[0..new_len), taken as opaque bytes: never read by
	 * pf_repickle, only handed to the sink in ONE call with exactly that
	 * pointer and length (so a sink may recognise it and substitute bytes
	 * it streams from elsewhere).  The opcode is kept when its length field
	 * can hold new_len, else the narrowest of its family (bytes / str) that
	 * the stream's protocol has; the memo writes after it are not part of
	 * the unit and stay as they are; enclosing FRAME lengths are fixed. */
	PF_EDIT_PAYLOAD = 2,
	/* Rename the global named by the GLOBAL, INST or STACK_GLOBAL opcode at
	 * op_off: new_text is "module\nname" (exactly one '\n'; both parts
	 * non-empty UTF-8 without spaces, control characters or NUL).  GLOBAL
	 * and INST get new text operands (INST keeps its MARK and arguments).
	 * STACK_GLOBAL's two str operands were pushed earlier and may be
	 * memoized and shared, so they are left alone: the STACK_GLOBAL byte
	 * becomes POP POP GLOBAL "module\nname\n" (same stack, same memo; a
	 * memo write after it stays).  pickle.load reads GLOBAL at any
	 * protocol.  The length changes; enclosing FRAME lengths follow. */
	PF_EDIT_GLOBAL = 3,
	/* Replace the scalar pushed by the opcode at op_off (NONE, NEWTRUE,
	 * NEWFALSE, INT incl. I00/I01, BININT, BININT1, BININT2, LONG, LONG1,
	 * LONG4, FLOAT, BINFLOAT, or a string opcode) by the value that vtype
	 * (pf_value_type) and the fields below give.  Encoded in the stream's
	 * own protocol: None 'N'; bool NEWTRUE/NEWFALSE (protocol >= 2) or
	 * I01/I00; int BININT1/BININT2/BININT where they fit (protocol >= 1),
	 * else LONG1/LONG4 (protocol >= 2) or INT/LONG text (protocol 0, 1);
	 * float BINFLOAT (protocol >= 1) or FLOAT text (the shortest of %.15g,
	 * %.16g, %.17g that reads back exactly; "nan", "inf", "-inf").  Among
	 * the encodings the opcode of the same length is taken when there is
	 * one, else the shortest; enclosing FRAME lengths follow.  A str value
	 * at a string opcode is a PF_EDIT_STR (memo writes after it re-encoded
	 * with it, same length preferred); a str value at another opcode uses
	 * the same string encodings without memo writes.  Memo writes after a
	 * non-str unit stay as they are (same index: they now memoize the new
	 * value, and every memo reference reads it). */
	PF_EDIT_SCALAR = 4,
} pf_edit_kind;

/* The type of a PF_EDIT_SCALAR value (0 is invalid on purpose). */
typedef enum pf_value_type {
	PF_V_NONE = 1,
	PF_V_BOOL,    /* pf_str_edit.b */
	PF_V_INT,     /* new_text: decimal "-?(0|[1-9][0-9]*)", at most PF_INT_DIGITS_MAX digits */
	PF_V_FLOAT,   /* pf_str_edit.f (NaN and infinities included) */
	PF_V_STR,     /* new_text: UTF-8 */
} pf_value_type;

/* Python's default int_max_str_digits: longer decimal text fails int(). */
enum { PF_INT_DIGITS_MAX = 4300 };

/* Why an edit was listed (informational; pf_repickle ignores it). */
enum { PF_WHY_OTHER = 0, PF_WHY_LOCATION, PF_WHY_TORCH_DEVICE, PF_WHY_ATTR };

typedef struct pf_str_edit {
	uint64_t op_off;      /* offset in the pickle buffer of the anchoring opcode */
	const char *new_text; /* UTF-8 (ASCII for Python 2 string opcodes), not NUL-terminated */
	size_t new_len;
	uint8_t kind;         /* pf_edit_kind */
	uint8_t why;          /* PF_WHY_* */
	uint8_t vtype;        /* PF_EDIT_SCALAR: pf_value_type; ignored otherwise */
	bool b;               /* PF_EDIT_SCALAR, PF_V_BOOL */
	double f;             /* PF_EDIT_SCALAR, PF_V_FLOAT */
} pf_str_edit;

/* Output callback: 0 on success; anything else stops pf_repickle, which
 * then fails with PF_E_NOMEM "output sink failed" (keep errno in ctx). */
typedef int (*pf_sink_fn)(void *ctx, const void *p, size_t n);

/*
 * Re-emit pickle[0..len) -- exactly one pickle, from its first opcode
 * through STOP, nothing after it -- with the n edits applied (any order;
 * two edits may not anchor at the same opcode or overlap).  The output
 * goes to sink in order (several calls); sink NULL only measures.
 * *out_len (may be NULL) gets the output length.  Nothing is written to
 * the sink before the whole input has been checked and every edit placed,
 * so a failure before the first sink call leaves the sink untouched.
 * Errors: PF_E_TRUNCATED / PF_E_OPCODE for a malformed stream,
 * PF_E_FORMAT for an edit that does not sit on a fitting opcode, bad
 * framing, text that no allowed opcode can carry, a global name that is
 * not "module\nname" or a scalar value that is not well formed (unknown
 * vtype, bad decimal text), PF_E_UNSUPPORTED for
 * tuple items that are not plain values, PF_E_NOMEM.
 */
int pf_repickle(const uint8_t *pickle, uint64_t len, const pf_str_edit *edits, uint32_t n,
		pf_sink_fn sink, void *ctx, uint64_t *out_len, pf_error *err);

/* ---- the device edits of one pickle --------------------------------------- */

typedef struct pf_edit_list {
	pf_str_edit *v;        /* sorted by op_off, one per opcode */
	uint32_t n, cap;
	uint32_t n_locations;  /* how many are storage locations (PF_WHY_LOCATION) */
	uint32_t n_devices;    /* torch.device values */
	uint32_t n_attrs;      /* `_device` / `device` str values */
} pf_edit_list;

void pf_edit_list_free(pf_edit_list *l);

/*
 * The edits that set one pickle of a parsed model to device dev: the
 * pickle lies at [start, end) of segment seg of m (a zip's data.pkl: its
 * whole segment; a plain pickle: segment 0 from 0; a legacy file's main
 * pickle: its range in the archive segment), and every op_off is relative
 * to start (ready for pf_repickle(m->segs[seg].p + start, end - start, ...)).
 * new_text points into dev, which must outlive the list.  Listed:
 *   (a) index 3 (location) of every ('storage', ...) persistent id;
 *   (b) every REDUCE(torch.device, args): a 1-tuple (str,) gets a
 *       PF_EDIT_STR of the str, a 2-tuple (type, index) a PF_EDIT_TUPLE1;
 *   (c) every str value under the key '_device' or 'device' of any dict
 *       (object __dict__ states, slot states, plain dicts) that parses as
 *       a device (pf_device_parse, no trailing newline).
 * Values that already equal dev->text are left alone.  Embedded files
 * (_load_from_bytes blobs) are separate pickles: call this per pickle.
 * *out must be zeroed (or freed) before; on failure it is emptied.
 */
int pf_device_edits(const pf_model *m, uint32_t seg, uint64_t start, uint64_t end, const pf_device *dev,
		    pf_edit_list *out, pf_error *err);

#endif
