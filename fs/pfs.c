#include "pfs.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <syslog.h>
#include <unistd.h>

#include "hashmap.h"
#include "models.h"
#include "names.h"

/* Model entries change only when their file does, and we say so then. */
#define LONG_TIMEOUT 3600.0
/* Mirrored entries: changes come from outside, unannounced. */
#define SHORT_TIMEOUT 1.0
/* A model's own directory: asked every time, so a replaced file is seen at once. */
#define MODEL_TIMEOUT 0.0

typedef enum node_kind {
	N_PASS,   /* a mirrored file, folder or symlink of SOURCE */
	N_MODEL,  /* a model file, shown as its directory */
	N_ENTRY,  /* a file or directory inside a model directory */
} node_kind;

typedef struct node {
	uint64_t ino;
	uint64_t nlookup;
	node_kind kind;
	char *rel;            /* N_PASS/N_MODEL: path in SOURCE ("." = its root);
	                         N_ENTRY: path inside the model directory */
	struct node *model;   /* N_ENTRY: the model it belongs to */
	pfs_model *ms;        /* N_MODEL: the loaded version, NULL until entered */
	pfs_model *opened_ms; /* N_ENTRY: version last opened (keep_cache only if unchanged) */
	bool failed;          /* N_MODEL: did not parse; shown as the plain file */
	pf_view_key failed_key;
	bool sniffed;         /* sniff_model's answer is known for sniff_key */
	bool sniff_model;
	pf_view_key sniff_key;
} node;

typedef struct notice {
	struct notice *next;
	fuse_ino_t ino;       /* inval_inode when name is NULL */
	fuse_ino_t parent;
	char *name;
} notice;

struct pfs {
	pfs_config cfg;
	int src_fd;           /* SOURCE, or the folder of a single model file */
	char *single;         /* single-file mode: the model's name in src_fd */
	pthread_mutex_t lock; /* the node table and every node field */
	pthread_mutex_t commit_lock; /* one rewrite of a model file at a time */
	pf_hashmap by_ino;    /* ino -> index into nodes */
	node **nodes;
	uint32_t n_nodes, cap_nodes;
	struct fuse_session *se;
	pthread_t notifier;
	bool notifier_running, stopping;
	pthread_cond_t notice_cv;
	notice *notices;
};

typedef struct handle {
	int fd;               /* mirrored file, or -1 */
	pfs_model *ms;        /* model entry: the version opened */
	uint32_t entry;
	node *model;          /* the `device` file opened for writing: its model */
	bool writing, dirty;
	char wbuf[32];        /* what was written to `device` (a device string is short) */
	size_t wlen;
} handle;

/* ---- logging ----------------------------------------------------------- */

