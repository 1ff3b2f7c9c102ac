#include "pyrun.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

uint8_t *pf_test_python(const char *code, const char *arg, size_t *len)
{
	char path[] = "/tmp/pf-test-py-XXXXXX";
	int fd = mkstemp(path);
	ck_assert_int_ge(fd, 0);
	FILE *f = fdopen(fd, "w");
	ck_assert_ptr_nonnull(f);
	fputs(code, f);
	fclose(f);
	char cmd[512];
	snprintf(cmd, sizeof(cmd), "/usr/bin/python3 %s%s%s", path, arg ? " " : "", arg ? arg : "");
	FILE *p = popen(cmd, "r");
	ck_assert_ptr_nonnull(p);
	size_t cap = 1 << 16, n = 0, got;
	uint8_t *buf = malloc(cap);
	ck_assert_ptr_nonnull(buf);
	while ((got = fread(buf + n, 1, cap - n - 1, p)) > 0) {
		n += got;
		if (n + 1 == cap) {
			buf = realloc(buf, cap *= 2);
			ck_assert_ptr_nonnull(buf);
		}
	}
	buf[n] = 0;
	int status = pclose(p);
	unlink(path);
	ck_assert_msg(status == 0, "python failed (status %d): %.*s", status, (int)(n > 2000 ? 2000 : n),
		      (const char *)buf);
	*len = n;
	return buf;
}
