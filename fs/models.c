#include "models.h"

#include "edits.h"
#include "npy.h"
#include "repickle.h"
#include "rewrite.h"
#include "table.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

pf_view_key pfs_key_of(const struct stat *st)
{
	pf_view_key k = {
		.dev = (uint64_t)st->st_dev, .ino = (uint64_t)st->st_ino, .size = (uint64_t)st->st_size,
		.mtime_sec = (int64_t)st->st_mtim.tv_sec, .mtime_nsec = (int64_t)st->st_mtim.tv_nsec,
	};
	return k;
}

int pfs_errno_of(const pf_error *err)
{
	switch (err->code) {
	case PF_OK: return 0;
	case PF_E_NOMEM: return ENOMEM;
	case PF_E_LIMIT: return EFBIG;
	case PF_E_UNSUPPORTED: return EOPNOTSUPP;
	case PF_E_INVALID: return EINVAL;
	case PF_E_FORMAT: return EIO;
	default: return EIO; /* malformed model bytes */
	}
}

static uint64_t child_key(uint32_t dir, const char *name)
{
	return pf_hash_bytes(name, strlen(name), 0x9e3779b97f4a7c15ull ^ dir);
}

static int index_children(pfs_model *ms)
{
	ms->nlink = calloc(ms->view.n ? ms->view.n : 1, sizeof(*ms->nlink));
	if (!ms->nlink)
		return -1;
	for (uint32_t i = 0; i < ms->view.n; i++) {
		const pf_ventry *e = &ms->view.e[i];
		ms->nlink[i] = e->kind == PF_VE_DIR ? 2 : 1;
		if (e->kind == PF_VE_TENSOR && e->link != i)
			ms->nlink[e->link]++;
		if (i > 0 && !pf_hashmap_put(&ms->children, child_key(e->parent, e->name), i))
			return -1;
	}
	/* every path of a tensor counts all of them */
	for (uint32_t i = 0; i < ms->view.n; i++)
		if (ms->view.e[i].kind == PF_VE_TENSOR)
			ms->nlink[i] = ms->nlink[ms->view.e[i].link];
	return 0;
}

int64_t pfs_model_child(const pfs_model *ms, uint32_t dir, const char *name)
{
	uint32_t idx;
	if (pf_hashmap_get(&ms->children, child_key(dir, name), &idx) && ms->view.e[idx].parent == dir &&
	    strcmp(ms->view.e[idx].name, name) == 0)
		return idx;
	/* a hash collision between two names of one model: fall back to a scan */
	return pf_view_child(&ms->view, dir, name);
}

/* ---- the index cache --------------------------------------------------- */

static void cache_path(char *out, size_t cap, const char *dir, const pf_view_key *k)
{
	snprintf(out, cap, "%s/%016llx-%016llx.idx", dir, (unsigned long long)k->dev, (unsigned long long)k->ino);
}

static uint8_t *slurp(const char *path, size_t *len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	struct stat st;
	uint8_t *buf = NULL;
	if (fd < 0)
		return NULL;
	/* an index is small; a huge file there is not ours */
	if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_size > 0 && st.st_size < (256 << 20)) {
		buf = malloc((size_t)st.st_size);
		if (buf && pread(fd, buf, (size_t)st.st_size, 0) != st.st_size) {
			free(buf);
			buf = NULL;
		}
		*len = (size_t)st.st_size;
	}
	close(fd);
	return buf;
}

static bool cache_load(pfs_model *ms, const char *dir)
{
	char path[4096];
	size_t len = 0;
	pf_error err = {0};
	cache_path(path, sizeof(path), dir, &ms->key);
	uint8_t *buf = slurp(path, &len);
	if (!buf)
		return false;
	int rc = pf_view_decode(buf, len, &ms->key, &ms->view, &err);
	free(buf);
	return rc == 0; /* corrupt, foreign or stale: parsed again and rewritten */
}

static int mkdirs(const char *dir)
{
	char tmp[4096];
	snprintf(tmp, sizeof(tmp), "%s", dir);
	for (char *p = tmp + 1; *p; p++)
		if (*p == '/') {
			*p = '\0';
			if (mkdir(tmp, 0700) < 0 && errno != EEXIST)
				return -1;
			*p = '/';
		}
	return mkdir(tmp, 0700) < 0 && errno != EEXIST ? -1 : 0;
}

