/*
 * dump-tensors FILE - what the codec finds in FILE, as one JSON object, for
 * the Python tests that compare it with torch and numpy (tests/py).
 *
 * {"container", "protocol", "devices", "globals",
 *  "tensors": [{"path", "kind" ("torch" or "numpy"), "dtype", "shape", "nbytes", "crc32", "device"}]}
 * One entry per distinct tensor (hard links are not repeated); crc32 is
 * zlib's CRC-32 of the bytes the tensor file holds after its .npy header.
 * Exit 1 with one line on stderr when FILE is not a readable model.
 */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "mapfile.h"
#include "meta.h"
#include "model.h"

static int tensor_crc(const pf_model *m, const pf_tensor *t, unsigned long *crc, pf_error *err)
{
	uint8_t buf[1 << 16];
	*crc = crc32(0L, Z_NULL, 0);
	for (uint64_t off = 0; off < t->nbytes;) {
		uint64_t n = t->nbytes - off < sizeof(buf) ? t->nbytes - off : sizeof(buf);
		if (pf_tensor_read(m, t, off, buf, n, err))
			return -1;
		*crc = crc32(*crc, buf, (uInt)n);
		off += n;
	}
	return 0;
}

int main(int argc, char **argv)
{
	pf_mapfile mf;
	pf_model m;
	pf_tree t;
	pf_error err = {0};

	if (argc != 2) {
		fprintf(stderr, "usage: dump-tensors FILE\n");
		return 2;
	}
	if (pf_mapfile_open(&mf, argv[1])) {
		fprintf(stderr, "dump-tensors: cannot open %s\n", argv[1]);
		return 2;
	}
	if (pf_model_open(&m, mf.data, mf.len, NULL, &err) || pf_mapfile_error(&mf) ||
	    pf_tree_build(&m, &t, &err)) {
		fprintf(stderr, "dump-tensors: %s: offset %llu: %s\n", argv[1], (unsigned long long)err.offset,
			err.msg);
		return 1;
	}
	json_t *tensors = json_array(), *globals = json_array();
	for (uint32_t i = 0; i < t.n_files; i++) {
		const pf_file *f = &t.files[i];
		const pf_tensor *tn = &m.tensors[f->tensor];
		unsigned long crc;
		if (f->link_of >= 0)
			continue;
		json_t *shape = json_array();
		if (tensor_crc(&m, tn, &crc, &err)) {
			fprintf(stderr, "dump-tensors: %s: %s\n", f->path, err.msg);
			return 1;
		}
		for (uint32_t d = 0; d < tn->ndim; d++)
			json_array_append_new(shape, json_integer(tn->shape[d]));
		json_array_append_new(tensors, json_pack("{s:s,s:s,s:s,s:o,s:I,s:I,s:o,s:b}", "path", f->path,
							 "kind", tn->dtype == PF_DT_NUMPY ? "numpy" : "torch", "dtype",
							 tn->dtype_name, "shape", shape, "nbytes",
							 (json_int_t)tn->nbytes, "crc32", (json_int_t)crc, "device",
							 tn->device ? json_string(tn->device) : json_null(),
							 "fortran_order", tn->fortran));
	}
	for (uint32_t i = 0; i < m.g.n_globals; i++)
		json_array_append_new(globals, json_pack("[s,s]", m.g.globals[i].module, m.g.globals[i].name));
	json_t *out = json_pack("{s:s,s:i,s:O,s:o,s:o}", "container", pf_container_name(m.archives[0].container),
				"protocol", m.archives[0].protocol, "devices", json_object_get(t.meta, "devices"),
				"globals", globals, "tensors", tensors);
	char *text = json_dumps(out, JSON_COMPACT);
	puts(text);
	free(text);
	json_decref(out);
	pf_tree_free(&t);
	pf_model_free(&m);
	pf_mapfile_close(&mf);
	return 0;
}
