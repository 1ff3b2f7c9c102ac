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
#include "wcopy.h"

/* Model entries change only when their file does, and we say so then. */
#define LONG_TIMEOUT 3600.0
/* Mirrored entries: changes come from outside, unannounced. */
#define SHORT_TIMEOUT 1.0
/* A model's own directory: asked every time, so a replaced file is seen at once. */
#define MODEL_TIMEOUT 0.0

typedef enum node_kind {
	N_PASS,    /* a mirrored file, folder or symlink of SOURCE */
	N_MODEL,   /* a model file, shown as its directory */
	N_ENTRY,   /* a file or directory inside a model directory */
	N_SCRATCH, /* a temporary file made in a model directory (rsync, sed -i, editors) */
} node_kind;

/* Where an entry's written contents stand. */
typedef enum wc_state {
	WC_NONE = 0, /* no working copy: the model file's contents */
	WC_WRITING,  /* being written: checked when the last writer closes */
	WC_READY,    /* checked: waits for the commit */
} wc_state;

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
	/* N_ENTRY / N_SCRATCH: contents written through the mount */
	pfs_wcopy *wc;
	wc_state state;       /* N_ENTRY */
	uint32_t writers;     /* open handles that may write */
	bool committing;      /* a commit reads wc: a new write forks it first */
	bool gone;            /* replaced by a rename, or an unlinked scratch file */
	uint64_t version;     /* bumped whenever the contents change */
	uint64_t opened_version;
	bool has_mtime;       /* set by utimensat, or the time of the change */
	struct timespec mtime;
	mode_t mode;          /* N_SCRATCH */
	/* N_MODEL */
	pf_hashmap named;     /* hash(path) -> node: scratch files, renamed-over entries */
	uint32_t n_named;
	uint64_t epoch;       /* bumped when the file changed outside the mount */
	bool in_commit;       /* our own commit is replacing the file: not an outside change */
	int stale;            /* N_ENTRY: written contents dropped by an outside change (errno) */
	bool due;             /* a timer commit is scheduled */
	struct timespec deadline;
	int commit_err;       /* a failed timer commit, told at the next flush/fsync */
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
	pthread_t committer;  /* timer commits (-o commit_delay) */
	bool committer_running;
	pthread_cond_t commit_cv;
	uint64_t scratch_seq;
};