static void pfs_log(const pfs *fs, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void pfs_log(const pfs *fs, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	if (fs->cfg.foreground) {
		fputs("picklefs: ", stderr);
		vfprintf(stderr, fmt, ap);
		fputc('\n', stderr);
	} else {
		vsyslog(LOG_WARNING, fmt, ap);
	}
	va_end(ap);
}

/* ---- kernel cache invalidation (from a thread of its own: never inside a request) ---- */

static void *notifier_main(void *arg)
{
	pfs *fs = arg;
	pthread_mutex_lock(&fs->lock);
	for (;;) {
		while (!fs->notices && !fs->stopping)
			pthread_cond_wait(&fs->notice_cv, &fs->lock);
		if (fs->stopping)
			break;
		notice *n = fs->notices;
		fs->notices = n->next;
		pthread_mutex_unlock(&fs->lock);
		if (n->name)
			fuse_lowlevel_notify_inval_entry(fs->se, n->parent, n->name, strlen(n->name));
		else
			fuse_lowlevel_notify_inval_inode(fs->se, n->ino, 0, 0);
		free(n->name);
		free(n);
		pthread_mutex_lock(&fs->lock);
	}
	pthread_mutex_unlock(&fs->lock);
	return NULL;
}

/* Queue a notice; the caller holds fs->lock. */
static void queue_notice(pfs *fs, fuse_ino_t ino, fuse_ino_t parent, const char *name)
{
	notice *n = calloc(1, sizeof(*n));
	if (!n || !fs->se || !fs->notifier_running) {
		free(n);
		return;
	}
	n->ino = ino;
	n->parent = parent;
	n->name = name ? strdup(name) : NULL;
	notice **tail = &fs->notices;
	while (*tail)
		tail = &(*tail)->next;
	*tail = n;
	pthread_cond_signal(&fs->notice_cv);
}

/* ---- the node table ---------------------------------------------------- */

/* Inode numbers are a hash of the path in the mount: the same across remounts. */
static uint64_t ino_of(const char *model_rel, const char *rel)
{
	uint64_t h = pf_hash_bytes(rel, strlen(rel), model_rel ? pf_hash_bytes(model_rel, strlen(model_rel), 1) : 0);
	return h <= FUSE_ROOT_ID ? h + 2 : h;
}

static node *node_get(pfs *fs, fuse_ino_t ino)
{
	uint32_t idx;
	return pf_hashmap_get(&fs->by_ino, ino, &idx) ? fs->nodes[idx] : NULL;
}

static bool same_node(const node *n, node_kind kind, const node *model, const char *rel)
{
	bool kind_ok = n->kind == kind || (n->kind != N_ENTRY && kind != N_ENTRY);
	return kind_ok && n->model == model && strcmp(n->rel, rel) == 0;
}

/* The node for (kind, model, rel), made on first use; NULL when out of memory. */
static node *node_find_or_add(pfs *fs, node_kind kind, node *model, const char *rel, uint64_t ino)
{
	for (;;) {
		node *n = node_get(fs, ino);
		if (!n)
			break;
		if (same_node(n, kind, model, rel))
			return n;
		ino++; /* a hash collision: the next free number, in first-use order */
	}
	if (fs->n_nodes == fs->cap_nodes) {
		uint32_t cap = fs->cap_nodes ? fs->cap_nodes * 2 : 256;
		node **nn = realloc(fs->nodes, cap * sizeof(*nn));
		if (!nn)
			return NULL;
		fs->nodes = nn;
		fs->cap_nodes = cap;
	}
	node *n = calloc(1, sizeof(*n));
	if (!n || !(n->rel = strdup(rel))) {
		free(n);
		return NULL;
	}
	n->ino = ino;
	n->kind = kind;
	n->model = model;
	if (!pf_hashmap_put(&fs->by_ino, ino, fs->n_nodes)) {
		free(n->rel);
		free(n);
		return NULL;
	}
	fs->nodes[fs->n_nodes++] = n;
	return n;
}

static char *join(const char *dir, const char *name)
{
	size_t dl = strlen(dir), nl = strlen(name);
	char *p = malloc(dl + nl + 2);
	if (!p)
		return NULL;
	if (strcmp(dir, ".") == 0)
		memcpy(p, name, nl + 1);
	else
		sprintf(p, "%s/%s", dir, name);
	return p;
}

/* A rewrite's temporary file, ".NAME.picklefs-XXXXXX" (fs/models.c commit_patched). */
static bool is_commit_temp(const char *name)
{
	const char *tag = strstr(name, ".picklefs-");
	if (name[0] != '.' || !tag || strlen(tag) != 16)
		return false;
	for (const char *p = tag + 10; *p; p++)
		if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')))
			return false;
	return true;
}

/* ---- models ------------------------------------------------------------ */

/*
 * Is the regular file at rel a model (pf_model_sniff)?  No pickle is run;
 * only the file's head and tail are read.
 * 1 yes, 0 no; *err says why not when the file looked like a zip.
 */
static int sniff_model(pfs *fs, const char *rel, pf_error *err)
{
	int fd = openat(fs->src_fd, rel, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	pf_mapfile mf;
	int yes = 0;
	if (fd < 0)
		return 0;
	if (pf_mapfile_open_direct(&mf, fd) == 0) {
		yes = pf_model_sniff(mf.data, mf.len, err);
		pf_mapfile_close(&mf);
	}
	close(fd);
	return yes;
}

static bool key_eq(const pf_view_key *a, const pf_view_key *b)
{
	return a->dev == b->dev && a->ino == b->ino && a->size == b->size && a->mtime_sec == b->mtime_sec &&
	       a->mtime_nsec == b->mtime_nsec;
}

/* Drop what the kernel caches of a model's entries; the caller holds fs->lock. */
static void invalidate_model(pfs *fs, node *m)
{
	for (uint32_t i = 0; i < fs->n_nodes; i++)
		if (fs->nodes[i]->model == m)
			queue_notice(fs, fs->nodes[i]->ino, 0, NULL);
	queue_notice(fs, m->ino, 0, NULL);
}

/*
 * Notice a model file that changed since it was loaded: forget the loaded
 * version (it is loaded again when next entered).  The caller holds fs->lock.
 */
static void check_model(pfs *fs, node *m, const struct stat *st)
{
	pf_view_key k = pfs_key_of(st);
	if (m->ms && !key_eq(&m->ms->key, &k)) {
		pfs_model_unref(m->ms);
		m->ms = NULL;
		invalidate_model(fs, m);
	}
	if (m->failed && !key_eq(&m->failed_key, &k))
		m->failed = false;
}

/* The loaded model of m, loading it if needed; NULL when it does not parse. */
static pfs_model *model_of(pfs *fs, node *m)
{
	if (m->failed)
		return NULL;
	if (m->ms)
		return m->ms;
	pf_error err = {0};
	pfs_model *ms = pfs_model_load(fs->src_fd, m->rel, fs->cfg.cache_dir, &err);
	if (!ms) {
		struct stat st;
		m->failed = true;
		if (fstatat(fs->src_fd, m->rel, &st, 0) == 0)
			m->failed_key = pfs_key_of(&st);
		pfs_log(fs, "%s: offset %llu: %s (%s)", m->rel, (unsigned long long)err.offset, err.msg,
			pf_code_name(err.code));
		/* it is a plain file after all: the kernel must look the name up again */
		if (!fs->single) {
			char *slash = strrchr(m->rel, '/');
			char *parent_rel = slash ? strndup(m->rel, (size_t)(slash - m->rel)) : strdup(".");
			uint64_t pino = parent_rel && strcmp(parent_rel, ".") ? ino_of(NULL, parent_rel) : FUSE_ROOT_ID;
			node *p = pino == FUSE_ROOT_ID ? node_get(fs, FUSE_ROOT_ID) : NULL;
			if (!p && parent_rel)
				for (uint32_t i = 0; i < fs->n_nodes; i++)
					if (fs->nodes[i]->kind == N_PASS && !strcmp(fs->nodes[i]->rel, parent_rel))
						p = fs->nodes[i];
			if (p)
				queue_notice(fs, 0, p->ino, slash ? slash + 1 : m->rel);
			free(parent_rel);
		}
		return NULL;
	}
	m->ms = ms;
	return ms;
}

/* Index of an entry node in its model's current version, or -1. */
static int64_t entry_index(pfs_model *ms, const char *path)
{
	int64_t idx = 0;
	const char *p = path;
	char comp[PF_NAME_MAX + 1];
	while (*p) {
		const char *slash = strchr(p, '/');
		size_t len = slash ? (size_t)(slash - p) : strlen(p);
		if (len > PF_NAME_MAX)
			return -1;
		memcpy(comp, p, len);
		comp[len] = '\0';
		idx = pfs_model_child(ms, (uint32_t)idx, comp);
		if (idx < 0)
			return -1;
		p += len + (slash ? 1 : 0);
	}
	return idx;
}

/* ---- attributes -------------------------------------------------------- */

static void entry_stat(pfs_model *ms, uint32_t idx, const struct stat *src, struct stat *st)
{
	const pf_ventry *e = &ms->view.e[idx];
	memset(st, 0, sizeof(*st));
	st->st_uid = src->st_uid;
	st->st_gid = src->st_gid;
	st->st_mtim = ms->mtime;
	st->st_ctim = ms->ctime;
	st->st_atim = ms->mtime;
	mode_t r = src->st_mode & 0444;
	if (e->kind == PF_VE_DIR) {
		st->st_mode = S_IFDIR | r | (r >> 2); /* x wherever r */
		st->st_nlink = 2;
	} else {
		st->st_mode = S_IFREG | r;
		if (e->kind == PF_VE_DEVICE)
			st->st_mode |= src->st_mode & 0200; /* `echo cpu > device` */
		st->st_nlink = ms->nlink[idx];
	}
	st->st_size = (off_t)e->size;
	st->st_blksize = 65536;
	st->st_blocks = (blkcnt_t)((e->size + 511) / 512);
}

/* The model file's own stat, for the attributes of everything inside it. */
static int model_file_stat(pfs *fs, node *m, struct stat *st)
{
	return fstatat(fs->src_fd, m->rel, st, 0) < 0 ? -errno : 0;
}

/* Attributes of a node; the caller holds fs->lock. 0 or -errno. */
static int node_stat(pfs *fs, node *n, struct stat *st)
{
	struct stat src;
	int rc;
	switch (n->kind) {
	case N_PASS:
		if (fstatat(fs->src_fd, n->rel, st, AT_SYMLINK_NOFOLLOW) < 0)
			return -errno;
		break;
	case N_MODEL:
		if ((rc = model_file_stat(fs, n, &src)))
			return rc;
		check_model(fs, n, &src);
		/* a model that did not parse is its plain file, except as the mount's root */
		if (n->failed && n->ino != FUSE_ROOT_ID) {
			*st = src;
			break;
		}
		if (n->ms) {
			entry_stat(n->ms, 0, &src, st);
		} else {
			/* not entered yet: a directory with the file's times, parsing nothing */
			memset(st, 0, sizeof(*st));
			st->st_mode = S_IFDIR | (src.st_mode & 0444) | ((src.st_mode & 0444) >> 2);
			st->st_nlink = 2;
			st->st_uid = src.st_uid;
			st->st_gid = src.st_gid;
			st->st_mtim = st->st_atim = src.st_mtim;
			st->st_ctim = src.st_ctim;
		}
		break;
	case N_ENTRY: {
		pfs_model *ms;
		if ((rc = model_file_stat(fs, n->model, &src)))
			return rc;
		check_model(fs, n->model, &src);
		ms = model_of(fs, n->model);
		if (!ms)
			return -ESTALE;
		int64_t idx = entry_index(ms, n->rel);
		if (idx < 0)
			return -ESTALE;
		entry_stat(ms, (uint32_t)idx, &src, st);
		break;
	}
	}
	st->st_ino = n->ino;
	return 0;
}

/* ---- lookup ------------------------------------------------------------ */

/*
 * Find (making it if needed) the child `name` of parent and fill *e; counts
 * one lookup.  The caller holds fs->lock.  0 or -errno.
 */
static int child_entry(pfs *fs, node *parent, const char *name, struct fuse_entry_param *e)
{
	node *child = NULL;
	memset(e, 0, sizeof(*e));
	if (strlen(name) > PF_NAME_MAX)
		return -ENAMETOOLONG;
	if (parent->kind == N_PASS) {
		struct stat st;
		if (is_commit_temp(name))
			return -ENOENT; /* a rewrite in progress, or the leftover of a crash */
		char *rel = join(parent->rel, name);
		if (!rel)
			return -ENOMEM;
		if (fstatat(fs->src_fd, rel, &st, AT_SYMLINK_NOFOLLOW) < 0) {
			int err = -errno;
			free(rel);
			return err;
		}
		pf_error why = {0};
		pf_view_key k = pfs_key_of(&st);
		child = node_find_or_add(fs, N_PASS, NULL, rel, ino_of(NULL, rel));
		if (!child) {
			free(rel);
			return -ENOMEM;
		}
		/* the first bytes are read again only when the file changed */
		if (!child->sniffed || !key_eq(&child->sniff_key, &k)) {
			child->sniff_model = S_ISREG(st.st_mode) && sniff_model(fs, rel, &why);
			child->sniff_key = k;
			child->sniffed = true;
		}
		free(rel);
		bool model = child->sniff_model;
		if (why.code && !(child->failed && key_eq(&child->failed_key, &k))) {
			/* a zip that is not a model: said once per version of the file */
			child->failed = true;
			child->failed_key = k;
			pfs_log(fs, "%s: offset %llu: %s (%s)", child->rel, (unsigned long long)why.offset, why.msg,
				pf_code_name(why.code));
		}
		if (child->kind == N_MODEL && !model) {
			/* it was a model and no longer looks like one */
			child->kind = N_PASS;
			invalidate_model(fs, child);
		} else if (child->kind == N_PASS && model) {
			child->kind = N_MODEL;
		}
		e->entry_timeout = child->kind == N_MODEL ? MODEL_TIMEOUT : SHORT_TIMEOUT;
		e->attr_timeout = e->entry_timeout;
	} else {
		node *m = parent->kind == N_MODEL ? parent : parent->model;
		pfs_model *ms = model_of(fs, m);
		if (!ms)
			return parent->kind == N_MODEL ? -ENOTDIR : -ESTALE;
		int64_t dir = parent->kind == N_MODEL ? 0 : entry_index(ms, parent->rel);
		if (dir < 0)
			return -ESTALE;
		int64_t idx = pfs_model_child(ms, (uint32_t)dir, name);
		if (idx < 0)
			return -ENOENT;
		const pf_ventry *ve = &ms->view.e[idx];
		/* hard links: every path of a tensor is the node of its first path */
		const char *path = ve->kind == PF_VE_TENSOR ? ms->view.e[ve->link].path : ve->path;
		child = node_find_or_add(fs, N_ENTRY, m, path, ino_of(m->rel, path));
		if (!child)
			return -ENOMEM;
		e->entry_timeout = LONG_TIMEOUT;
		e->attr_timeout = LONG_TIMEOUT;
	}
	int rc = node_stat(fs, child, &e->attr);
	if (rc)
		return rc;
	e->ino = child->ino;
	child->nlookup++;
	return 0;
}

static pfs *fs_of(fuse_req_t req)
{
	return fuse_req_userdata(req);
}

/*
 * Send the queued page/attribute invalidations now, from this request's
 * thread and without the lock, so that the reply that follows already sees
 * a replaced model's new version.  Entry invalidations stay with the
 * notifier thread: the kernel may hold the parent's lock during this request.
 */
static void flush_inode_notices(pfs *fs)
{
	notice *mine = NULL, **tail = &mine;
	pthread_mutex_lock(&fs->lock);
	for (notice **pp = &fs->notices; *pp;) {
		notice *n = *pp;
		if (!n->name) {
			*pp = n->next;
			n->next = NULL;
			*tail = n;
			tail = &n->next;
		} else {
			pp = &n->next;
		}
	}
	pthread_mutex_unlock(&fs->lock);
	while (mine) {
		notice *n = mine;
		mine = n->next;
		fuse_lowlevel_notify_inval_inode(fs->se, n->ino, 0, 0);
		free(n);
	}
}

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	pfs *fs = fs_of(req);
	struct fuse_entry_param e;
	pthread_mutex_lock(&fs->lock);
	node *p = node_get(fs, parent);
	int rc = p ? child_entry(fs, p, name, &e) : -ESTALE;
	pthread_mutex_unlock(&fs->lock);
	flush_inode_notices(fs);
	if (rc)
		fuse_reply_err(req, -rc);
	else
		fuse_reply_entry(req, &e);
}

/* The kernel forgot n lookups of ino; the caller holds fs->lock. Nodes stay in
 * the table (their numbers must stay stable): only the count drops. */
static void drop_lookups(pfs *fs, fuse_ino_t ino, uint64_t n)
{
	node *nd = node_get(fs, ino);
	if (nd)
		nd->nlookup = nd->nlookup > n ? nd->nlookup - n : 0;
}

static void op_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
	pfs *fs = fs_of(req);
	pthread_mutex_lock(&fs->lock);
	drop_lookups(fs, ino, nlookup);
	pthread_mutex_unlock(&fs->lock);
	fuse_reply_none(req);
}

