/*
 * Unit tests of the torch model (codec/model.c) and of what the mount shows
 * (codec/meta.c).  Inputs are made at test time by the real Python pickle
 * and torch (/usr/bin/python3), and expected values come from Python too,
 * never from the code under test.
 */
#include <check.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "meta.h"
#include "model.h"
#include "testutil.h"


#define PREAMBLE "import sys, io, pickle, torch, numpy as np\nout = sys.stdout.buffer\n"

typedef struct fixture {
	uint8_t *data;
	size_t len;
	pf_model m;
	pf_tree t;
} fixture;

static void open_fixture(fixture *fx, const char *code)
{
	pf_error err = {0};
	fx->data = pf_test_python(code, NULL, &fx->len);
	ck_assert_msg(pf_model_open(&fx->m, fx->data, fx->len, NULL, &err) == 0, "model: %s at %llu", err.msg,
		      (unsigned long long)err.offset);
	ck_assert_msg(pf_tree_build(&fx->m, &fx->t, &err) == 0, "tree: %s", err.msg);
}

static void close_fixture(fixture *fx)
{
	pf_tree_free(&fx->t);
	pf_model_free(&fx->m);
	free(fx->data);
}

static const pf_file *file_named(const fixture *fx, const char *path)
{
	for (uint32_t i = 0; i < fx->t.n_files; i++)
		if (strcmp(fx->t.files[i].path, path) == 0)
			return &fx->t.files[i];
	return NULL;
}

/* A strided view (a transpose and a slice) reads back as numpy's C-order bytes. */
START_TEST(strided_views_read_in_c_order)
{
	fixture fx;
	open_fixture(&fx, PREAMBLE
		     "base = torch.arange(24, dtype=torch.float32).reshape(4, 6)\n"
		     "b = io.BytesIO(); torch.save({'t': base.t(), 's': base[1:3, ::2]}, b)\n"
		     "out.write(b.getvalue())\n");
	size_t elen;
	uint8_t *expect = pf_test_python(PREAMBLE "base = np.arange(24, dtype=np.float32).reshape(4, 6)\n"
					  "out.write(np.ascontiguousarray(base[1:3, ::2]).tobytes())\n",
				 NULL, &elen);
	const pf_file *s = file_named(&fx, "s.npy"), *t = file_named(&fx, "t.npy");
	ck_assert_ptr_nonnull(s);
	ck_assert_ptr_nonnull(t);
	const pf_tensor *ts = &fx.m.tensors[s->tensor], *tt = &fx.m.tensors[t->tensor];
	ck_assert_int_eq(ts->layout, PF_TL_STRIDED);
	ck_assert_uint_eq(ts->nbytes, elen);
	uint8_t got[64];
	pf_error err = {0};
	ck_assert_int_eq(pf_tensor_read(&fx.m, ts, 0, got, ts->nbytes, &err), 0);
	ck_assert_mem_eq(got, expect, elen);
	/* a read that starts inside an element */
	ck_assert_int_eq(pf_tensor_read(&fx.m, ts, 3, got, 9, &err), 0);
	ck_assert_mem_eq(got, expect + 3, 9);
	/* the transpose is column-major storage: served as Fortran order, no gather */
	ck_assert(tt->fortran);
	ck_assert_int_eq(tt->layout, PF_TL_CONTIGUOUS);
	ck_assert_int_ge(tt->file_off, 0);
	free(expect);
	close_fixture(&fx);
}
END_TEST