/* Write the entry beside its final name and rename it over: never half an entry. */
void pfs_model_store_cache(const pfs_model *ms, const char *dir)
{
	uint8_t *buf;
	size_t len;
	pf_error err = {0};
	char path[4096], tmp[4200];
	if (pf_view_encode(&ms->view, &ms->key, &buf, &len, &err))
		return;
	if (mkdirs(dir) == 0) {
		cache_path(path, sizeof(path), dir, &ms->key);
		snprintf(tmp, sizeof(tmp), "%s.tmp.%d", path, (int)getpid());
		int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
		if (fd >= 0) {
			bool ok = write(fd, buf, len) == (ssize_t)len;
			close(fd);
			if (!ok || rename(tmp, path) < 0)
				unlink(tmp);
		}
	}
	free(buf);
}

/* ---- loading ------------------------------------------------------------ */

static pfs_model *model_new(void)
{
	pfs_model *ms = calloc(1, sizeof(*ms));
	if (!ms)
		return NULL;
	atomic_init(&ms->refs, 1);
	ms->fd = -1;
	pf_hashmap_init(&ms->children);
	pf_hashmap_init(&ms->path_tensor);
	pthread_mutex_init(&ms->lock, NULL);
	return ms;
}

/* Parse the model (once); the caller holds ms->lock. */
static int ensure_parsed(pfs_model *ms, pf_error *err)
{
	if (ms->parsed)
		return 0;
	int rc = pf_mapfile_open_fd(&ms->mf, ms->fd);
	if (rc)
		return pf_fail(err, PF_E_FORMAT, 0, "cannot map the model file: %s", strerror(-rc));
	if (pf_model_open(&ms->model, ms->mf.data, ms->mf.len, NULL, err)) {
		pf_mapfile_close(&ms->mf);
		return -1;
	}
	if (pf_mapfile_error(&ms->mf) || pf_tree_build(&ms->model, &ms->tree, err)) {
		pf_fail(err, PF_E_FORMAT, 0, "I/O error reading the model file");
		pf_model_free(&ms->model);
		pf_mapfile_close(&ms->mf);
		return -1;
	}
	/* a view from the cache names tensors by path: index the parsed ones so */
	for (uint32_t i = 0; i < ms->tree.n_files; i++) {
		const char *path = ms->tree.files[i].path;
		if (!pf_hashmap_put(&ms->path_tensor, pf_hash_bytes(path, strlen(path), 7), i)) {
			pf_tree_free(&ms->tree);
			pf_model_free(&ms->model);
			pf_mapfile_close(&ms->mf);
			return pf_fail(err, PF_E_NOMEM, 0, "out of memory");
		}
	}
	ms->parsed = true;
	return 0;
}

/*
 * The view answers everything unless a tensor needs decoding: then the
 * parsed model stays (parsing again would cost more); else it goes, with
 * its buffer and pager thread.
 */
static void release_unneeded_parse(pfs_model *ms)
{
	for (uint32_t i = 0; i < ms->view.n; i++)
		if (ms->view.e[i].kind == PF_VE_TENSOR && ms->view.e[i].needs_model)
			return;
	pthread_mutex_lock(&ms->lock);
	if (ms->parsed) {
		pf_tree_free(&ms->tree);
		pf_model_free(&ms->model);
		pf_mapfile_close(&ms->mf);
		pf_hashmap_free(&ms->path_tensor);
		ms->parsed = false;
	}
	pthread_mutex_unlock(&ms->lock);
}