static void op_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *forgets)
{
	pfs *fs = fs_of(req);
	pthread_mutex_lock(&fs->lock);
	for (size_t i = 0; i < count; i++)
		drop_lookups(fs, forgets[i].ino, forgets[i].nlookup);
	pthread_mutex_unlock(&fs->lock);
	fuse_reply_none(req);
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	pfs *fs = fs_of(req);
	struct stat st;
	pthread_mutex_lock(&fs->lock);
	node *n = node_get(fs, ino);
	int rc = n ? node_stat(fs, n, &st) : -ESTALE;
	double timeout = !n ? 0 : n->kind == N_ENTRY ? LONG_TIMEOUT : n->kind == N_MODEL ? MODEL_TIMEOUT : SHORT_TIMEOUT;
	pthread_mutex_unlock(&fs->lock);
	flush_inode_notices(fs);
	if (rc)
		fuse_reply_err(req, -rc);
	else
		fuse_reply_attr(req, &st, timeout);
}

static void op_readlink(fuse_req_t req, fuse_ino_t ino)
{
	pfs *fs = fs_of(req);
	char buf[PATH_MAX + 1];
	pthread_mutex_lock(&fs->lock);
	node *n = node_get(fs, ino);
	ssize_t len = n && n->kind == N_PASS ? readlinkat(fs->src_fd, n->rel, buf, PATH_MAX) : (errno = EINVAL, -1);
	int err = errno;
	pthread_mutex_unlock(&fs->lock);
	if (len < 0) {
		fuse_reply_err(req, err);
		return;
	}
	buf[len] = '\0';
	fuse_reply_readlink(req, buf);
}