/* The same tensor object twice is one tensor with two paths (a hard link). */
START_TEST(tied_tensor_is_a_link)
{
	fixture fx;
	open_fixture(&fx, PREAMBLE
		     "w = torch.ones(3)\n"
		     "pickle.dump({'enc': {'w': w}, 'dec': {'w': w}, 'x': [1, 2]}, out, protocol=4)\n");
	const pf_file *a = file_named(&fx, "enc/w.npy"), *b = file_named(&fx, "dec/w.npy");
	ck_assert_ptr_nonnull(a);
	ck_assert_ptr_nonnull(b);
	ck_assert_uint_eq(a->tensor, b->tensor);
	ck_assert_int_eq(a->link_of, -1);
	ck_assert_int_eq(b->link_of, (int32_t)(a - fx.t.files));
	json_t *dec = json_object_get(json_object_get(fx.t.meta, "root"), "dec");
	ck_assert_str_eq(json_string_value(json_object_get(json_object_get(dec, "w"), "ref")), "enc/w.npy");
	close_fixture(&fx);
}
END_TEST

/* Keys that escape or collide: '/', '..', and two keys equal after escaping. */
START_TEST(names_escape_and_collide)
{
	fixture fx;
	open_fixture(&fx, PREAMBLE
		     "pickle.dump({'a/b': np.zeros(1), '..': np.zeros(1), 'x': {'k': np.ones(1)},\n"
		     "             'x.npy': np.zeros(2), 3: np.zeros(3)}, out, protocol=3)\n");
	ck_assert_ptr_nonnull(file_named(&fx, "a%2Fb.npy"));
	ck_assert_ptr_nonnull(file_named(&fx, "%2E%2E.npy"));
	ck_assert_ptr_nonnull(file_named(&fx, "x/k.npy"));
	ck_assert_ptr_nonnull(file_named(&fx, "3.npy"));
	/* 'x.npy' as a tensor would be x.npy.npy: no collision with dir x */
	ck_assert_ptr_nonnull(file_named(&fx, "x.npy.npy"));
	close_fixture(&fx);
}
END_TEST

START_TEST(collision_gets_suffix)
{
	fixture fx;
	/* an int key 1 and a str key '1' both want "1.npy" */
	open_fixture(&fx, PREAMBLE "pickle.dump({1: np.zeros(1), '1': np.ones(2)}, out, protocol=4)\n");
	const pf_file *a = file_named(&fx, "1.npy"), *b = file_named(&fx, "1~2.npy");
	ck_assert_ptr_nonnull(a);
	ck_assert_ptr_nonnull(b);
	ck_assert_int_eq(fx.m.tensors[a->tensor].shape[0], 1);
	ck_assert_int_eq(fx.m.tensors[b->tensor].shape[0], 2);
	close_fixture(&fx);
}
END_TEST

/* A nn.Module pickled whole and its state_dict give the same paths. */
START_TEST(module_and_state_dict_agree)
{
	fixture whole, sd;
	const char *net = PREAMBLE
		"torch.manual_seed(0)\n"
		"net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(),\n"
		"    torch.nn.Sequential(torch.nn.BatchNorm1d(3), torch.nn.Linear(3, 1)))\n";
	char code[1024];
	snprintf(code, sizeof(code), "%sb = io.BytesIO(); torch.save(net, b); out.write(b.getvalue())\n", net);
	open_fixture(&whole, code);
	snprintf(code, sizeof(code), "%sb = io.BytesIO(); torch.save(net.state_dict(), b); out.write(b.getvalue())\n",
		 net);
	open_fixture(&sd, code);
	ck_assert_uint_eq(whole.t.n_files, sd.t.n_files);
	ck_assert_uint_eq(whole.t.n_files, 9); /* 2 + 5 (weight, bias, running mean/var, num_batches) + 2 */
	for (uint32_t i = 0; i < sd.t.n_files; i++)
		ck_assert_msg(file_named(&whole, sd.t.files[i].path), "%s missing", sd.t.files[i].path);
	ck_assert_ptr_nonnull(file_named(&sd, "2/0/running_mean.npy"));
	close_fixture(&whole);
	close_fixture(&sd);
}
END_TEST

