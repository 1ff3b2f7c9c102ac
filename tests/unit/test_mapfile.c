/*
 * fs/mapfile: the buffer holds exactly the file's bytes, whether its pages
 * come from the userfaultfd pager or from a direct mapping, also when
 * several threads touch the same pages at once.
 */
#include <check.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mapfile.h"

static const size_t sizes[] = {1, 4095, 4096, 4097, 100003, 1 << 20};

static char *write_random_file(size_t n, uint8_t **bytes)
{
	static char path[64];
	snprintf(path, sizeof(path), "/tmp/pf-mapfile-XXXXXX");
	int fd = mkstemp(path);
	ck_assert_int_ge(fd, 0);
	*bytes = malloc(n);
	srand((unsigned)n);
	for (size_t i = 0; i < n; i++)
		(*bytes)[i] = (uint8_t)rand();
	ck_assert_int_eq(write(fd, *bytes, n), (ssize_t)n);
	close(fd);
	return path;
}

static void check_contents(bool paged_wanted)
{
	for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
		uint8_t *bytes;
		char *path = write_random_file(sizes[k], &bytes);
		pf_mapfile mf;
		ck_assert_int_eq(pf_mapfile_open(&mf, path), 0);
		ck_assert(mf.paged == paged_wanted);
		ck_assert_uint_eq(mf.len, sizes[k]);
		/* touch from the end first, so pages are not filled in order */
		ck_assert_int_eq(mf.data[sizes[k] - 1], bytes[sizes[k] - 1]);
		ck_assert_mem_eq(mf.data, bytes, sizes[k]);
		ck_assert_int_eq(pf_mapfile_error(&mf), 0);
		pf_mapfile_close(&mf);
		unlink(path);
		free(bytes);
	}
}

START_TEST(paged_buffer_holds_the_file)
{
	unsetenv("PICKLEFS_NO_PAGER");
	check_contents(true);
}
END_TEST

START_TEST(direct_mapping_holds_the_file)
{
	setenv("PICKLEFS_NO_PAGER", "1", 1);
	check_contents(false);
	unsetenv("PICKLEFS_NO_PAGER");
}
END_TEST

typedef struct reader {
	const pf_mapfile *mf;
	const uint8_t *expect;
	unsigned long sum, want;
} reader;

static void *read_all(void *arg)
{
	reader *r = arg;
	for (uint64_t i = 0; i < r->mf->len; i += 512) {
		r->sum += r->mf->data[i];
		r->want += r->expect[i];
	}
	return NULL;
}

START_TEST(threads_fault_the_same_pages)
{
	uint8_t *bytes;
	char *path = write_random_file(8 << 20, &bytes);
	pf_mapfile mf;
	pthread_t th[4];
	reader r[4];
	ck_assert_int_eq(pf_mapfile_open(&mf, path), 0);
	for (int i = 0; i < 4; i++) {
		r[i] = (reader){.mf = &mf, .expect = bytes};
		pthread_create(&th[i], NULL, read_all, &r[i]);
	}
	for (int i = 0; i < 4; i++) {
		pthread_join(th[i], NULL);
		ck_assert_uint_eq(r[i].sum, r[i].want);
	}
	ck_assert_int_eq(pf_mapfile_error(&mf), 0);
	pf_mapfile_close(&mf);
	unlink(path);
	free(bytes);
}
END_TEST

START_TEST(empty_and_missing_files)
{
	pf_mapfile mf;
	char path[] = "/tmp/pf-mapfile-empty-XXXXXX";
	int fd = mkstemp(path);
	close(fd);
	ck_assert_int_eq(pf_mapfile_open(&mf, path), 0);
	ck_assert_uint_eq(mf.len, 0);
	pf_mapfile_close(&mf);
	unlink(path);
	ck_assert_int_lt(pf_mapfile_open(&mf, "/nonexistent/picklefs"), 0);
	ck_assert_int_lt(pf_mapfile_open(&mf, "/tmp"), 0);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("mapfile");
	TCase *tc = tcase_create("core");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, paged_buffer_holds_the_file);
	tcase_add_test(tc, direct_mapping_holds_the_file);
	tcase_add_test(tc, threads_fault_the_same_pages);
	tcase_add_test(tc, empty_and_missing_files);
	suite_add_tcase(s, tc);
	SRunner *sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
