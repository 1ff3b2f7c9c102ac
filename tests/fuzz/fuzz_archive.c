/*
 * fuzz_archive.c - libFuzzer target for the whole codec: format detection,
 * zip / legacy / plain pickle containers, embedded torch.save blobs,
 * tensors, and the tree the mount shows (codec/model.c, meta.c).
 *
 * pf_model_open, then pf_tree_build and pf_tree_meta_text, then
 * pf_tensor_read of the first and last bytes of every tensor.  Checks,
 * besides ASan/UBSan/LSan:
 *   - failures set a code, a message and an offset <= size;
 *   - contiguous tensors in the file lie inside it; reads inside a tensor
 *     succeed and a read past its end fails;
 *   - every file path of the tree is relative, non-empty, and has no
 *     empty, "." or ".." component (names never escape the model dir);
 *   - meta.json text is produced and ends in a newline.
 * Inflate limits are lowered (16 MiB per record) to keep runs fast.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "meta.h"
#include "model.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(int ok)
{
	if (!ok)
		abort();
}

static volatile uint8_t sink;

static void check_path(const char *path)
{
	check(path && path[0] != '\0' && path[0] != '/');
	const char *p = path;
	for (;;) {
		const char *slash = strchr(p, '/');
		size_t len = slash ? (size_t)(slash - p) : strlen(p);
		check(len > 0);
		check(!(len == 1 && p[0] == '.'));
		check(!(len == 2 && p[0] == '.' && p[1] == '.'));
		if (!slash)
			break;
		p = slash + 1;
	}
}

static void read_ends(const pf_model *m, const pf_tensor *t, uint64_t size)
{
	uint8_t buf[64];
	pf_error err = {0};
	uint64_t n = t->nbytes < sizeof(buf) ? t->nbytes : sizeof(buf);

	if (t->layout == PF_TL_CONTIGUOUS && t->file_off >= 0)
		check((uint64_t)t->file_off <= size && t->nbytes <= size - (uint64_t)t->file_off);
	if (n == 0)
		return;
	check(pf_tensor_read(m, t, 0, buf, n, &err) == 0);
	sink = buf[0] ^ buf[n - 1];
	check(pf_tensor_read(m, t, t->nbytes - n, buf, n, &err) == 0);
	sink = buf[0] ^ buf[n - 1];
	check(pf_tensor_read(m, t, t->nbytes - n + 1, buf, n, &err) != 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	pf_limits lim = pf_limits_default();
	pf_model m;
	pf_tree t;
	pf_error err = {0};

	lim.max_inflate = 16u << 20;
	lim.max_decoded = 64u << 20;
	if (pf_model_open(&m, data, size, &lim, &err)) {
		check(err.code != PF_OK && err.msg[0] != '\0');
		check(err.offset <= (uint64_t)size);
		return 0;
	}
	check(m.n_archives >= 1);
	for (uint32_t i = 0; i < m.n_tensors; i++)
		read_ends(&m, &m.tensors[i], size);

	if (pf_tree_build(&m, &t, &err) == 0) {
		for (uint32_t i = 0; i < t.n_files; i++) {
			check_path(t.files[i].path);
			check(t.files[i].tensor < m.n_tensors);
			check(t.files[i].link_of < (int32_t)i);
		}
		char *text = pf_tree_meta_text(&t);
		if (text) {
			size_t len = strlen(text);
			check(len > 0 && text[len - 1] == '\n');
			free(text);
		}
		pf_tree_free(&t);
	} else {
		check(err.code != PF_OK && err.msg[0] != '\0');
		check(err.offset <= (uint64_t)size);
	}
	pf_model_free(&m);
	return 0;
}