/* device text: distinct locations, most frequent first; globals in first-use order. */
START_TEST(device_and_globals_texts)
{
	fixture fx;
	open_fixture(&fx, PREAMBLE
		     "import torch.serialization as s\n"
		     "calls = iter(['cpu', 'cuda:1', 'cuda:1'])\n"
		     "s.register_package(1, lambda obj: next(calls), lambda obj, loc: None)\n"
		     "b = io.BytesIO(); torch.save([torch.zeros(1), torch.ones(2), torch.ones(3)], b)\n"
		     "out.write(b.getvalue())\n");
	ck_assert_str_eq(fx.t.device_text, "cuda:1\ncpu\n");
	ck_assert_str_eq(fx.t.globals_text, "torch._utils _rebuild_tensor_v2\ntorch FloatStorage\n"
					    "collections OrderedDict\n");
	close_fixture(&fx);
}
END_TEST

/* Integers beyond +-2^53 keep their exact value as strings. */
START_TEST(big_integers_are_exact)
{
	fixture fx;
	open_fixture(&fx, PREAMBLE "pickle.dump([2**60, -2**70 - 5, 2**53], out, protocol=2)\n");
	size_t n;
	uint8_t *expect = pf_test_python(PREAMBLE "print(2**60, -2**70 - 5, end='')\n", NULL, &n);
	json_t *root = json_object_get(fx.t.meta, "root");
	char got[128];
	snprintf(got, sizeof(got), "%s %s", json_string_value(json_object_get(json_array_get(root, 0), "int")),
		 json_string_value(json_object_get(json_array_get(root, 1), "int")));
	ck_assert_mem_eq(got, expect, n);
	ck_assert_int_eq(json_integer_value(json_array_get(root, 2)), 1ll << 53);
	free(expect);
	close_fixture(&fx);
}
END_TEST

/* A "billion laughs" graph: 40 levels of a list holding the level below twice. */
START_TEST(shared_containers_stay_linear)
{
	fixture fx;
	open_fixture(&fx, PREAMBLE
		     "x = [np.zeros(1)]\n"
		     "for i in range(40): x = [x, x]\n"
		     "pickle.dump(x, out, protocol=4)\n");
	char *text = pf_tree_meta_text(&fx.t);
	ck_assert_ptr_nonnull(text);
	ck_assert_uint_lt(strlen(text), 64 * 1024);
	ck_assert_uint_eq(fx.m.n_tensors, 1);
	free(text);
	close_fixture(&fx);
}
END_TEST

/* Nesting deeper than max_depth is refused by the walk. */
START_TEST(deep_nesting_hits_the_limit)
{
	size_t len;
	uint8_t *data = pf_test_python(PREAMBLE
			       "x = []\nfor i in range(3000): x = [x]\n"
			       "sys.setrecursionlimit(100000)\npickle.dump(x, out, protocol=4)\n", NULL, &len);
	pf_model m;
	pf_tree t;
	pf_error err = {0};
	ck_assert_int_eq(pf_model_open(&m, data, len, NULL, &err), 0);
	ck_assert_int_eq(pf_tree_build(&m, &t, &err), -1);
	ck_assert_int_eq(err.code, PF_E_LIMIT);
	ck_assert_ptr_nonnull(strstr(err.msg, "max_depth"));
	pf_model_free(&m);
	free(data);
}
END_TEST