pfs_model *pfs_model_load(int dirfd, const char *name, const char *cache_dir, pf_error *err)
{
	pfs_model *ms = model_new();
	struct stat st;
	if (!ms) {
		pf_fail(err, PF_E_NOMEM, 0, "out of memory");
		return NULL;
	}
	ms->fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC);
	if (ms->fd < 0 || fstat(ms->fd, &st) < 0) {
		pf_fail(err, PF_E_FORMAT, 0, "cannot open: %s", strerror(errno));
		goto fail;
	}
	ms->key = pfs_key_of(&st);
	ms->mtime = st.st_mtim;
	ms->ctime = st.st_ctim;
	if (cache_dir && cache_load(ms, cache_dir)) {
		ms->from_cache = true;
	} else {
		pthread_mutex_lock(&ms->lock);
		int rc = ensure_parsed(ms, err);
		pthread_mutex_unlock(&ms->lock);
		if (rc || pf_view_build(&ms->model, &ms->tree, &ms->view, err))
			goto fail;
		if (cache_dir)
			pfs_model_store_cache(ms, cache_dir);
		release_unneeded_parse(ms);
	}
	if (index_children(ms)) {
		pf_fail(err, PF_E_NOMEM, 0, "out of memory");
		goto fail;
	}
	return ms;
fail:
	pfs_model_unref(ms);
	return NULL;
}

void pfs_model_ref(pfs_model *ms)
{
	atomic_fetch_add(&ms->refs, 1);
}

void pfs_model_unref(pfs_model *ms)
{
	if (!ms || atomic_fetch_sub(&ms->refs, 1) != 1)
		return;
	if (ms->parsed) {
		pf_tree_free(&ms->tree);
		pf_model_free(&ms->model);
		pf_mapfile_close(&ms->mf);
	}
	pf_view_free(&ms->view);
	pf_hashmap_free(&ms->children);
	pf_hashmap_free(&ms->path_tensor);
	free(ms->nlink);
	pthread_mutex_destroy(&ms->lock);
	if (ms->fd >= 0)
		close(ms->fd);
	free(ms);
}

/* Tensor data that must be decoded (strided, latin-1 text, inflated). */
static ssize_t read_decoded(pfs_model *ms, const pf_ventry *e, uint64_t off, void *buf, size_t n)
{
	pf_error err = {0};
	pthread_mutex_lock(&ms->lock);
	int rc = ensure_parsed(ms, &err);
	pthread_mutex_unlock(&ms->lock);
	if (rc)
		return -pfs_errno_of(&err);
	/* the view came from this very file version: its paths are the tree's */
	uint32_t f;
	const pf_ventry *first = &ms->view.e[e->link];
	if (!pf_hashmap_get(&ms->path_tensor, pf_hash_bytes(first->path, strlen(first->path), 7), &f) ||
	    strcmp(ms->tree.files[f].path, first->path) != 0)
		return -EIO;
	const pf_tensor *t = &ms->model.tensors[ms->tree.files[f].tensor];
	if (t->nbytes != e->data_len)
		return -EIO;
	if (pf_tensor_read(&ms->model, t, off, buf, n, &err))
		return -pfs_errno_of(&err);
	return (ssize_t)n;
}

ssize_t pfs_model_read(pfs_model *ms, uint32_t idx, uint64_t off, void *buf, size_t n)
{
	const pf_ventry *e = &ms->view.e[idx];
	uint8_t *out = buf;
	size_t done = 0;

	if (off >= e->size)
		return 0;
	if (n > e->size - off)
		n = (size_t)(e->size - off);
	if (e->kind != PF_VE_TENSOR) {
		memcpy(out, e->text + off, n);
		return (ssize_t)n;
	}
	if (off < e->header_len) {
		size_t h = e->header_len - off < n ? (size_t)(e->header_len - off) : n;
		memcpy(out, e->header + off, h);
		done = h;
		off += h;
	}
	if (done == n)
		return (ssize_t)n;
	uint64_t doff = off - e->header_len;
	size_t want = n - done;
	if (e->needs_model) {
		ssize_t r = read_decoded(ms, e, doff, out + done, want);
		return r < 0 ? r : (ssize_t)(done + (size_t)r);
	}
	while (want > 0) {
		ssize_t r = pread(ms->fd, out + done, want, (off_t)((uint64_t)e->data_off + doff));
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -errno;
		if (r == 0)
			return -EIO; /* the file is shorter than when it was loaded */
		done += (size_t)r;
		doff += (uint64_t)r;
		want -= (size_t)r;
	}
	return (ssize_t)done;
}

/* ---- rewriting ---------------------------------------------------------- */