/* ---- directories ------------------------------------------------------- */

typedef struct dir_handle {
	char **names;
	uint32_t n;
} dir_handle;

static void dir_free(dir_handle *d)
{
	for (uint32_t i = 0; d && i < d->n; i++)
		free(d->names[i]);
	if (d)
		free(d->names);
	free(d);
}

static int dir_add(dir_handle *d, const char *name)
{
	char **nn = realloc(d->names, (d->n + 1) * sizeof(*nn));
	if (!nn)
		return -ENOMEM;
	d->names = nn;
	if (!(d->names[d->n] = strdup(name)))
		return -ENOMEM;
	d->n++;
	return 0;
}

/* The names a directory holds, taken when it is opened. The caller holds fs->lock. */
static int list_dir(pfs *fs, node *n, dir_handle *d)
{
	if (n->kind == N_PASS) {
		int fd = openat(fs->src_fd, n->rel, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		DIR *dp = fd >= 0 ? fdopendir(fd) : NULL;
		struct dirent *de;
		if (!dp) {
			int err = -errno;
			if (fd >= 0)
				close(fd);
			return err;
		}
		int rc = 0;
		/* a temporary file is only ever left by a crash when no rewrite runs now */
		bool idle = pthread_mutex_trylock(&fs->commit_lock) == 0;
		while (!rc && (de = readdir(dp))) {
			if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
				continue;
			if (is_commit_temp(de->d_name)) {
				if (idle)
					unlinkat(dirfd(dp), de->d_name, 0);
				continue;
			}
			rc = dir_add(d, de->d_name);
		}
		if (idle)
			pthread_mutex_unlock(&fs->commit_lock);
		closedir(dp);
		return rc;
	}
	node *m = n->kind == N_MODEL ? n : n->model;
	pfs_model *ms = model_of(fs, m);
	if (!ms && n->ino == FUSE_ROOT_ID)
		return 0; /* a single model file that does not parse: an empty directory */
	if (!ms)
		return n->kind == N_MODEL ? -ENOTDIR : -ESTALE;
	int64_t dir = n->kind == N_MODEL ? 0 : entry_index(ms, n->rel);
	if (dir < 0 || ms->view.e[dir].kind != PF_VE_DIR)
		return dir < 0 ? -ESTALE : -ENOTDIR;
	for (uint32_t i = 1; i < ms->view.n; i++)
		if (ms->view.e[i].parent == (uint32_t)dir) {
			int rc = dir_add(d, ms->view.e[i].name);
			if (rc)
				return rc;
		}
	return 0;
}

static void op_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	pfs *fs = fs_of(req);
	dir_handle *d = calloc(1, sizeof(*d));
	pthread_mutex_lock(&fs->lock);
	node *n = node_get(fs, ino);
	int rc = !d ? -ENOMEM : n ? list_dir(fs, n, d) : -ESTALE;
	pthread_mutex_unlock(&fs->lock);
	if (rc) {
		dir_free(d);
		fuse_reply_err(req, -rc);
		return;
	}
	fi->fh = (uint64_t)(uintptr_t)d;
	fi->cache_readdir = n->kind != N_PASS;
	fuse_reply_open(req, fi);
}