/* Protocol 2 bytes (_codecs.encode latin-1 text) hold blobs and array data. */
START_TEST(protocol2_latin1_blobs)
{
	fixture fx;
	open_fixture(&fx, PREAMBLE
		     "t = torch.tensor([1.5, -2.0, 255.0, 3e38])\n"
		     "a = np.array([[200, 1], [2, 255]], dtype=np.uint8)\n"
		     "pickle.dump({'t': t, 'a': a, 'raw': bytes(range(256))}, out, protocol=2)\n");
	size_t elen;
	uint8_t *expect = pf_test_python(PREAMBLE "import torch\n"
					  "out.write(torch.tensor([1.5, -2.0, 255.0, 3e38]).numpy().tobytes())\n"
					  "out.write(bytes([200, 1, 2, 255]))\n",
				 NULL, &elen);
	const pf_file *t = file_named(&fx, "t.npy"), *a = file_named(&fx, "a.npy");
	ck_assert_ptr_nonnull(t);
	ck_assert_ptr_nonnull(a);
	uint8_t got[32];
	pf_error err = {0};
	const pf_tensor *tt = &fx.m.tensors[t->tensor], *ta = &fx.m.tensors[a->tensor];
	ck_assert_int_eq(tt->file_off, -1); /* decoded from latin-1 text: not a file range */
	ck_assert_int_eq(pf_tensor_read(&fx.m, tt, 0, got, 16, &err), 0);
	ck_assert_int_eq(pf_tensor_read(&fx.m, ta, 0, got + 16, 4, &err), 0);
	ck_assert_mem_eq(got, expect, elen);
	json_t *raw = json_object_get(json_object_get(fx.t.meta, "root"), "raw");
	ck_assert_int_eq(json_integer_value(json_object_get(raw, "bytes")), 256);
	free(expect);
	close_fixture(&fx);
}
END_TEST

/* A torch.save file stored as a bytes value, two levels deep. */
START_TEST(nested_torch_save_files)
{
	fixture fx;
	open_fixture(&fx, PREAMBLE
		     "inner = io.BytesIO(); torch.save({'w': torch.arange(3)}, inner)\n"
		     "mid = io.BytesIO(); torch.save({'blob': inner.getvalue()}, mid, _use_new_zipfile_serialization=False)\n"
		     "pickle.dump({'model': mid.getvalue(), 'direct': inner.getvalue()}, out, protocol=4)\n");
	/* two levels: the inner zip sits in latin-1 text of the legacy pickle */
	const pf_file *w = file_named(&fx, "model/blob/w.npy");
	ck_assert_ptr_nonnull(w);
	const pf_tensor *t = &fx.m.tensors[w->tensor];
	ck_assert_str_eq(t->dtype_name, "int64");
	int64_t v[3];
	pf_error err = {0};
	ck_assert_uint_eq(t->nbytes, sizeof(v));
	ck_assert_int_eq(pf_tensor_read(&fx.m, t, 0, v, sizeof(v), &err), 0);
	ck_assert(v[0] == 0 && v[1] == 1 && v[2] == 2);
	/* one level, as raw protocol-4 bytes: the record is a range of the file */
	const pf_file *d = file_named(&fx, "direct/w.npy");
	ck_assert_ptr_nonnull(d);
	t = &fx.m.tensors[d->tensor];
	ck_assert_int_ge(t->file_off, 0);
	memcpy(v, fx.data + t->file_off, sizeof(v));
	ck_assert(v[0] == 0 && v[1] == 1 && v[2] == 2);
	json_t *model = json_object_get(json_object_get(fx.t.meta, "root"), "model");
	ck_assert_str_eq(json_string_value(json_object_get(json_object_get(model, "torch_save"), "container")),
			 "torch-legacy");
	close_fixture(&fx);
}
END_TEST

static Suite *suite(void)
{
	Suite *s = suite_create("model");
	TCase *tc = tcase_create("core");
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, strided_views_read_in_c_order);
	tcase_add_test(tc, tied_tensor_is_a_link);
	tcase_add_test(tc, names_escape_and_collide);
	tcase_add_test(tc, collision_gets_suffix);
	tcase_add_test(tc, module_and_state_dict_agree);
	tcase_add_test(tc, device_and_globals_texts);
	tcase_add_test(tc, big_integers_are_exact);
	tcase_add_test(tc, shared_containers_stay_linear);
	tcase_add_test(tc, deep_nesting_hits_the_limit);
	tcase_add_test(tc, protocol2_latin1_blobs);
	tcase_add_test(tc, nested_torch_save_files);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(suite());
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
