#include "wcopy.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* An unnamed file in dirfd; where O_TMPFILE is missing, a named one unlinked at once. */
static int spool_open(int dirfd)
{
	int fd = openat(dirfd, ".", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
	if (fd >= 0 || (errno != EOPNOTSUPP && errno != EISDIR && errno != EINVAL))
		return fd;
	char name[64];
	for (unsigned i = 0; i < 100; i++) {
		snprintf(name, sizeof(name), ".picklefs-spool-%d-%u", (int)getpid(), i);
		fd = openat(dirfd, name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
		if (fd >= 0) {
			unlinkat(dirfd, name, 0);
			return fd;
		}
		if (errno != EEXIST)
			return -1;
	}
	return -1;
}

pfs_wcopy *pfs_wcopy_new(int dirfd, uint64_t base_len, pfs_base_read_fn base_read, pfs_base_mem_fn base_mem,
			 void *ctx, void (*base_release)(void *ctx))
{
	pfs_wcopy *w = calloc(1, sizeof(*w));
	if (!w)
		return NULL;
	w->fd = spool_open(dirfd);
	if (w->fd < 0) {
		free(w);
		return NULL;
	}
	atomic_init(&w->refs, 1);
	w->size = w->base_len = base_read ? base_len : 0;
	if (w->size && ftruncate(w->fd, (off_t)w->size) < 0) {
		close(w->fd);
		free(w);
		return NULL;
	}
	w->base_read = base_read;
	w->base_mem = base_mem;
	w->base_ctx = ctx;
	w->base_release = base_release;
	return w;
}

void pfs_wcopy_ref(pfs_wcopy *w)
{
	atomic_fetch_add(&w->refs, 1);
}

void pfs_wcopy_unref(pfs_wcopy *w)
{
	if (!w || atomic_fetch_sub(&w->refs, 1) != 1)
		return;
	if (w->map)
		munmap((void *)w->map, w->map_len);
	if (w->base_release)
		w->base_release(w->base_ctx);
	close(w->fd);
	free(w->written);
	free(w);
}

/* ---- the set of written ranges ------------------------------------------ */

/* Index of the first range that ends at or after off. */
static uint32_t first_reaching(const pfs_wcopy *w, uint64_t off)
{
	uint32_t lo = 0, hi = w->n_written;
	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;
		if (w->written[mid].end < off)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

/* Add [start, end), merging every range it touches. */
static int mark_written(pfs_wcopy *w, uint64_t start, uint64_t end)
{
	uint32_t i = first_reaching(w, start), j = i;
	while (j < w->n_written && w->written[j].start <= end) {
		if (w->written[j].start < start)
			start = w->written[j].start;
		if (w->written[j].end > end)
			end = w->written[j].end;
		j++;
	}
	if (i == j) { /* no overlap: insert */
		if (w->n_written == w->cap_written) {
			uint32_t cap = w->cap_written ? w->cap_written * 2 : 8;
			pfs_range *v = realloc(w->written, cap * sizeof(*v));
			if (!v)
				return -ENOMEM;
			w->written = v;
			w->cap_written = cap;
		}
		memmove(&w->written[i + 1], &w->written[i], (w->n_written - i) * sizeof(*w->written));
		w->n_written++;
	} else if (j - i > 1) {
		memmove(&w->written[i + 1], &w->written[j], (w->n_written - j) * sizeof(*w->written));
		w->n_written -= j - i - 1;
	}
	w->written[i] = (pfs_range){start, end};
	return 0;
}

/* ---- writing ------------------------------------------------------------ */

static int pwrite_all(int fd, const uint8_t *p, size_t n, uint64_t off)
{
	while (n) {
		ssize_t k = pwrite(fd, p, n, (off_t)off);
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			return k < 0 ? -errno : -EIO;
		p += k;
		n -= (size_t)k;
		off += (uint64_t)k;
	}
	return 0;
}

int pfs_wcopy_write(pfs_wcopy *w, const void *buf, size_t n, uint64_t off)
{
	if (!n)
		return 0;
	if (off > UINT64_MAX - n)
		return -EFBIG;
	int rc = pwrite_all(w->fd, buf, n, off);
	if (rc)
		return rc;
	if ((rc = mark_written(w, off, off + n)))
		return rc;
	if (off + n > w->size)
		w->size = off + n;
	return 0;
}

int pfs_wcopy_truncate(pfs_wcopy *w, uint64_t size)
{
	if (ftruncate(w->fd, (off_t)size) < 0)
		return -errno;
	if (size < w->base_len)
		w->base_len = size;
	uint32_t i = first_reaching(w, size);
	if (i < w->n_written && w->written[i].start < size) {
		w->written[i].end = size;
		i++;
	}
	w->n_written = i;
	w->size = size;
	return 0;
}

/* ---- reading ------------------------------------------------------------ */

/* Where [off, ...) comes from and for how many bytes: 1 spool, 0 base. */
static int source_at(const pfs_wcopy *w, uint64_t off, uint64_t *run)
{
	uint32_t i = first_reaching(w, off + 1);
	if (i < w->n_written && w->written[i].start <= off) {
		*run = w->written[i].end - off;
		return 1;
	}
	uint64_t next = i < w->n_written ? w->written[i].start : w->size;
	if (off >= w->base_len) {
		*run = next - off; /* past the base: the spool's holes read as zeros */
		return 1;
	}
	*run = (next < w->base_len ? next : w->base_len) - off;
	return 0;
}

ssize_t pfs_wcopy_read(pfs_wcopy *w, void *buf, size_t n, uint64_t off)
{
	uint8_t *out = buf;
	size_t done = 0;
	if (off >= w->size)
		return 0;
	if (n > w->size - off)
		n = (size_t)(w->size - off);
	while (done < n) {
		uint64_t run;
		int spool = source_at(w, off + done, &run);
		size_t k = run < n - done ? (size_t)run : n - done;
		if (spool) {
			ssize_t r = pread(w->fd, out + done, k, (off_t)(off + done));
			if (r < 0 && errno == EINTR)
				continue;
			if (r < 0)
				return -errno;
			if (r == 0) {
				memset(out + done, 0, k);
				r = (ssize_t)k;
			}
			k = (size_t)r;
		} else {
			int rc = w->base_read(w->base_ctx, off + done, out + done, k);
			if (rc)
				return rc;
		}
		done += k;
	}
	return (ssize_t)done;
}

/* Copy base bytes [off, off + len) into the spool so they can be mapped. */
static int materialize(pfs_wcopy *w, uint64_t off, uint64_t len)
{
	uint8_t buf[1 << 16];
	for (uint64_t at = off; at < off + len;) {
		size_t k = off + len - at < sizeof(buf) ? (size_t)(off + len - at) : sizeof(buf);
		int rc = w->base_read(w->base_ctx, at, buf, k);
		if (!rc)
			rc = pwrite_all(w->fd, buf, k, at);
		if (rc)
			return rc;
		at += k;
	}
	return mark_written(w, off, off + len);
}

static int map_spool(pfs_wcopy *w)
{
	if (w->map && w->map_len == w->size)
		return 0;
	if (w->map)
		munmap((void *)w->map, w->map_len);
	w->map = NULL;
	w->map_len = 0;
	if (!w->size)
		return 0;
	void *p = mmap(NULL, (size_t)w->size, PROT_READ, MAP_SHARED, w->fd, 0);
	if (p == MAP_FAILED)
		return -errno;
	w->map = p;
	w->map_len = (size_t)w->size;
	return 0;
}

int pfs_wcopy_runs(pfs_wcopy *w, uint64_t off, uint64_t len, pfs_run_fn cb, void *ctx)
{
	if (off > w->size || len > w->size - off)
		return -EINVAL;
	/* base bytes without memory of their own go to the spool first */
	for (uint64_t at = off; at < off + len;) {
		uint64_t run, memlen = 0;
		int spool = source_at(w, at, &run);
		if (run > off + len - at)
			run = off + len - at;
		if (!spool && !(w->base_mem && w->base_mem(w->base_ctx, at, &memlen) && memlen >= run)) {
			int rc = materialize(w, at, run);
			if (rc)
				return rc;
		}
		at += run;
	}
	int rc = map_spool(w);
	for (uint64_t at = off; !rc && at < off + len;) {
		uint64_t run, memlen = 0;
		int spool = source_at(w, at, &run);
		if (run > off + len - at)
			run = off + len - at;
		const uint8_t *p = spool ? w->map + at : w->base_mem(w->base_ctx, at, &memlen);
		if (!p)
			return -EIO;
		rc = cb(ctx, p, run);
		at += run;
	}
	return rc;
}