typedef struct handle {
	int fd;               /* mirrored file, or -1 */
	pfs_model *ms;        /* model entry: the version opened */
	uint32_t entry;
	pfs_wcopy *wc;        /* or the written contents it reads */
	node *n;              /* N_ENTRY / N_SCRATCH node */
	uint64_t epoch;       /* the model's epoch at open */
	bool may_write, wrote;
	bool text;            /* meta.json, device or globals: direct I/O */
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
	bool mirrored = (n->kind == N_PASS || n->kind == N_MODEL) && (kind == N_PASS || kind == N_MODEL);
	return (n->kind == kind || mirrored) && !n->gone && n->model == model && strcmp(n->rel, rel) == 0;
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

static node *named_node(pfs *fs, node *m, const char *path);

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
static void drop_written(pfs *fs, node *m);

static void check_model(pfs *fs, node *m, const struct stat *st)
{
	pf_view_key k = pfs_key_of(st);
	if (m->in_commit)
		return; /* our own rename: adopted when the commit ends */
	if (m->ms && !key_eq(&m->ms->key, &k)) {
		pfs_model_unref(m->ms);
		m->ms = NULL;
		m->epoch++;
		drop_written(fs, m);
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
	if (e->has_mtime) {
		st->st_mtim = (struct timespec){.tv_sec = e->mtime_sec, .tv_nsec = e->mtime_nsec};
		if (st->st_mtim.tv_sec > st->st_ctim.tv_sec)
			st->st_ctim = st->st_mtim;
	}
	st->st_atim = st->st_mtim;
	mode_t r = src->st_mode & 0444;
	if (e->kind == PF_VE_DIR) {
		st->st_mode = S_IFDIR | r | (r >> 2); /* x wherever r */
		st->st_nlink = 2;
	} else {
		/* every file of a model is writable where the model file is (DESIGN §4) */
		st->st_mode = S_IFREG | r | (src->st_mode & 0200);
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
		if (n->wc) {
			st->st_size = (off_t)n->wc->size;
			st->st_blocks = (blkcnt_t)((n->wc->size + 511) / 512);
		}
		if (n->wc && n->has_mtime)
			st->st_mtim = st->st_ctim = n->mtime;
		break;
	}
	case N_SCRATCH:
		if ((rc = model_file_stat(fs, n->model, &src)))
			return rc;
		memset(st, 0, sizeof(*st));
		st->st_mode = S_IFREG | n->mode;
		st->st_nlink = n->gone ? 0 : 1;
		st->st_uid = src.st_uid;
		st->st_gid = src.st_gid;
		st->st_size = n->wc ? (off_t)n->wc->size : 0;
		st->st_blksize = 65536;
		st->st_blocks = (blkcnt_t)((st->st_size + 511) / 512);
		st->st_mtim = st->st_ctim = st->st_atim = n->mtime;
		break;
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
		char *own = NULL;
		if (m->n_named) { /* a scratch file, or an entry a rename replaced */
			own = parent->kind == N_MODEL ? strdup(name) : join(parent->rel, name);
			if (!own)
				return -ENOMEM;
		}
		const pf_ventry *ve = idx >= 0 ? &ms->view.e[idx] : NULL;
		/* hard links: every path of a tensor is the node of its first path */
		const char *path = !ve ? NULL : ve->kind == PF_VE_TENSOR ? ms->view.e[ve->link].path : ve->path;
		child = own ? named_node(fs, m, path ? path : own) : NULL;
		free(own);
		if (!child && idx < 0)
			return -ENOENT;
		if (!child)
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
	/* scratch files of this directory */
	const char *dpath = n->kind == N_MODEL ? "" : n->rel;
	size_t dl = strlen(dpath);
	for (uint32_t i = 0; m->n_named && i < fs->n_nodes; i++) {
		node *s = fs->nodes[i];
		if (s->kind != N_SCRATCH || s->gone || s->model != m)
			continue;
		const char *slash = strrchr(s->rel, '/');
		size_t sl = slash ? (size_t)(slash - s->rel) : 0;
		if (sl == dl && !strncmp(s->rel, dpath, dl)) {
			int rc = dir_add(d, slash ? slash + 1 : s->rel);
			if (rc)
				return rc;
		}
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

/* ---- writing inside model directories ---------------------------------- */

static struct timespec now_plus_ms(int ms)
{
	struct timespec t;
	clock_gettime(CLOCK_REALTIME, &t);
	t.tv_sec += ms / 1000;
	t.tv_nsec += (long)(ms % 1000) * 1000000L;
	if (t.tv_nsec >= 1000000000L) {
		t.tv_sec++;
		t.tv_nsec -= 1000000000L;
	}
	return t;
}

/* The view entry an N_ENTRY node stands for in its model's current version, or -1. */
static int64_t node_entry(pfs *fs, node *n, pfs_model **ms)
{
	*ms = model_of(fs, n->model);
	return *ms ? entry_index(*ms, n->rel) : -1;
}

static bool reserved_or_tensor_name(const char *name)
{
	size_t len = strlen(name);
	return pf_is_meta_file(name) || (len > 4 && !strcmp(name + len - 4, ".npy"));
}

static uint64_t path_key(const char *path)
{
	return pf_hash_bytes(path, strlen(path), 0x5c7a7c4);
}

/* The node a model's `named` map holds for path (scratch file or renamed-over entry), or NULL. */
static node *named_node(pfs *fs, node *m, const char *path)
{
	uint32_t idx;
	if (!m->n_named || !pf_hashmap_get(&m->named, path_key(path), &idx) || idx == UINT32_MAX)
		return NULL;
	node *n = fs->nodes[idx];
	return !n->gone && n->model == m && !strcmp(n->rel, path) ? n : NULL;
}

static int name_node(pfs *fs, node *m, node *n)
{
	for (uint32_t i = 0; i < fs->n_nodes; i++)
		if (fs->nodes[i] == n) {
			if (!pf_hashmap_put(&m->named, path_key(n->rel), i))
				return -ENOMEM;
			m->n_named++;
			return 0;
		}
	return -ESTALE;
}

static void unname_node(node *m, const char *path)
{
	uint32_t idx;
	if (m->n_named && pf_hashmap_get(&m->named, path_key(path), &idx))
		pf_hashmap_put(&m->named, path_key(path), UINT32_MAX);
}

/* A change to an entry's contents: its cached pages and attributes are stale. */
static void contents_changed(pfs *fs, node *n)
{
	n->version++;
	queue_notice(fs, n->ino, 0, NULL);
}

/* The working copy an entry is written through; forked while a commit reads it. */
static int wc_for_write(pfs *fs, node *n, bool empty)
{
	pfs_model *ms = NULL;
	pfs_wcopy *w;
	if (n->kind == N_SCRATCH || (n->wc && !n->committing && !empty)) {
		n->state = n->kind == N_ENTRY ? WC_WRITING : n->state;
		return 0;
	}
	if (n->wc && !empty) {
		w = pfs_wcopy_fork(n->wc, fs->src_fd, n->model->rel);
	} else {
		int64_t idx = node_entry(fs, n, &ms);
		if (idx < 0)
			return -ESTALE;
		w = pfs_model_wcopy(ms, (uint32_t)idx, fs->src_fd, n->model->rel, empty);
	}
	if (!w)
		return -errno;
	pfs_wcopy_unref(n->wc);
	n->wc = w;
	n->committing = false; /* the commit keeps its own reference to the old copy */
	n->state = WC_WRITING;
	return 0;
}

/* What a read of handle h returns, with a reference of its own. */
typedef struct read_src {
	pfs_model *ms;
	uint32_t entry;
	pfs_wcopy *wc;
} read_src;

/*
 * Readers see an entry's current contents, as on a local file system (so
 * the kernel's page cache, one per inode, only ever holds those), unless
 * the name was renamed over (the old inode keeps what it had) or the model
 * file was replaced outside the mount (the version it opened: no mix).
 * The caller holds fs->lock.
 */
static int read_source(pfs *fs, handle *h, read_src *src)
{
	node *n = h->n;
	*src = (read_src){0};
	/* a reader of a text file reads the version it opened: one whole text per open */
	bool current = n && !n->gone && (n->kind == N_SCRATCH || h->epoch == n->model->epoch) &&
		       (h->may_write || !h->text);
	if (current && n->wc) {
		src->wc = n->wc;
	} else if (current) {
		pfs_model *ms;
		int64_t idx = node_entry(fs, n, &ms);
		if (idx < 0)
			return -ESTALE;
		src->ms = ms;
		src->entry = (uint32_t)idx;
	} else {
		src->wc = h->wc;
		src->ms = h->wc ? NULL : h->ms;
		src->entry = h->entry;
	}
	if (src->wc)
		pfs_wcopy_ref(src->wc);
	else
		pfs_model_ref(src->ms);
	return 0;
}

/* Drop what was written to an entry: it shows the model file again. */
static void revert(pfs *fs, node *n)
{
	pfs_wcopy_unref(n->wc);
	n->wc = NULL;
	n->state = WC_NONE;
	n->committing = false;
	contents_changed(fs, n);
}

/*
 * The model file changed outside the mount: what was written against the
 * old version is dropped (never committed over theirs), and the writers'
 * next close/fsync says ESTALE.  The caller holds fs->lock.
 */
static void drop_written(pfs *fs, node *m)
{
	for (uint32_t i = 0; i < fs->n_nodes; i++) {
		node *e = fs->nodes[i];
		if (e->model == m && e->kind == N_ENTRY && e->wc && !e->gone) {
			pfs_log(fs, "%s/%s: not written: the model file changed outside the mount", m->rel, e->rel);
			revert(fs, e);
			e->stale = ESTALE;
		}
	}
	m->due = false;
}

/* The one log line for contents refused at close or rename. */
static void log_refused(pfs *fs, const node *m, const char *path, int rc, const pf_error *why)
{
	pfs_log(fs, "%s/%s: not written: %s", m->rel, path, why->msg[0] ? why->msg : strerror(-rc));
}

/*
 * The last writer of an entry is done: check what it holds (DESIGN §4).
 * Bad contents are dropped and give -EINVAL.  The caller holds fs->lock.
 */
static int finalize(pfs *fs, node *n)
{
	pfs_model *ms;
	pf_error why = {0};
	if (n->kind != N_ENTRY || n->state != WC_WRITING)
		return 0;
	int64_t idx = node_entry(fs, n, &ms);
	int rc = idx < 0 ? -ESTALE : pfs_model_check(ms, (uint32_t)idx, n->wc, &why);
	if (rc) {
		log_refused(fs, n->model, n->rel, rc, &why);
		revert(fs, n);
		return rc;
	}
	n->state = WC_READY;
	clock_gettime(CLOCK_REALTIME, &n->mtime);
	n->has_mtime = true;
	n->version++;
	return 0;
}

static void schedule_commit(pfs *fs, node *m)
{
	m->due = true;
	m->deadline = now_plus_ms(fs->cfg.commit_delay_ms);
	pthread_cond_signal(&fs->commit_cv);
}

/* ---- the commit ---------------------------------------------------------- */

typedef struct pending {
	node *n;
	pfs_wcopy *wc;
	uint32_t entry;
} pending;

/* Entries of m whose contents are ready; each gets a reference. The caller holds fs->lock. */
static int collect_ready(pfs *fs, node *m, pfs_model *ms, pending **out, uint32_t *n_out)
{
	pending *v = NULL;
	uint32_t n = 0;
	for (uint32_t i = 0; i < fs->n_nodes; i++) {
		node *e = fs->nodes[i];
		if (e->model != m || e->kind != N_ENTRY || e->gone || e->state != WC_READY)
			continue;
		int64_t idx = entry_index(ms, e->rel);
		if (idx < 0)
			continue;
		pending *nv = realloc(v, (n + 1) * sizeof(*v));
		if (!nv) {
			for (uint32_t k = 0; k < n; k++)
				pfs_wcopy_unref(v[k].wc);
			free(v);
			return -ENOMEM;
		}
		v = nv;
		pfs_wcopy_ref(e->wc);
		e->committing = true;
		v[n++] = (pending){e, e->wc, (uint32_t)idx};
	}
	*out = v;
	*n_out = n;
	return 0;
}

static bool entry_same(const pf_ventry *a, const pf_ventry *b)
{
	if (a->kind != b->kind || a->size != b->size)
		return false;
	if (a->kind == PF_VE_DIR)
		return true;
	if (a->kind == PF_VE_TENSOR)
		return a->header_len == b->header_len && !memcmp(a->header, b->header, a->header_len);
	return !memcmp(a->text, b->text, a->size);
}

/*
 * Give the new version's entries their modification times: an entry whose
 * bytes changed gets the time of its change (or what utimensat set), the
 * others keep theirs (DESIGN §3.4), so rsync -a re-sends only what changed.
 */
static void carry_mtimes(pfs *fs, node *m, pfs_model *old, pfs_model *ms, const pending *p, uint32_t np)
{
	struct timespec now;
	clock_gettime(CLOCK_REALTIME, &now);
	for (uint32_t i = 1; i < ms->view.n; i++) {
		pf_ventry *e = &ms->view.e[i];
		int64_t o = entry_index(old, e->path);
		bool changed = o < 0 || !entry_same(&old->view.e[o], e);
		const struct timespec *t = &now;
		for (uint32_t k = 0; o >= 0 && k < np; k++)
			if (old->view.e[p[k].entry].link == old->view.e[o].link) {
				changed = true;
				if (p[k].n->has_mtime)
					t = &p[k].n->mtime;
			}
		if (changed) {
			e->has_mtime = true;
			e->mtime_sec = t->tv_sec;
			e->mtime_nsec = t->tv_nsec;
		} else {
			/* the new file has a new mtime: an unchanged entry keeps the one it showed */
			const pf_ventry *was = &old->view.e[o];
			e->has_mtime = true;
			e->mtime_sec = was->has_mtime ? was->mtime_sec : old->mtime.tv_sec;
			e->mtime_nsec = was->has_mtime ? was->mtime_nsec : old->mtime.tv_nsec;
		}
	}
	(void)fs;
	(void)m;
}

/* After the commit: entries show the new file; what changed is told to the kernel. */
static void adopt_version(pfs *fs, node *m, pfs_model *old, pfs_model *ms, const pending *p, uint32_t np)
{
	carry_mtimes(fs, m, old, ms, p, np);
	if (fs->cfg.cache_dir)
		pfs_model_store_cache(ms, fs->cfg.cache_dir);
	for (uint32_t k = 0; k < np; k++) {
		node *e = p[k].n;
		e->committing = false;
		if (e->wc == p[k].wc) { /* not written again meanwhile */
			pfs_wcopy_unref(e->wc);
			e->wc = NULL;
			e->state = WC_NONE;
			e->has_mtime = false;
			contents_changed(fs, e); /* its .npy header is ours now, whatever was written */
		}
	}
	for (uint32_t i = 0; i < fs->n_nodes; i++) {
		node *e = fs->nodes[i];
		if (e->model != m || e->kind != N_ENTRY || e->wc)
			continue;
		int64_t a = entry_index(old, e->rel), b = entry_index(ms, e->rel);
		if (a < 0 || b < 0 || !entry_same(&old->view.e[a], &ms->view.e[b]) ||
		    ms->view.e[b].has_mtime != old->view.e[a].has_mtime ||
		    ms->view.e[b].mtime_sec != old->view.e[a].mtime_sec)
			contents_changed(fs, e);
	}
	queue_notice(fs, m->ino, 0, NULL);
	pfs_model_unref(m->ms);
	m->ms = ms;
}

/*
 * Commit every ready entry of model m now.  Runs under commit_lock (one
 * rewrite at a time) and takes fs->lock only around the node table, so
 * reads go on while the new file is written.  0 or -errno.
 */
static int commit_model(pfs *fs, node *m)
{
	pending *p = NULL;
	uint32_t np = 0;
	pf_error why = {0};
	int rc;

	pthread_mutex_lock(&fs->commit_lock);
	pthread_mutex_lock(&fs->lock);
	m->due = false;
	pfs_model *ms = model_of(fs, m);
	rc = ms ? collect_ready(fs, m, ms, &p, &np) : -ESTALE;
	if (ms)
		pfs_model_ref(ms);
	m->in_commit = np > 0;
	pthread_mutex_unlock(&fs->lock);
	if (!rc && np) {
		pfs_change *c = calloc(np, sizeof(*c));
		for (uint32_t k = 0; c && k < np; k++)
			c[k] = (pfs_change){p[k].entry, p[k].wc};
		rc = c ? pfs_model_commit(ms, fs->src_fd, m->rel, c, np, &why) : -ENOMEM;
		free(c);
	}
	pfs_model *fresh = NULL;
	if (!rc && np) {
		pf_error lerr = {0};
		fresh = pfs_model_load(fs->src_fd, m->rel, NULL, &lerr);
		if (!fresh)
			rc = -pfs_errno_of(&lerr);
	}
	pthread_mutex_lock(&fs->lock);
	m->in_commit = false;
	if (np && fresh && m->ms == ms) {
		adopt_version(fs, m, ms, fresh, p, np);
	} else if (np) {
		if (fresh)
			pfs_model_unref(fresh);
		if (rc)
			pfs_log(fs, "%s: not committed: %s", m->rel, why.msg[0] ? why.msg : strerror(-rc));
		for (uint32_t k = 0; k < np; k++)
			if (p[k].n->wc == p[k].wc)
				revert(fs, p[k].n);
			else
				p[k].n->committing = false;
		struct stat st;
		if (fstatat(fs->src_fd, m->rel, &st, 0) == 0)
			check_model(fs, m, &st);
	}
	for (uint32_t k = 0; k < np; k++)
		pfs_wcopy_unref(p[k].wc);
	free(p);
	pthread_mutex_unlock(&fs->lock);
	pfs_model_unref(ms);
	pthread_mutex_unlock(&fs->commit_lock);
	flush_inode_notices(fs);
	return rc;
}

/* Commit now if anything of m is ready; a failed timer commit is told here too. */
static int commit_if_ready(pfs *fs, node *m)
{
	pthread_mutex_lock(&fs->lock);
	int told = m->commit_err;
	m->commit_err = 0;
	pthread_mutex_unlock(&fs->lock);
	int rc = commit_model(fs, m);
	return rc ? rc : told;
}

static bool earliest_due(pfs *fs, node **m)
{
	*m = NULL;
	for (uint32_t i = 0; i < fs->n_nodes; i++) {
		node *n = fs->nodes[i];
		if (n->kind == N_MODEL && n->due &&
		    (!*m || n->deadline.tv_sec < (*m)->deadline.tv_sec ||
		     (n->deadline.tv_sec == (*m)->deadline.tv_sec && n->deadline.tv_nsec < (*m)->deadline.tv_nsec)))
			*m = n;
	}
	return *m != NULL;
}

/* Timer commits: each model commits commit_delay after its last change. */
static void *committer_main(void *arg)
{
	pfs *fs = arg;
	pthread_mutex_lock(&fs->lock);
	while (!fs->stopping) {
		node *m;
		if (!earliest_due(fs, &m)) {
			pthread_cond_wait(&fs->commit_cv, &fs->lock);
			continue;
		}
		struct timespec deadline = m->deadline;
		if (pthread_cond_timedwait(&fs->commit_cv, &fs->lock, &deadline) != ETIMEDOUT)
			continue; /* something changed: look again */
		if (!m->due || m->deadline.tv_sec != deadline.tv_sec || m->deadline.tv_nsec != deadline.tv_nsec)
			continue;
		pthread_mutex_unlock(&fs->lock);
		int rc = commit_model(fs, m);
		pthread_mutex_lock(&fs->lock);
		if (rc)
			m->commit_err = rc;
	}
	pthread_mutex_unlock(&fs->lock);
	return NULL;
}

/* ---- files ------------------------------------------------------------- */

static bool wants_write(int flags)
{
	return (flags & O_ACCMODE) != O_RDONLY || (flags & O_TRUNC);
}

/* Open an entry or scratch file of a model directory. The caller holds fs->lock. */
static int open_model_file(pfs *fs, node *n, handle *h, struct fuse_file_info *fi)
{
	bool write = wants_write(fi->flags);
	pfs_model *ms = NULL;
	int64_t idx = -1;
	if (n->gone)
		return -ESTALE; /* replaced: the kernel looks the name up again */
	if (write && fs->cfg.ro)
		return -EROFS;
	if (n->kind == N_ENTRY) {
		idx = node_entry(fs, n, &ms);
		if (idx < 0)
			return -ESTALE;
		if (ms->view.e[idx].kind == PF_VE_DIR)
			return -EISDIR;
	}
	h->n = n;
	h->epoch = n->model->epoch;
	if (write && (fi->flags & O_TRUNC)) {
		int rc = wc_for_write(fs, n, true);
		if (rc)
			return rc;
		if (n->kind == N_SCRATCH && (rc = pfs_wcopy_truncate(n->wc, 0)))
			return rc;
		/* not yet "written": a shell's `> f` closes this fd once (after dup2) before it
		 * writes; an O_TRUNC never followed by a write is checked at release */
		n->version++;
	}
	/* a text being rewritten by someone else: its last whole version */
	bool whole = n->kind == N_ENTRY && !write && n->state == WC_WRITING && ms->view.e[idx].kind != PF_VE_TENSOR;
	if (n->wc && !whole) {
		h->wc = n->wc;
		pfs_wcopy_ref(h->wc);
	} else {
		pfs_model_ref(ms);
		h->ms = ms;
		h->entry = (uint32_t)idx;
	}
	if (write) {
		h->may_write = true;
		n->writers++;
	}
	/* The texts change length with every commit (a device string): read straight from here,
	 * so a reader gets one whole version per read, never one cut to the other's i_size. */
	h->text = n->kind == N_ENTRY && ms->view.e[idx].kind != PF_VE_TENSOR;
	fi->direct_io = h->text;
	/* pages the kernel kept are good only for the same contents */
	fi->keep_cache = n->opened_ms == (n->wc ? NULL : ms) && n->opened_version == n->version;
	n->opened_ms = n->wc ? NULL : ms;
	n->opened_version = n->version;
	return 0;
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
		rc = open_model_file(fs, n, h, fi);
	}
	pthread_mutex_unlock(&fs->lock);
	flush_inode_notices(fs);
	if (rc) {
		pfs_model_unref(h->ms);
		pfs_wcopy_unref(h->wc);
		free(h);
		fuse_reply_err(req, -rc);
		return;
	}
	fi->fh = (uint64_t)(uintptr_t)h;
	fuse_reply_open(req, fi);
}

/* Splice a plain tensor's bytes: header from memory, data straight from the model file. */
static void reply_spliced(fuse_req_t req, pfs_model *ms, const pf_ventry *e, size_t size, uint64_t off)
{
	struct {
		struct fuse_bufvec v;
		struct fuse_buf extra;
	} bv = {0};
	size_t k = 0;
	if (off >= e->size) {
		fuse_reply_buf(req, NULL, 0);
		return;
	}
	if (size > e->size - off)
		size = (size_t)(e->size - off);
	if (off < e->header_len) {
		size_t hn = e->header_len - off < size ? (size_t)(e->header_len - off) : size;
		bv.v.buf[0] = (struct fuse_buf){.size = hn, .mem = (void *)(e->header + off)};
		k = 1;
		size -= hn;
		off += hn;
	}
	if (size > 0) {
		struct fuse_buf *b = k ? &bv.extra : &bv.v.buf[0];
		*b = (struct fuse_buf){.size = size, .flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK, .fd = ms->fd,
				       .pos = (off_t)((uint64_t)e->data_off + off - e->header_len)};
		k++;
	}
	bv.v.count = k;
	fuse_reply_data(req, &bv.v, FUSE_BUF_SPLICE_MOVE);
}

/* Reply to a read from a model entry's version or a working copy. */
static void read_from(fuse_req_t req, const read_src *src, size_t size, off_t off)
{
	const pf_ventry *e = src->wc ? NULL : &src->ms->view.e[src->entry];
	if (e && e->kind == PF_VE_TENSOR && !e->needs_model) {
		reply_spliced(req, src->ms, e, size, (uint64_t)off);
		return;
	}
	/* texts, decoded tensors and written contents: through a buffer (both reads clamp to the end) */
	char *buf = malloc(size ? size : 1);
	if (!buf) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	ssize_t n = src->wc ? pfs_wcopy_read(src->wc, buf, size, (uint64_t)off)
			    : pfs_model_read(src->ms, src->entry, (uint64_t)off, buf, size);
	if (n < 0)
		fuse_reply_err(req, (int)-n);
	else
		fuse_reply_buf(req, buf, (size_t)n);
	free(buf);
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
	read_src src = {.ms = h->ms, .entry = h->entry, .wc = h->wc};
	bool own = h->n != NULL; /* h may be released as soon as the reply is out */
	if (own) {
		pfs *fs = fs_of(req);
		pthread_mutex_lock(&fs->lock);
		int rc = read_source(fs, h, &src);
		pthread_mutex_unlock(&fs->lock);
		if (rc) {
			fuse_reply_err(req, -rc);
			return;
		}
	}
	read_from(req, &src, size, off);
	if (own) {
		pfs_wcopy_unref(src.wc);
		pfs_model_unref(src.wc ? NULL : src.ms);
	}
}

static void op_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
		     struct fuse_file_info *fi)
{
	pfs *fs = fs_of(req);
	handle *h = (handle *)(uintptr_t)fi->fh;
	if (h->n) {
		pthread_mutex_lock(&fs->lock);
		/* a name renamed over, or a model file replaced outside: not this version any more */
		bool stale = h->n->kind == N_ENTRY && (h->n->gone || h->epoch != h->n->model->epoch);
		int rc = stale ? -ESTALE : wc_for_write(fs, h->n, false);
		if (!rc)
			rc = pfs_wcopy_write(h->n->wc, buf, size, (uint64_t)off);
		if (!rc) {
			h->wrote = true;
			h->n->version++;
		}
		pthread_mutex_unlock(&fs->lock);
		if (rc)
			fuse_reply_err(req, -rc);
		else
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

/*
 * The last close of a written entry checks it and commits at once, so the
 * close reports every error (DESIGN §4.3).  Writes that arrive after the
 * close (a shared mmap written back at munmap) are checked at release and
 * committed by the timer.
 */
static void op_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	pfs *fs = fs_of(req);
	handle *h = (handle *)(uintptr_t)fi->fh;
	int rc = 0;
	if (h->n) {
		node *m = h->n->model;
		bool commit = false;
		pthread_mutex_lock(&fs->lock);
		if (h->wrote && h->n->stale) {
			rc = -h->n->stale; /* told once */
			h->n->stale = 0;
			h->wrote = false;
		} else if (h->wrote && h->n->kind == N_ENTRY && h->n->writers <= 1) {
			rc = finalize(fs, h->n);
			commit = !rc;
			h->wrote = false;
		}
		pthread_mutex_unlock(&fs->lock);
		flush_inode_notices(fs);
		if (commit)
			rc = commit_if_ready(fs, m);
		fuse_reply_err(req, -rc);
		return;
	}
	if (h->fd >= 0) {
		/* report errors of the underlying file at close, as a local file would */
		int dupfd = dup(h->fd);
		rc = dupfd < 0 ? errno : close(dupfd) < 0 ? errno : 0;
	}
	fuse_reply_err(req, rc);
}

static void op_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	pfs *fs = fs_of(req);
	handle *h = (handle *)(uintptr_t)fi->fh;
	if (h->fd >= 0)
		close(h->fd);
	if (h->n) {
		pthread_mutex_lock(&fs->lock);
		node *n = h->n;
		if (h->may_write && n->writers)
			n->writers--;
		if (n->kind == N_ENTRY && n->state == WC_WRITING && !n->writers && !n->gone &&
		    finalize(fs, n) == 0)
			schedule_commit(fs, n->model);
		pthread_mutex_unlock(&fs->lock);
		flush_inode_notices(fs);
	}
	pfs_model_unref(h->ms);
	pfs_wcopy_unref(h->wc);
	free(h);
	fuse_reply_err(req, 0);
}

static void op_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
	pfs *fs = fs_of(req);
	handle *h = (handle *)(uintptr_t)fi->fh;
	int rc = 0;
	if (h->n) {
		node *m = h->n->model;
		pthread_mutex_lock(&fs->lock);
		if (h->wrote && h->n->stale) {
			rc = -h->n->stale;
			h->n->stale = 0;
		} else if (h->n->kind == N_ENTRY && h->n->state == WC_WRITING) {
			rc = finalize(fs, h->n);
		}
		pthread_mutex_unlock(&fs->lock);
		flush_inode_notices(fs);
		if (!rc && h->n->kind == N_ENTRY)
			rc = commit_if_ready(fs, m);
		fuse_reply_err(req, -rc);
		return;
	}
	if (h->fd >= 0 && (datasync ? fdatasync(h->fd) : fsync(h->fd)) < 0)
		rc = errno;
	fuse_reply_err(req, rc);
}

/* ---- changes to the tree ------------------------------------------------- */

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

/* The model and in-model directory path of a directory node inside a model, or NULL. */
static node *model_dir(pfs *fs, node *p, const char **dir)
{
	if (p->kind == N_MODEL && !p->failed) {
		*dir = "";
		return p;
	}
	if (p->kind == N_ENTRY) {
		pfs_model *ms;
		int64_t idx = node_entry(fs, p, &ms);
		if (idx < 0 || ms->view.e[idx].kind != PF_VE_DIR)
			return NULL;
		*dir = p->rel;
		return p->model;
	}
	return NULL;
}

static char *model_path(const char *dir, const char *name)
{
	return dir[0] ? join(dir, name) : strdup(name);
}

/*
 * A new file in a model directory is a scratch file (what rsync, sed -i and
 * editors write before renaming it over the real name), held in a spool file
 * until it is renamed over an entry, unlinked, or the mount ends.  A new
 * .npy name or a reserved name is a tensor the model does not have: EPERM.
 */
static int create_scratch(pfs *fs, node *m, const char *dir, const char *name, mode_t mode, node **out)
{
	if (fs->cfg.ro)
		return -EROFS;
	if (reserved_or_tensor_name(name))
		return -EPERM;
	char *path = model_path(dir, name);
	if (!path)
		return -ENOMEM;
	pfs_model *ms = model_of(fs, m);
	if (named_node(fs, m, path) || (ms && entry_index(ms, path) >= 0)) {
		free(path);
		return -EEXIST;
	}
	uint64_t ino = ino_of(m->rel, path) ^ pf_hash_bytes(&fs->scratch_seq, sizeof(fs->scratch_seq), 0x5c);
	fs->scratch_seq++;
	node *n = node_find_or_add(fs, N_SCRATCH, m, path, ino);
	free(path);
	if (!n)
		return -ENOMEM;
	n->wc = pfs_model_wcopy(NULL, 0, fs->src_fd, m->rel, true);
	if (!n->wc) {
		n->gone = true;
		return -errno;
	}
	n->mode = mode & 07777;
	n->has_mtime = true;
	clock_gettime(CLOCK_REALTIME, &n->mtime);
	int rc = name_node(fs, m, n);
	if (rc) {
		n->gone = true;
		return rc;
	}
	*out = n;
	return 0;
}

static void op_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
		      struct fuse_file_info *fi)
{
	pfs *fs = fs_of(req);
	char *rel = NULL;
	handle *h = calloc(1, sizeof(*h));
	const char *dir;
	int rc = h ? 0 : -ENOMEM;
	pthread_mutex_lock(&fs->lock);
	node *p = node_get(fs, parent), *m = p && h ? model_dir(fs, p, &dir) : NULL, *n = NULL;
	if (h)
		h->fd = -1;
	if (m) {
		rc = create_scratch(fs, m, dir, name, mode, &n);
		if (!rc) {
			h->n = n;
			h->epoch = m->epoch;
			h->wc = n->wc;
			pfs_wcopy_ref(h->wc);
			h->may_write = true;
			n->writers++;
		}
	} else if (!rc) {
		rc = pass_child(fs, parent, name, &rel);
		if (!rc && (h->fd = openat(fs->src_fd, rel, fi->flags | O_CREAT | O_CLOEXEC, mode)) < 0)
			rc = -errno;
	}
	free(rel);
	if (rc) {
		free(h);
	} else {
		fi->fh = (uint64_t)(uintptr_t)h;
	}
	reply_new_entry(req, fs, parent, name, rc, fi);
}