static void readdir_common(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi,
			   bool plus)
{
	pfs *fs = fs_of(req);
	dir_handle *d = (dir_handle *)(uintptr_t)fi->fh;
	char *buf = malloc(size);
	size_t used = 0;
	if (!buf) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	pthread_mutex_lock(&fs->lock);
	node *self = node_get(fs, ino);
	for (uint64_t i = (uint64_t)off; self && i < d->n; i++) {
		struct fuse_entry_param e;
		size_t len;
		int rc = child_entry(fs, self, d->names[i], &e);
		if (rc)
			continue; /* gone since opendir */
		if (plus) {
			len = fuse_add_direntry_plus(req, buf + used, size - used, d->names[i], &e, (off_t)i + 1);
		} else {
			len = fuse_add_direntry(req, buf + used, size - used, d->names[i], &e.attr, (off_t)i + 1);
		}
		node *c = node_get(fs, e.ino);
		if (len > size - used) {
			if (c)
				c->nlookup--; /* did not fit: not handed out */
			break;
		}
		if (!plus && c)
			c->nlookup--; /* plain readdir hands out no lookup */
		used += len;
	}
	pthread_mutex_unlock(&fs->lock);
	fuse_reply_buf(req, buf, used);
	free(buf);
}

static void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
	readdir_common(req, ino, size, off, fi, false);
}

static void op_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
	readdir_common(req, ino, size, off, fi, true);
}

static void op_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	dir_free((dir_handle *)(uintptr_t)fi->fh);
	fuse_reply_err(req, 0);
}

/* ---- files ------------------------------------------------------------- */

static bool wants_write(int flags)
{
	return (flags & O_ACCMODE) != O_RDONLY || (flags & O_TRUNC);
}

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	pfs *fs = fs_of(req);
	handle *h = calloc(1, sizeof(*h));
	int rc = 0;
	if (!h) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	h->fd = -1;
	pthread_mutex_lock(&fs->lock);
	node *n = node_get(fs, ino);
	if (!n) {
		rc = -ESTALE;
	} else if (n->kind == N_PASS || (n->kind == N_MODEL && n->failed)) {
		if (fs->cfg.ro && wants_write(fi->flags))
			rc = -EROFS;
		else if ((h->fd = openat(fs->src_fd, n->rel, (fi->flags & ~(O_CREAT | O_EXCL | O_NOCTTY)) | O_CLOEXEC)) < 0)
			rc = -errno;
	} else if (n->kind == N_MODEL) {
		rc = -EISDIR;
	} else {
		pfs_model *ms = model_of(fs, n->model);
		int64_t idx = ms ? entry_index(ms, n->rel) : -1;
		if (idx < 0) {
			rc = -ESTALE;
		} else if (ms->view.e[idx].kind == PF_VE_DIR) {
			rc = -EISDIR;
		} else if (wants_write(fi->flags) && (ms->view.e[idx].kind != PF_VE_DEVICE || fs->cfg.ro)) {
			/* only `device` is writable so far; tensors, globals and meta.json come next */
			rc = fs->cfg.ro ? -EROFS : -EACCES;
		} else {
			if (wants_write(fi->flags)) {
				h->writing = true;
				h->model = n->model;
				fi->direct_io = 1; /* what was written, not the old text, until committed */
			}
			pfs_model_ref(ms);
			h->ms = ms;
			h->entry = (uint32_t)idx;
			/* pages the kernel kept are good only for the same version */
			fi->keep_cache = n->opened_ms == ms;
			if (n->opened_ms != ms && n->opened_ms)
				queue_notice(fs, n->ino, 0, NULL);
			n->opened_ms = ms;
		}
	}
	pthread_mutex_unlock(&fs->lock);
	if (rc) {
		free(h);
		fuse_reply_err(req, -rc);
		return;
	}
	fi->fh = (uint64_t)(uintptr_t)h;
	fuse_reply_open(req, fi);
}

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
	handle *h = (handle *)(uintptr_t)fi->fh;
	if (h->fd >= 0) {
		struct fuse_bufvec bv = FUSE_BUFVEC_INIT(size);
		bv.buf[0].flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK;
		bv.buf[0].fd = h->fd;
		bv.buf[0].pos = off;
		fuse_reply_data(req, &bv, FUSE_BUF_SPLICE_MOVE);
		return;
	}
	const pf_ventry *e = &h->ms->view.e[h->entry];
	uint64_t uoff = (uint64_t)off;
	if (uoff >= e->size) {
		fuse_reply_buf(req, NULL, 0);
		return;
	}
	if (size > e->size - uoff)
		size = (size_t)(e->size - uoff);
	if (e->kind == PF_VE_TENSOR && !e->needs_model) {
		/* header from memory, data spliced straight from the model file */
		struct {
			struct fuse_bufvec v;
			struct fuse_buf extra;
		} bv = {0};
		size_t k = 0;
		if (uoff < e->header_len) {
			size_t hn = e->header_len - uoff < size ? (size_t)(e->header_len - uoff) : size;
			bv.v.buf[0] = (struct fuse_buf){.size = hn, .mem = (void *)(e->header + uoff)};
			k = 1;
			size -= hn;
			uoff += hn;
		}
		if (size > 0) {
			struct fuse_buf *b = k ? &bv.extra : &bv.v.buf[0];
			*b = (struct fuse_buf){.size = size, .flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK, .fd = h->ms->fd,
					       .pos = (off_t)((uint64_t)e->data_off + uoff - e->header_len)};
			k++;
		}
		bv.v.count = k;
		fuse_reply_data(req, &bv.v, FUSE_BUF_SPLICE_MOVE);
		return;
	}
	char *buf = malloc(size ? size : 1);
	if (!buf) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	ssize_t n = pfs_model_read(h->ms, h->entry, uoff, buf, size);
	if (n < 0)
		fuse_reply_err(req, (int)-n);
	else
		fuse_reply_buf(req, buf, (size_t)n);
	free(buf);
}