static int write_all(int to, const uint8_t *p, uint64_t len)
{
	while (len) {
		ssize_t n = write(to, p, len > (1u << 30) ? (1u << 30) : (size_t)len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return n < 0 ? -errno : -EIO;
		p += n;
		len -= (uint64_t)n;
	}
	return 0;
}

/* Append [off, off + len) of from to the end of to (written so far: *out). */
static int copy_range(int from, uint64_t off, uint64_t len, int to, loff_t *out)
{
	loff_t in = (loff_t)off;
	uint64_t end = off + len;
	while ((uint64_t)in < end) {
		ssize_t n = copy_file_range(from, &in, to, out, (size_t)(end - (uint64_t)in), 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EXDEV || errno == ENOSYS || errno == EOPNOTSUPP || errno == EINVAL)) {
			/* no in-kernel copy here: plain reads and writes */
			char buf[1 << 16];
			uint64_t want = end - (uint64_t)in < sizeof(buf) ? end - (uint64_t)in : sizeof(buf);
			ssize_t r = pread(from, buf, (size_t)want, in);
			if (r < 0)
				return -errno;
			if (r == 0)
				return -EIO;
			if (pwrite(to, buf, (size_t)r, *out) != r)
				return errno ? -errno : -EIO;
			in += r;
			*out += r;
			continue;
		}
		if (n < 0)
			return -errno;
		if (n == 0)
			return -EIO;
	}
	return 0;
}

/* Writeback is started every this many bytes, so the final fsync has little left to wait for. */
#define WRITEBACK_CHUNK (32u << 20)

/* Append one piece (a range of the old file, or new bytes) to the new file at *out. */
static int write_piece(int from, int to, const uint8_t *bytes, uint64_t off, uint64_t len, loff_t *out)
{
	if (!bytes)
		return copy_range(from, off, len, to, out);
	if (lseek(to, *out, SEEK_SET) < 0)
		return -errno;
	int rc = write_all(to, bytes, len);
	*out += (loff_t)len;
	return rc;
}

/*
 * The new file, piece by piece: ranges of the old file and new bytes.
 * Large pieces go in chunks, each followed by an asynchronous start of its
 * writeback (sync_file_range), so that the disk writes while the copy goes
 * on instead of all at the fsync.
 */
static int write_plan(int from, int to, const pf_plan *pl)
{
	loff_t out = 0, kicked = 0;
	for (uint32_t i = 0; i < pl->n; i++) {
		const pf_piece *pc = &pl->v[i];
		for (uint64_t done = 0; done < pc->len;) {
			uint64_t n = pc->len - done < WRITEBACK_CHUNK ? pc->len - done : WRITEBACK_CHUNK;
			int rc = write_piece(from, to, pc->bytes ? pc->bytes + done : NULL, pc->off + done, n, &out);
			if (rc)
				return rc;
			done += n;
			if (out - kicked >= (loff_t)WRITEBACK_CHUNK) {
				sync_file_range(to, kicked, out - kicked, SYNC_FILE_RANGE_WRITE); /* a hint: errors come at fsync */
				kicked = out;
			}
		}
	}
	return (uint64_t)out == pl->size ? 0 : -EIO;
}

/* Is rel still the file ms was loaded from? */
static bool unchanged(const pfs_model *ms, int dirfd, const char *rel)
{
	struct stat st;
	if (fstatat(dirfd, rel, &st, 0) < 0)
		return false;
	pf_view_key k = pfs_key_of(&st);
	return k.dev == ms->key.dev && k.ino == ms->key.ino && k.size == ms->key.size &&
	       k.mtime_sec == ms->key.mtime_sec && k.mtime_nsec == ms->key.mtime_nsec;
}