static void drop_scratch(node *m, node *n)
{
	unname_node(m, n->rel);
	n->gone = true;
	pfs_wcopy_unref(n->wc);
	n->wc = NULL;
}

static void remove_common(fuse_req_t req, fuse_ino_t parent, const char *name, int flags)
{
	pfs *fs = fs_of(req);
	char *rel = NULL;
	const char *dir;
	int rc;
	pthread_mutex_lock(&fs->lock);
	node *p = node_get(fs, parent), *m = p ? model_dir(fs, p, &dir) : NULL;
	if (m) {
		/* scratch files come and go; the model's own entries stay (EPERM) */
		char *path = model_path(dir, name);
		node *n = path ? named_node(fs, m, path) : NULL;
		rc = !path ? -ENOMEM : n && n->kind == N_SCRATCH && !flags ? 0 : -EPERM;
		if (!rc)
			drop_scratch(m, n);
		free(path);
	} else {
		rc = pass_child(fs, parent, name, &rel);
		if (!rc && unlinkat(fs->src_fd, rel, flags) < 0)
			rc = -errno;
	}
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

/* Give node n of model m the path `path` (its entry in m's `named` map moves with it). */
static int rename_node(pfs *fs, node *m, node *n, const char *path)
{
	char *rel = strdup(path);
	if (!rel)
		return -ENOMEM;
	unname_node(m, n->rel);
	free(n->rel);
	n->rel = rel;
	return name_node(fs, m, n);
}

/*
 * A scratch file renamed over an entry replaces its contents, with the same
 * checks as a write (EINVAL, nothing changes).  Like rename(2) on a local
 * file system, the name then stands for the renamed file's inode; the old
 * inode keeps what its open handles read.  Commits after commit_delay.
 */
static int rename_in_model(pfs *fs, node *m, const char *from, const char *to, unsigned int flags)
{
	node *src = named_node(fs, m, from);
	pfs_model *ms = model_of(fs, m);
	if (!src || src->kind != N_SCRATCH)
		return src || (ms && entry_index(ms, from) >= 0) ? -EPERM : -ENOENT;
	node *dst = named_node(fs, m, to);
	int64_t idx = ms ? entry_index(ms, to) : -1;
	if ((dst || idx >= 0) && (flags & RENAME_NOREPLACE))
		return -EEXIST;
	if (flags & ~RENAME_NOREPLACE)
		return -EINVAL;
	if (!dst && idx < 0) { /* scratch to a new scratch name */
		const char *base = strrchr(to, '/');
		return reserved_or_tensor_name(base ? base + 1 : to) ? -EPERM : rename_node(fs, m, src, to);
	}
	if (dst && dst->kind == N_SCRATCH) {
		drop_scratch(m, dst);
		return rename_node(fs, m, src, to);
	}
	/* over an entry of the model */
	const pf_ventry *e = &ms->view.e[idx];
	if (e->kind == PF_VE_DIR)
		return -EISDIR;
	pf_error why = {0};
	int rc = pfs_model_check(ms, (uint32_t)idx, src->wc, &why);
	if (rc) {
		log_refused(fs, m, to, rc, &why);
		return rc;
	}
	const char *path = e->kind == PF_VE_TENSOR ? ms->view.e[e->link].path : e->path;
	node *old = dst ? dst : node_find_or_add(fs, N_ENTRY, m, path, ino_of(m->rel, path));
	if (!old)
		return -ENOMEM;
	old->gone = true;
	unname_node(m, old->rel);
	src->kind = N_ENTRY;
	src->state = WC_READY;
	src->version++;
	if ((rc = rename_node(fs, m, src, path)))
		return rc;
	/* other paths of the same tensor (tied weights) must be looked up again */
	for (uint32_t i = 1; i < ms->view.n; i++)
		if (ms->view.e[i].kind == PF_VE_TENSOR && ms->view.e[i].link == e->link &&
		    strcmp(ms->view.e[i].path, to) != 0) {
			int64_t pd = ms->view.e[i].parent;
			uint64_t pino = pd == 0 ? m->ino : ino_of(m->rel, ms->view.e[pd].path);
			queue_notice(fs, 0, pino, ms->view.e[i].name);
		}
	schedule_commit(fs, m);
	return 0;
}

static void op_rename(fuse_req_t req, fuse_ino_t parent, const char *name, fuse_ino_t newparent,
		      const char *newname, unsigned int flags)
{
	pfs *fs = fs_of(req);
	char *from = NULL, *to = NULL;
	const char *d1, *d2;
	int rc;
	pthread_mutex_lock(&fs->lock);
	node *p1 = node_get(fs, parent), *p2 = node_get(fs, newparent);
	node *m1 = p1 ? model_dir(fs, p1, &d1) : NULL, *m2 = p2 ? model_dir(fs, p2, &d2) : NULL;
	if (m1 || m2) {
		if (fs->cfg.ro)
			rc = -EROFS;
		else if (m1 != m2)
			rc = -EXDEV; /* in or out of a model: tools copy instead */
		else if (!(from = model_path(d1, name)) || !(to = model_path(d2, newname)))
			rc = -ENOMEM;
		else
			rc = rename_in_model(fs, m1, from, to, flags);
	} else {
		rc = pass_child(fs, parent, name, &from);
		if (!rc)
			rc = pass_child(fs, newparent, newname, &to);
		if (!rc && flags)
			rc = -EINVAL;
		if (!rc && renameat(fs->src_fd, from, fs->src_fd, to) < 0)
			rc = -errno;
	}
	free(from);
	free(to);
	pthread_mutex_unlock(&fs->lock);
	flush_inode_notices(fs);
	fuse_reply_err(req, -rc);
}

/* setattr of a file inside a model: size through the working copy, times kept, modes fixed. */
static int setattr_model_file(pfs *fs, node *n, struct stat *attr, int to_set)
{
	struct stat cur;
	int rc = node_stat(fs, n, &cur);
	if (rc)
		return rc;
	if ((to_set & FUSE_SET_ATTR_MODE) && (attr->st_mode & 07777) != (cur.st_mode & 07777)) {
		if (n->kind != N_SCRATCH)
			return -EPERM;
		n->mode = attr->st_mode & 07777;
	}
	if ((to_set & FUSE_SET_ATTR_UID && attr->st_uid != cur.st_uid) ||
	    (to_set & FUSE_SET_ATTR_GID && attr->st_gid != cur.st_gid))
		return -EPERM;
	if (to_set & FUSE_SET_ATTR_SIZE) {
		if (fs->cfg.ro)
			return -EROFS;
		if ((rc = wc_for_write(fs, n, attr->st_size == 0 && n->kind == N_ENTRY)) ||
		    (rc = pfs_wcopy_truncate(n->wc, (uint64_t)attr->st_size)))
			return rc;
		n->version++; /* the kernel drops the pages itself */
		if (n->kind == N_ENTRY && !n->writers) /* truncate(1) with no file open */
			rc = finalize(fs, n);
		if (rc)
			return rc;
		if (n->kind == N_ENTRY && !n->writers)
			schedule_commit(fs, n->model);
	}
	if (to_set & (FUSE_SET_ATTR_MTIME | FUSE_SET_ATTR_MTIME_NOW)) {
		n->has_mtime = true;
		if (to_set & FUSE_SET_ATTR_MTIME_NOW)
			clock_gettime(CLOCK_REALTIME, &n->mtime);
		else
			n->mtime = attr->st_mtim;
	}
	return 0;
}

static void op_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set, struct fuse_file_info *fi)
{
	pfs *fs = fs_of(req);
	struct stat st;
	pthread_mutex_lock(&fs->lock);
	node *n = node_get(fs, ino);
	int rc = 0;
	double timeout = SHORT_TIMEOUT;
	if (!n) {
		rc = -ESTALE;
	} else if (n->kind == N_SCRATCH || n->kind == N_ENTRY) {
		pfs_model *ms;
		int64_t idx = n->kind == N_ENTRY ? node_entry(fs, n, &ms) : 0;
		rc = idx < 0 ? -ESTALE : n->kind == N_ENTRY && ms->view.e[idx].kind == PF_VE_DIR && (to_set & FUSE_SET_ATTR_SIZE) ? -EISDIR
			: setattr_model_file(fs, n, attr, to_set);
		if (!rc && fi && (to_set & FUSE_SET_ATTR_SIZE) && fi->fh)
			((handle *)(uintptr_t)fi->fh)->wrote = true; /* ftruncate: checked at close */
		if (!rc)
			rc = node_stat(fs, n, &st);
		pthread_mutex_unlock(&fs->lock);
		flush_inode_notices(fs);
		if (rc)
			fuse_reply_err(req, -rc);
		else
			fuse_reply_attr(req, &st, 0);
		return;
	} else if (n->kind != N_PASS && !(n->kind == N_MODEL && n->failed))
		rc = -EPERM;
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
		fuse_reply_attr(req, &st, timeout);
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
	if (pthread_create(&fs->committer, NULL, committer_main, fs) == 0)
		fs->committer_running = true;
	pthread_mutex_unlock(&fs->lock);
}