static void op_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
		     struct fuse_file_info *fi)
{
	handle *h = (handle *)(uintptr_t)fi->fh;
	if (h->writing) {
		/* a device string is short: anything longer is not one */
		if (off < 0 || (uint64_t)off + size > sizeof(h->wbuf)) {
			fuse_reply_err(req, EINVAL);
			return;
		}
		memcpy(h->wbuf + off, buf, size);
		if ((size_t)off + size > h->wlen)
			h->wlen = (size_t)off + size;
		h->dirty = true;
		fuse_reply_write(req, size);
		return;
	}
	if (h->fd < 0) {
		fuse_reply_err(req, EACCES);
		return;
	}
	ssize_t n = pwrite(h->fd, buf, size, off);
	if (n < 0)
		fuse_reply_err(req, errno);
	else
		fuse_reply_write(req, (size_t)n);
}

static void op_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	handle *h = (handle *)(uintptr_t)fi->fh;
	if (h->fd >= 0)
		close(h->fd);
	pfs_model_unref(h->ms);
	free(h);
	fuse_reply_err(req, 0);
}

/*
 * Commit what was written to a `device` file: the model file is rewritten
 * (pfs_model_set_device) and its loaded version dropped, so the next access
 * shows the new file.  Errors go back to close()/fsync(), and to the log.
 */
static int commit_device(pfs *fs, handle *h)
{
	pf_error why = {0};
	if (!h->dirty)
		return 0;
	h->dirty = false;
	pthread_mutex_lock(&fs->commit_lock);
	int rc = pfs_model_set_device(h->ms, fs->src_fd, h->model->rel, h->wbuf, h->wlen, &why);
	pthread_mutex_unlock(&fs->commit_lock);
	if (rc && why.code)
		pfs_log(fs, "%s: device not changed: offset %llu: %s", h->model->rel, (unsigned long long)why.offset,
			why.msg);
	pthread_mutex_lock(&fs->lock);
	struct stat st;
	if (fstatat(fs->src_fd, h->model->rel, &st, 0) == 0)
		check_model(fs, h->model, &st);
	pthread_mutex_unlock(&fs->lock);
	flush_inode_notices(fs);
	return rc;
}

static void op_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	handle *h = (handle *)(uintptr_t)fi->fh;
	int rc = 0;
	if (h->writing) {
		fuse_reply_err(req, -commit_device(fs_of(req), h));
		return;
	}
	if (h->fd >= 0) {
		/* report errors of the underlying file at close, as a local file would */
		int dupfd = dup(h->fd);
		rc = dupfd < 0 ? errno : close(dupfd) < 0 ? errno : 0;
	}
	fuse_reply_err(req, rc);
}

static void op_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
	handle *h = (handle *)(uintptr_t)fi->fh;
	int rc = 0;
	if (h->writing) {
		fuse_reply_err(req, -commit_device(fs_of(req), h));
		return;
	}
	if (h->fd >= 0 && (datasync ? fdatasync(h->fd) : fsync(h->fd)) < 0)
		rc = errno;
	fuse_reply_err(req, rc);
}

/* ---- changes to the mirrored tree -------------------------------------- */

/* The source path of `name` in a mirrored directory; -errno when parent is not one. */
static int pass_child(pfs *fs, fuse_ino_t parent, const char *name, char **rel)
{
	node *p = node_get(fs, parent);
	if (!p)
		return -ESTALE;
	if (p->kind != N_PASS)
		return -EPERM; /* the layout of a model directory comes from the model */
	if (fs->cfg.ro)
		return -EROFS;
	*rel = join(p->rel, name);
	return *rel ? 0 : -ENOMEM;
}

static void reply_new_entry(fuse_req_t req, pfs *fs, fuse_ino_t parent, const char *name, int rc,
			    struct fuse_file_info *fi)
{
	struct fuse_entry_param e;
	if (!rc) {
		node *p = node_get(fs, parent);
		rc = p ? child_entry(fs, p, name, &e) : -ESTALE;
	}
	pthread_mutex_unlock(&fs->lock);
	if (rc)
		fuse_reply_err(req, -rc);
	else if (fi)
		fuse_reply_create(req, &e, fi);
	else
		fuse_reply_entry(req, &e);
}