/* Write the planned new file to a temporary file beside rel, then rename it over rel. */
static int commit_plan(pfs_model *ms, int dirfd, const char *rel, const pf_plan *pl)
{
	char tmp[8400], dir[4096];
	const char *slash = strrchr(rel, '/');
	const char *base = slash ? slash + 1 : rel;
	int dlen = slash ? (int)(slash - rel) : 0;
	struct stat st;
	int rc = 0, fd = -1;

	if (fstat(ms->fd, &st) < 0)
		return -errno;
	snprintf(dir, sizeof(dir), "%.*s", dlen ? dlen : 1, dlen ? rel : ".");
	for (unsigned attempt = 0;; attempt++) {
		snprintf(tmp, sizeof(tmp), "%s%s.%s.picklefs-%06x", dlen ? dir : "", dlen ? "/" : "", base,
			 (unsigned)((getpid() * 2654435761u + attempt * 40503u) & 0xffffff));
		fd = openat(dirfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, st.st_mode & 07777);
		if (fd >= 0 || errno != EEXIST || attempt > 100)
			break;
	}
	if (fd < 0)
		return -errno;
	if (fchown(fd, st.st_uid, st.st_gid) < 0) {
		/* not allowed for other owners: the file keeps ours, as cp would */
	}
	rc = write_plan(ms->fd, fd, pl);
	if (!rc && fsync(fd) < 0)
		rc = -errno;
	if (close(fd) < 0 && !rc)
		rc = -errno;
	if (!rc && !unchanged(ms, dirfd, rel))
		rc = -ESTALE; /* someone else changed it: theirs is kept */
	if (!rc && renameat(dirfd, tmp, dirfd, rel) < 0)
		rc = -errno;
	if (rc) {
		unlinkat(dirfd, tmp, 0);
		return rc;
	}
	int dfd = openat(dirfd, dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0)
		return -errno;
	rc = fsync(dfd) < 0 ? -errno : 0;
	close(dfd);
	return rc;
}

/* ---- working copies of entries ------------------------------------------ */

typedef struct entry_base {
	pfs_model *ms;
	uint32_t entry;
} entry_base;

static int base_read(void *ctx, uint64_t off, void *buf, size_t n)
{
	entry_base *b = ctx;
	ssize_t r = pfs_model_read(b->ms, b->entry, off, buf, n);
	return r < 0 ? (int)r : (size_t)r == n ? 0 : -EIO;
}

/* Texts and headers are memory; tensor data is, once the model is mapped. */
static const uint8_t *base_mem(void *ctx, uint64_t off, uint64_t *n)
{
	entry_base *b = ctx;
	const pf_ventry *e = &b->ms->view.e[b->entry];
	if (e->kind != PF_VE_TENSOR) {
		*n = off < e->size ? e->size - off : 0;
		return *n ? (const uint8_t *)e->text + off : NULL;
	}
	if (off < e->header_len) {
		*n = e->header_len - off;
		return e->header + off;
	}
	/* the mapping exists while the model is parsed: during a commit */
	if (e->needs_model || !b->ms->parsed || e->data_off < 0 || off - e->header_len >= e->data_len) {
		*n = 0;
		return NULL;
	}
	*n = e->data_len - (off - e->header_len);
	return b->ms->mf.data + e->data_off + (off - e->header_len);
}

static void base_release(void *ctx)
{
	entry_base *b = ctx;
	pfs_model_unref(b->ms);
	free(b);
}