/* At unmount: every change still pending is committed now (errors go to the log). */
static void commit_all(pfs *fs)
{
	for (;;) {
		node *m = NULL;
		pthread_mutex_lock(&fs->lock);
		for (uint32_t i = 0; !m && i < fs->n_nodes; i++) {
			node *e = fs->nodes[i];
			if (e->kind == N_ENTRY && !e->gone && e->state == WC_WRITING && !e->writers)
				finalize(fs, e);
			if (e->kind == N_ENTRY && !e->gone && e->state == WC_READY && e->model && !e->model->failed)
				m = e->model;
		}
		pthread_mutex_unlock(&fs->lock);
		if (!m || commit_model(fs, m))
			return; /* a failed commit dropped its changes: nothing is left to retry */
	}
}

static void op_destroy(void *userdata)
{
	pfs *fs = userdata;
	pthread_mutex_lock(&fs->lock);
	fs->stopping = true;
	pthread_cond_signal(&fs->notice_cv);
	pthread_cond_signal(&fs->commit_cv);
	bool running = fs->notifier_running, committing = fs->committer_running;
	fs->notifier_running = fs->committer_running = false;
	pthread_mutex_unlock(&fs->lock);
	if (running)
		pthread_join(fs->notifier, NULL);
	if (committing)
		pthread_join(fs->committer, NULL);
	commit_all(fs);
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
	pthread_cond_init(&fs->commit_cv, NULL);
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
		pfs_wcopy_unref(fs->nodes[i]->wc);
		pf_hashmap_free(&fs->nodes[i]->named);
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
	pthread_cond_destroy(&fs->commit_cv);
	free(fs);
	errno = saved;
}