static void op_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode)
{
	pfs *fs = fs_of(req);
	char *rel = NULL;
	pthread_mutex_lock(&fs->lock);
	int rc = pass_child(fs, parent, name, &rel);
	if (!rc && mkdirat(fs->src_fd, rel, mode) < 0)
		rc = -errno;
	free(rel);
	reply_new_entry(req, fs, parent, name, rc, NULL);
}

static void op_symlink(fuse_req_t req, const char *link, fuse_ino_t parent, const char *name)
{
	pfs *fs = fs_of(req);
	char *rel = NULL;
	pthread_mutex_lock(&fs->lock);
	int rc = pass_child(fs, parent, name, &rel);
	if (!rc && symlinkat(link, fs->src_fd, rel) < 0)
		rc = -errno;
	free(rel);
	reply_new_entry(req, fs, parent, name, rc, NULL);
}

static void op_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
		      struct fuse_file_info *fi)
{
	pfs *fs = fs_of(req);
	char *rel = NULL;
	handle *h = calloc(1, sizeof(*h));
	pthread_mutex_lock(&fs->lock);
	int rc = h ? pass_child(fs, parent, name, &rel) : -ENOMEM;
	if (!rc && (h->fd = openat(fs->src_fd, rel, fi->flags | O_CREAT | O_CLOEXEC, mode)) < 0)
		rc = -errno;
	free(rel);
	if (rc)
		free(h);
	else
		fi->fh = (uint64_t)(uintptr_t)h;
	reply_new_entry(req, fs, parent, name, rc, fi);
}

static void remove_common(fuse_req_t req, fuse_ino_t parent, const char *name, int flags)
{
	pfs *fs = fs_of(req);
	char *rel = NULL;
	pthread_mutex_lock(&fs->lock);
	int rc = pass_child(fs, parent, name, &rel);
	if (!rc && unlinkat(fs->src_fd, rel, flags) < 0)
		rc = -errno;
	free(rel);
	pthread_mutex_unlock(&fs->lock);
	fuse_reply_err(req, -rc);
}

static void op_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	remove_common(req, parent, name, 0);
}

static void op_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	remove_common(req, parent, name, AT_REMOVEDIR);
}

static void op_rename(fuse_req_t req, fuse_ino_t parent, const char *name, fuse_ino_t newparent,
		      const char *newname, unsigned int flags)
{
	pfs *fs = fs_of(req);
	char *from = NULL, *to = NULL;
	pthread_mutex_lock(&fs->lock);
	int rc = pass_child(fs, parent, name, &from);
	if (!rc)
		rc = pass_child(fs, newparent, newname, &to);
	if (!rc && flags)
		rc = -EINVAL;
	if (!rc && renameat(fs->src_fd, from, fs->src_fd, to) < 0)
		rc = -errno;
	free(from);
	free(to);
	pthread_mutex_unlock(&fs->lock);
	fuse_reply_err(req, -rc);
}

static void op_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set, struct fuse_file_info *fi)
{
	pfs *fs = fs_of(req);
	struct stat st;
	pthread_mutex_lock(&fs->lock);
	node *n = node_get(fs, ino);
	int rc = 0;
	if (!n)
		rc = -ESTALE;
	else if (n->kind == N_ENTRY && to_set == FUSE_SET_ATTR_SIZE && fi &&
		 ((handle *)(uintptr_t)fi->fh)->writing) {
		handle *h = (handle *)(uintptr_t)fi->fh; /* `> device`: start again */
		if ((uint64_t)attr->st_size > sizeof(h->wbuf))
			rc = -EINVAL;
		else
			h->wlen = (size_t)attr->st_size;
		pthread_mutex_unlock(&fs->lock);
		if (rc) {
			fuse_reply_err(req, -rc);
		} else {
			memset(&st, 0, sizeof(st));
			pthread_mutex_lock(&fs->lock);
			rc = node_stat(fs, n, &st);
			pthread_mutex_unlock(&fs->lock);
			st.st_size = (off_t)h->wlen;
			if (rc)
				fuse_reply_err(req, -rc);
			else
				fuse_reply_attr(req, &st, 0);
		}
		return;
	} else if (n->kind != N_PASS && !(n->kind == N_MODEL && n->failed))
		rc = -EACCES;
	else if (fs->cfg.ro)
		rc = -EROFS;
	if (!rc && (to_set & FUSE_SET_ATTR_MODE) && fchmodat(fs->src_fd, n->rel, attr->st_mode & 07777, 0) < 0)
		rc = -errno;
	if (!rc && (to_set & (FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID)) &&
	    fchownat(fs->src_fd, n->rel, (to_set & FUSE_SET_ATTR_UID) ? attr->st_uid : (uid_t)-1,
		     (to_set & FUSE_SET_ATTR_GID) ? attr->st_gid : (gid_t)-1, AT_SYMLINK_NOFOLLOW) < 0)
		rc = -errno;
	if (!rc && (to_set & FUSE_SET_ATTR_SIZE)) {
		handle *h = fi ? (handle *)(uintptr_t)fi->fh : NULL;
		int fd = h && h->fd >= 0 ? h->fd : openat(fs->src_fd, n->rel, O_WRONLY | O_CLOEXEC);
		if (fd < 0 || ftruncate(fd, attr->st_size) < 0)
			rc = -errno;
		if (fd >= 0 && !(h && h->fd >= 0))
			close(fd);
	}
	if (!rc && (to_set & (FUSE_SET_ATTR_ATIME | FUSE_SET_ATTR_MTIME))) {
		struct timespec ts[2] = {{.tv_nsec = UTIME_OMIT}, {.tv_nsec = UTIME_OMIT}};
		if (to_set & FUSE_SET_ATTR_ATIME_NOW)
			ts[0].tv_nsec = UTIME_NOW;
		else if (to_set & FUSE_SET_ATTR_ATIME)
			ts[0] = attr->st_atim;
		if (to_set & FUSE_SET_ATTR_MTIME_NOW)
			ts[1].tv_nsec = UTIME_NOW;
		else if (to_set & FUSE_SET_ATTR_MTIME)
			ts[1] = attr->st_mtim;
		if (utimensat(fs->src_fd, n->rel, ts, AT_SYMLINK_NOFOLLOW) < 0)
			rc = -errno;
	}
	if (!rc)
		rc = node_stat(fs, n, &st);
	pthread_mutex_unlock(&fs->lock);
	if (rc)
		fuse_reply_err(req, -rc);
	else
		fuse_reply_attr(req, &st, SHORT_TIMEOUT);
}

