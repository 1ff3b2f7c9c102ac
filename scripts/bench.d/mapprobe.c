/*
 * mapprobe - an LD_PRELOAD probe for the picklefs benchmark investigation
 * (docs/BENCHMARKS.md, "Where the RSS goes").  Not part of the build.
 *
 *   cc -O2 -shared -fPIC -o /tmp/mapprobe.so scripts/bench.d/mapprobe.c -ldl
 *   LD_PRELOAD=/tmp/mapprobe.so build/fs/picklefs inspect FILE > /dev/null
 *   LD_PRELOAD=/tmp/mapprobe.so MAPPROBE_ADVICE=random build/fs/picklefs inspect FILE
 *
 * Just before a mapping larger than 16 MiB is unmapped (picklefs's mapping of
 * FILE), it prints VmHWM, RssAnon and RssFile from /proc/self/status and
 * read_bytes from /proc/self/io to stderr.  With MAPPROBE_ADVICE=random it
 * applies madvise(MADV_RANDOM) to every file mapping larger than 16 MiB as
 * soon as it is made, to see what that advice would change.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define BIG ((size_t)16 << 20)

static void field(const char *buf, const char *key)
{
	const char *p = strstr(buf, key);
	if (p)
		fprintf(stderr, " %.*s", (int)strcspn(p, "\n"), p);
}

static void slurp(const char *path, char *buf, size_t cap)
{
	int fd = open(path, O_RDONLY);
	ssize_t n = fd < 0 ? 0 : read(fd, buf, cap - 1);
	buf[n > 0 ? n : 0] = 0;
	if (fd >= 0)
		close(fd);
}

static void report(size_t len)
{
	char buf[8192];
	fprintf(stderr, "mapprobe: unmap %zu bytes:", len);
	slurp("/proc/self/status", buf, sizeof(buf));
	field(buf, "VmHWM");
	field(buf, "RssAnon");
	field(buf, "RssFile");
	slurp("/proc/self/io", buf, sizeof(buf));
	field(buf, "read_bytes");
	fputc('\n', stderr);
}

static void *probe_map(void *r, size_t len, int fd)
{
	const char *adv = getenv("MAPPROBE_ADVICE");
	if (r != MAP_FAILED && fd >= 0 && len > BIG && adv && !strcmp(adv, "random"))
		madvise(r, len, MADV_RANDOM);
	return r;
}

void *mmap64(void *a, size_t len, int prot, int flags, int fd, off_t off)
{
	static void *(*real)(void *, size_t, int, int, int, off_t);
	if (!real)
		real = (void *(*)(void *, size_t, int, int, int, off_t))dlsym(RTLD_NEXT, "mmap64");
	return probe_map(real(a, len, prot, flags, fd, off), len, fd);
}

void *mmap(void *a, size_t len, int prot, int flags, int fd, off_t off)
{
	static void *(*real)(void *, size_t, int, int, int, off_t);
	if (!real)
		real = (void *(*)(void *, size_t, int, int, int, off_t))dlsym(RTLD_NEXT, "mmap");
	return probe_map(real(a, len, prot, flags, fd, off), len, fd);
}

int munmap(void *a, size_t len)
{
	static int (*real)(void *, size_t);
	if (!real)
		real = (int (*)(void *, size_t))dlsym(RTLD_NEXT, "munmap");
	if (len > BIG)
		report(len);
	return real(a, len);
}