/* The folder of rel in dirfd, where spool and temporary files go. */
static int folder_of(int dirfd, const char *rel)
{
	const char *slash = strrchr(rel, '/');
	if (!slash)
		return openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	char *dir = strndup(rel, (size_t)(slash - rel));
	int fd = dir ? openat(dirfd, dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -1;
	free(dir);
	return fd;
}

pfs_wcopy *pfs_model_wcopy(pfs_model *ms, uint32_t entry, int dirfd, const char *rel, bool empty)
{
	int folder = folder_of(dirfd, rel);
	pfs_wcopy *w = NULL;
	if (folder < 0)
		return NULL;
	if (empty || !ms) {
		w = pfs_wcopy_new(folder, 0, NULL, NULL, NULL, NULL);
	} else {
		entry_base *b = malloc(sizeof(*b));
		if (b) {
			pfs_model_ref(ms);
			*b = (entry_base){ms, entry};
			w = pfs_wcopy_new(folder, ms->view.e[entry].size, base_read, base_mem, b, base_release);
			if (!w)
				base_release(b);
		}
	}
	int saved = errno;
	close(folder);
	errno = saved;
	return w;
}

static int wcopy_base_read(void *ctx, uint64_t off, void *buf, size_t n)
{
	ssize_t r = pfs_wcopy_read(ctx, buf, n, off);
	return r < 0 ? (int)r : (size_t)r == n ? 0 : -EIO;
}

static void wcopy_base_release(void *ctx)
{
	pfs_wcopy_unref(ctx);
}

pfs_wcopy *pfs_wcopy_fork(pfs_wcopy *old, int dirfd, const char *rel)
{
	int folder = folder_of(dirfd, rel);
	if (folder < 0)
		return NULL;
	pfs_wcopy_ref(old);
	pfs_wcopy *w = pfs_wcopy_new(folder, old->size, wcopy_base_read, NULL, old, wcopy_base_release);
	if (!w)
		pfs_wcopy_unref(old);
	close(folder);
	return w;
}

/* ---- checking what was written ------------------------------------------- */

/* The whole of a written text, NUL-terminated (malloc); NULL with *rc set. */
static char *read_text(pfs_wcopy *wc, uint64_t max, int *rc)
{
	if (wc->size > max) {
		*rc = -EINVAL;
		return NULL;
	}
	char *t = malloc((size_t)wc->size + 1);
	if (!t) {
		*rc = -ENOMEM;
		return NULL;
	}
	ssize_t r = pfs_wcopy_read(wc, t, (size_t)wc->size, 0);
	if (r < 0 || (uint64_t)r != wc->size) {
		*rc = r < 0 ? (int)r : -EIO;
		free(t);
		return NULL;
	}
	t[wc->size] = '\0';
	return t;
}

/* numpy writes '<' or '=' for little-endian, '|' for one-byte kinds: all the same here */
static bool same_descr(const char *a, const char *b)
{
	if ((a[0] == '<' || a[0] == '=' || a[0] == '|') && (b[0] == '<' || b[0] == '=' || b[0] == '|'))
		return strcmp(a + 1, b + 1) == 0;
	return strcmp(a, b) == 0;
}

static const char *shape_text(const pf_npy_info *h, char *buf, size_t cap)
{
	size_t n = (size_t)snprintf(buf, cap, "(");
	for (unsigned d = 0; d < h->ndim && n < cap; d++)
		n += (size_t)snprintf(buf + n, cap - n, d ? ", %lld" : "%lld", (long long)h->shape[d]);
	if (n < cap)
		snprintf(buf + n, cap - n, h->ndim == 1 ? ",)" : ")");
	return buf;
}

/* Where a written .npy's data starts, once it matches the tensor's dtype and shape. */
static int check_npy(const pf_ventry *e, pfs_wcopy *wc, uint64_t *data_off, pf_error *why)
{
	uint8_t head[1 << 16];
	pf_npy_info want, got;
	pf_error perr = {0};
	size_t n = wc->size < sizeof(head) ? (size_t)wc->size : sizeof(head);
	ssize_t r = pfs_wcopy_read(wc, head, n, 0);
	if (r < 0)
		return (int)r;
	if (pf_npy_parse(e->header, e->header_len, &want, &perr))
		return -EIO;
	if (pf_npy_parse(head, (size_t)r, &got, why)) {
		why->code = PF_E_INVALID;
		return -EINVAL;
	}
	bool same = same_descr(want.descr, got.descr) && want.fortran == got.fortran && want.ndim == got.ndim;
	for (unsigned d = 0; same && d < want.ndim; d++)
		same = want.shape[d] == got.shape[d];
	if (!same) {
		char gs[64], ws[64];
		pf_fail(why, PF_E_INVALID, 0, "the new .npy is %s %s%s, the tensor %s %s%s", got.descr,
			shape_text(&got, gs, sizeof(gs)), got.fortran ? " (Fortran order)" : "", want.descr,
			shape_text(&want, ws, sizeof(ws)), want.fortran ? " (Fortran order)" : "");
		return -EINVAL;
	}
	if (got.data_off > wc->size || wc->size - got.data_off != e->data_len) {
		pf_fail(why, PF_E_INVALID, got.data_off, "the new .npy holds %llu data bytes, the tensor %llu",
			(unsigned long long)(wc->size - (got.data_off < wc->size ? got.data_off : wc->size)),
			(unsigned long long)e->data_len);
		return -EINVAL;
	}
	*data_off = got.data_off;
	return 0;
}

/* Text files are small; anything this much larger than meta.json was is not an edit of it. */
static uint64_t text_max(const pf_ventry *e)
{
	return e->size * 4 + (1u << 20);
}

int pfs_model_check(pfs_model *ms, uint32_t entry, pfs_wcopy *wc, pf_error *why)
{
	const pf_ventry *e = &ms->view.e[entry];
	int rc = 0;
	uint64_t data_off;
	char *text;

	switch (e->kind) {
	case PF_VE_TENSOR:
		return check_npy(e, wc, &data_off, why);
	case PF_VE_DEVICE:
		if (!(text = read_text(wc, 64, &rc))) {
			if (rc == -EINVAL)
				pf_fail(why, PF_E_INVALID, 0, "not a device");
			return rc;
		}
		rc = pf_device_parse(text, (size_t)wc->size, NULL) ? -EINVAL : 0;
		if (rc)
			pf_fail(why, PF_E_INVALID, 0, "not a device: cpu, cuda[:N], mps[:N], xpu[:N] or meta");
		free(text);
		return rc;
	case PF_VE_GLOBALS:
	case PF_VE_META: {
		pfs_changes_set cs;
		pfs_changes_init(&cs);
		rc = pfs_model_changes(ms, &(pfs_change){entry, wc}, 1, &cs, why);
		pfs_changes_free(&cs);
		return rc;
	}
	default:
		return -EISDIR;
	}
}

/* ---- the changes of a commit as the codec takes them ------------------------ */

void pfs_changes_init(pfs_changes_set *cs)
{
	memset(cs, 0, sizeof(*cs));
	pf_arena_init(&cs->arena);
}

void pfs_changes_free(pfs_changes_set *cs)
{
	for (uint32_t i = 0; i < cs->n_texts; i++)
		free(cs->texts[i]);
	free(cs->texts);
	free(cs->edits);
	free(cs->data);
	free(cs->runs);
	pf_arena_free(&cs->arena);
	memset(cs, 0, sizeof(*cs));
}

/* Room for need items (table.h); -ENOMEM (or the limit's errno) when there is none. */
static int grow(void **v, uint32_t *cap, uint32_t need, size_t size)
{
	pf_error err = {0};
	return pf_table_grow(v, cap, need, size, &err) ? -pfs_errno_of(&err) : 0;
}

static int keep_text(pfs_changes_set *cs, char *t)
{
	if (grow((void **)&cs->texts, &cs->cap_texts, cs->n_texts + 1, sizeof(*cs->texts))) {
		free(t);
		return -ENOMEM;
	}
	cs->texts[cs->n_texts++] = t;
	return 0;
}

static int add_edits(pfs_changes_set *cs, const pf_span_edit *v, uint32_t n)
{
	if (!n)
		return 0; /* v may be NULL then (memcpy of NULL is undefined even for 0 bytes) */
	if (grow((void **)&cs->edits, &cs->cap_edits, cs->n_edits + n, sizeof(*cs->edits)))
		return -ENOMEM;
	memcpy(cs->edits + cs->n_edits, v, (size_t)n * sizeof(*v));
	cs->n_edits += n;
	return 0;
}

static int add_run(void *ctx, const uint8_t *p, uint64_t len)
{
	pfs_changes_set *cs = ctx;
	if (grow((void **)&cs->runs, &cs->cap_runs, cs->n_runs + 1, sizeof(*cs->runs)))
		return -ENOMEM;
	cs->runs[cs->n_runs++] = (pf_bytes_run){p, len};
	return 0;
}

/* The parsed tensor a view entry shows (the view may come from the cache). */
static int tensor_of_entry(pfs_model *ms, uint32_t entry, uint32_t *tensor)
{
	const pf_ventry *first = &ms->view.e[ms->view.e[entry].link];
	uint32_t f;
	if (!pf_hashmap_get(&ms->path_tensor, pf_hash_bytes(first->path, strlen(first->path), 7), &f) ||
	    strcmp(ms->tree.files[f].path, first->path) != 0)
		return -EIO;
	*tensor = ms->tree.files[f].tensor;
	return ms->model.tensors[*tensor].nbytes == first->data_len ? 0 : -EIO;
}

static int tensor_change(pfs_model *ms, const pfs_change *c, pfs_changes_set *cs, pf_error *why)
{
	const pf_ventry *e = &ms->view.e[c->entry];
	uint64_t data_off;
	uint32_t tensor, first = cs->n_runs;
	int rc = check_npy(e, c->wc, &data_off, why);
	if (!rc)
		rc = tensor_of_entry(ms, c->entry, &tensor);
	if (!rc)
		rc = pfs_wcopy_runs(c->wc, data_off, e->data_len, add_run, cs);
	if (!rc && grow((void **)&cs->data, &cs->cap_data, cs->n_data + 1, sizeof(*cs->data)))
		rc = -ENOMEM;
	if (rc)
		return rc;
	/* runs may still move (realloc): pointed to once all are in */
	cs->data[cs->n_data++] = (pf_tensor_data){.tensor = tensor, .runs = NULL, .n_runs = cs->n_runs - first};
	cs->data[cs->n_data - 1].runs = (const pf_bytes_run *)(uintptr_t)first;
	return 0;
}

static int text_change(pfs_model *ms, const pfs_change *c, pfs_changes_set *cs, pf_error *why)
{
	const pf_ventry *e = &ms->view.e[c->entry];
	int rc = 0;
	char *text = read_text(c->wc, text_max(e), &rc);
	pf_span_edit *v = NULL;
	uint32_t n = 0;
	if (!text) {
		if (rc == -EINVAL)
			pf_fail(why, PF_E_INVALID, 0, "%s: far larger than it was", e->name);
		return rc;
	}
	if ((rc = keep_text(cs, text)))
		return rc;
	if (e->kind == PF_VE_DEVICE) {
		if (pf_device_parse(text, (size_t)c->wc->size, &cs->dev))
			return pf_fail(why, PF_E_INVALID, 0, "not a device"), -EINVAL;
		cs->ch.device = &cs->dev;
		return 0;
	}
	if (e->kind == PF_VE_GLOBALS)
		rc = pf_globals_edits(&ms->model, text, (size_t)c->wc->size, &v, &n, &cs->arena, why);
	else
		rc = pf_meta_edits(&ms->model, &ms->tree, text, (size_t)c->wc->size, &v, &n, &cs->arena, why);
	if (rc)
		return -pfs_errno_of(why);
	return add_edits(cs, v, n);
}

int pfs_model_changes(pfs_model *ms, const pfs_change *c, uint32_t n, pfs_changes_set *cs, pf_error *why)
{
	int rc;
	pthread_mutex_lock(&ms->lock);
	rc = ensure_parsed(ms, why) ? -pfs_errno_of(why) : 0;
	pthread_mutex_unlock(&ms->lock);
	for (uint32_t i = 0; !rc && i < n; i++)
		rc = ms->view.e[c[i].entry].kind == PF_VE_TENSOR ? tensor_change(ms, &c[i], cs, why)
								  : text_change(ms, &c[i], cs, why);
	if (rc)
		return rc;
	for (uint32_t i = 0; i < cs->n_data; i++)
		cs->data[i].runs = cs->runs + (uintptr_t)cs->data[i].runs;
	cs->ch.edits = cs->edits;
	cs->ch.n_edits = cs->n_edits;
	cs->ch.data = cs->data;
	cs->ch.n_data = cs->n_data;
	return 0;
}

int pfs_model_commit(pfs_model *ms, int dirfd, const char *rel, const pfs_change *c, uint32_t n, pf_error *why)
{
	pfs_changes_set cs;
	pf_plan pl;
	int rc;

	if (!unchanged(ms, dirfd, rel))
		return -ESTALE;
	pfs_changes_init(&cs);
	pf_plan_init(&pl);
	rc = pfs_model_changes(ms, c, n, &cs, why);
	if (!rc && pf_rewrite(&ms->model, &cs.ch, &pl, why))
		rc = -pfs_errno_of(why);
	if (!rc && pl.n)
		rc = commit_plan(ms, dirfd, rel, &pl);
	pf_plan_free(&pl);
	pfs_changes_free(&cs);
	return rc;
}