static void op_statfs(fuse_req_t req, fuse_ino_t ino)
{
	pfs *fs = fs_of(req);
	struct statvfs sv;
	if (fstatvfs(fs->src_fd, &sv) < 0)
		fuse_reply_err(req, errno);
	else
		fuse_reply_statfs(req, &sv);
}

/* ---- lifecycle --------------------------------------------------------- */

static void op_init(void *userdata, struct fuse_conn_info *conn)
{
	pfs *fs = userdata;
	if (conn->capable & FUSE_CAP_SPLICE_WRITE)
		conn->want |= FUSE_CAP_SPLICE_WRITE | FUSE_CAP_SPLICE_MOVE;
	if (conn->capable & FUSE_CAP_READDIRPLUS)
		conn->want |= FUSE_CAP_READDIRPLUS;
	/* worker threads exist only now, after daemonizing */
	pthread_mutex_lock(&fs->lock);
	if (pthread_create(&fs->notifier, NULL, notifier_main, fs) == 0)
		fs->notifier_running = true;
	pthread_mutex_unlock(&fs->lock);
}

static void op_destroy(void *userdata)
{
	pfs *fs = userdata;
	pthread_mutex_lock(&fs->lock);
	fs->stopping = true;
	pthread_cond_signal(&fs->notice_cv);
	bool running = fs->notifier_running;
	fs->notifier_running = false;
	pthread_mutex_unlock(&fs->lock);
	if (running)
		pthread_join(fs->notifier, NULL);
}

const struct fuse_lowlevel_ops pfs_ops = {
	.init = op_init,
	.destroy = op_destroy,
	.lookup = op_lookup,
	.forget = op_forget,
	.forget_multi = op_forget_multi,
	.getattr = op_getattr,
	.setattr = op_setattr,
	.readlink = op_readlink,
	.mkdir = op_mkdir,
	.unlink = op_unlink,
	.rmdir = op_rmdir,
	.symlink = op_symlink,
	.rename = op_rename,
	.open = op_open,
	.read = op_read,
	.write = op_write,
	.flush = op_flush,
	.release = op_release,
	.fsync = op_fsync,
	.opendir = op_opendir,
	.readdir = op_readdir,
	.readdirplus = op_readdirplus,
	.releasedir = op_releasedir,
	.statfs = op_statfs,
	.create = op_create,
};

pfs *pfs_new(const pfs_config *cfg)
{
	pfs *fs = calloc(1, sizeof(*fs));
	struct stat st;
	if (!fs)
		return NULL;
	fs->cfg = *cfg;
	pthread_mutex_init(&fs->lock, NULL);
	pthread_mutex_init(&fs->commit_lock, NULL);
	pthread_cond_init(&fs->notice_cv, NULL);
	pf_hashmap_init(&fs->by_ino);
	fs->src_fd = -1;
	if (stat(cfg->source, &st) < 0)
		goto fail;
	node *root;
	if (S_ISDIR(st.st_mode)) {
		fs->src_fd = open(cfg->source, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		root = fs->src_fd >= 0 ? node_find_or_add(fs, N_PASS, NULL, ".", FUSE_ROOT_ID) : NULL;
	} else if (S_ISREG(st.st_mode)) {
		/* single-file mode: the mountpoint is the model's directory */
		char *copy = strdup(cfg->source), *slash = copy ? strrchr(copy, '/') : NULL;
		if (!copy)
			goto fail;
		fs->single = strdup(slash ? slash + 1 : copy);
		if (slash)
			*(slash == copy ? slash + 1 : slash) = '\0';
		fs->src_fd = open(slash ? copy : ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		free(copy);
		root = fs->src_fd >= 0 && fs->single ? node_find_or_add(fs, N_MODEL, NULL, fs->single, FUSE_ROOT_ID) : NULL;
	} else {
		errno = EINVAL;
		goto fail;
	}
	if (!root)
		goto fail;
	root->nlookup = 1;
	return fs;
fail:
	pfs_free(fs);
	return NULL;
}

void pfs_set_session(pfs *fs, struct fuse_session *se)
{
	fs->se = se;
}

void pfs_free(pfs *fs)
{
	if (!fs)
		return;
	int saved = errno;
	for (uint32_t i = 0; i < fs->n_nodes; i++) {
		pfs_model_unref(fs->nodes[i]->ms);
		free(fs->nodes[i]->rel);
		free(fs->nodes[i]);
	}
	while (fs->notices) {
		notice *n = fs->notices;
		fs->notices = n->next;
		free(n->name);
		free(n);
	}
	free(fs->nodes);
	pf_hashmap_free(&fs->by_ino);
	if (fs->src_fd >= 0)
		close(fs->src_fd);
	free(fs->single);
	pthread_mutex_destroy(&fs->lock);
	pthread_mutex_destroy(&fs->commit_lock);
	pthread_cond_destroy(&fs->notice_cv);
	free(fs);
	errno = saved;
}
