/*
 * picklefs - mount saved Python and PyTorch model files as directories.
 *
 *   picklefs [options] SOURCE MOUNTPOINT   mount (daemonizes unless -f)
 *   picklefs inspect FILE                  print the meta.json of FILE
 *
 * inspect exits 0 for a model, 1 when FILE is not a model we can read (one
 * line: path, byte offset, reason), 2 for usage and I/O errors.  The mount
 * exits non-zero with one line when it cannot start.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <syslog.h>
#include <unistd.h>

#include "mapfile.h"
#include "meta.h"
#include "model.h"
#include "pfs.h"

#ifndef PICKLEFS_VERSION
#define PICKLEFS_VERSION "unknown"
#endif

static void usage(FILE *to)
{
	fprintf(to,
		"usage: picklefs [options] SOURCE MOUNTPOINT   mount SOURCE (a folder or one model file)\n"
		"       picklefs inspect FILE                  print the meta.json the mount shows for FILE\n"
		"       picklefs --help | --version\n"
		"\n"
		"SOURCE may hold torch.save zip or legacy files, TorchScript archives and plain\n"
		"pickles; each appears as a directory of .npy tensors with meta.json, device and\n"
		"globals. Nothing in a model is imported or executed.\n"
		"\n"
		"picklefs options:\n"
		"    -o cache=DIR           index cache (default $XDG_CACHE_HOME/picklefs)\n"
		"    -o ro                  read-only mount\n"
		"    -o commit_delay=MS     commit a renamed-over or mmap-written file MS ms after\n"
		"                           the last change (default 500); a closed or fsynced\n"
		"                           file is committed at once\n"
		"\n");
}

static int inspect(const char *path)
{
	pf_mapfile mf;
	pf_model m;
	pf_tree t;
	pf_error err = {0};
	int rc = pf_mapfile_open(&mf, path);

	if (rc) {
		fprintf(stderr, "picklefs: %s: %s\n", path, strerror(-rc));
		return 2;
	}
	bool parsed = pf_model_open(&m, mf.data, mf.len, NULL, &err) == 0;
	/* a page the pager could not read was given as zeros: never trust that parse */
	rc = pf_mapfile_error(&mf);
	if (rc) {
		fprintf(stderr, "picklefs: %s: %s\n", path, strerror(-rc));
		if (parsed)
			pf_model_free(&m);
		pf_mapfile_close(&mf);
		return 2;
	}
	if (!parsed || pf_tree_build(&m, &t, &err)) {
		fprintf(stderr, "picklefs: %s: offset %llu: %s (%s)\n", path, (unsigned long long)err.offset,
			err.msg, pf_code_name(err.code));
		if (parsed)
			pf_model_free(&m);
		pf_mapfile_close(&mf);
		return 1;
	}
	char *text = pf_tree_meta_text(&t);
	if (text)
		fputs(text, stdout);
	else
		fprintf(stderr, "picklefs: %s: out of memory\n", path);
	free(text);
	pf_tree_free(&t);
	pf_model_free(&m);
	pf_mapfile_close(&mf);
	return text ? 0 : 2;
}

/* ---- mounting ---------------------------------------------------------- */

typedef struct mount_opts {
	char *source;
	const char *mountpoint; /* as given; fuse_parse_cmdline takes it later */
	char *cache;
	int ro;
	int commit_delay;
	int n_positional;
} mount_opts;

enum { KEY_RO };

static const struct fuse_opt picklefs_opts[] = {
	{"cache=%s", offsetof(mount_opts, cache), 0},
	{"commit_delay=%d", offsetof(mount_opts, commit_delay), 0},
	FUSE_OPT_KEY("ro", KEY_RO),
	FUSE_OPT_END,
};

/* SOURCE is taken out here; MOUNTPOINT is left for fuse_parse_cmdline. */
static int opt_proc(void *data, const char *arg, int key, struct fuse_args *outargs)
{
	mount_opts *o = data;
	if (key == KEY_RO) {
		o->ro = 1;
		return 1; /* and the kernel mounts it read-only too */
	}
	if (key == FUSE_OPT_KEY_NONOPT && o->n_positional++ == 0) {
		o->source = strdup(arg);
		return 0;
	}
	if (key == FUSE_OPT_KEY_NONOPT && o->n_positional == 2)
		o->mountpoint = arg;
	return 1;
}

static char *default_cache_dir(void)
{
	const char *xdg = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
	char buf[4096];
	if (xdg && *xdg)
		snprintf(buf, sizeof(buf), "%s/picklefs", xdg);
	else if (home && *home)
		snprintf(buf, sizeof(buf), "%s/.cache/picklefs", home);
	else
		return NULL;
	return strdup(buf);
}

static int mount_main(int argc, char **argv)
{
	struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
	struct fuse_cmdline_opts opts = {0};
	mount_opts mo = {.commit_delay = 500};
	struct fuse_session *se = NULL;
	pfs *fs = NULL;
	int rc = 1;

	struct stat st;
	if (fuse_opt_parse(&args, &mo, picklefs_opts, opt_proc) < 0) {
		fprintf(stderr, "picklefs: bad arguments (see picklefs --help)\n");
		goto out;
	}
	/* checked here so that a bad mountpoint gets our one line, not libfuse's and ours */
	if (mo.mountpoint && (stat(mo.mountpoint, &st) < 0 || !S_ISDIR(st.st_mode))) {
		fprintf(stderr, "picklefs: %s: mountpoint is not a directory\n", mo.mountpoint);
		goto out;
	}
	if (fuse_parse_cmdline(&args, &opts) != 0) {
		fprintf(stderr, "picklefs: bad arguments (see picklefs --help)\n");
		goto out;
	}
	if (opts.show_help) {
		usage(stdout);
		fuse_cmdline_help();
		fuse_lowlevel_help();
		rc = 0;
		goto out;
	}
	if (opts.show_version) {
		printf("picklefs %s\n", PICKLEFS_VERSION);
		rc = 0;
		goto out;
	}
	if (!mo.source || !opts.mountpoint) {
		fprintf(stderr, "picklefs: need SOURCE and MOUNTPOINT (see picklefs --help)\n");
		goto out;
	}
	if (stat(opts.mountpoint, &st) < 0 || !S_ISDIR(st.st_mode)) {
		fprintf(stderr, "picklefs: %s: mountpoint is not a directory\n", opts.mountpoint);
		goto out;
	}
	/* daemonizing moves to "/": a relative cache dir must be made absolute first */
	if (mo.cache && mo.cache[0] != '/') {
		char cwd[4096], *abs = NULL;
		if (getcwd(cwd, sizeof(cwd)) && asprintf(&abs, "%s/%s", cwd, mo.cache) > 0) {
			free(mo.cache);
			mo.cache = abs;
		}
	}
	pfs_config cfg = {
		.source = mo.source, .cache_dir = mo.cache ? mo.cache : (mo.cache = default_cache_dir()),
		.ro = mo.ro, .foreground = opts.foreground, .commit_delay_ms = mo.commit_delay,
	};
	if (mo.commit_delay < 0) {
		fprintf(stderr, "picklefs: commit_delay must be 0 or more milliseconds\n");
		goto out;
	}
	fs = pfs_new(&cfg);
	if (!fs) {
		fprintf(stderr, "picklefs: %s: %s\n", mo.source, strerror(errno));
		goto out;
	}
	se = fuse_session_new(&args, &pfs_ops, sizeof(pfs_ops), fs);
	if (!se) {
		fprintf(stderr, "picklefs: cannot start a FUSE session\n");
		goto out;
	}
	pfs_set_session(fs, se);
	if (fuse_set_signal_handlers(se) != 0)
		goto out;
	if (fuse_session_mount(se, opts.mountpoint) != 0) {
		fprintf(stderr, "picklefs: cannot mount on %s (is /dev/fuse there?)\n", opts.mountpoint);
		goto out_signals;
	}
	/* the mount is ready: only now go to the background */
	fuse_daemonize(opts.foreground);
	if (!opts.foreground)
		openlog("picklefs", LOG_PID, LOG_DAEMON);
	if (opts.singlethread) {
		rc = fuse_session_loop(se);
	} else {
		struct fuse_loop_config *lc = fuse_loop_cfg_create();
		fuse_loop_cfg_set_clone_fd(lc, opts.clone_fd);
		fuse_loop_cfg_set_max_threads(lc, opts.max_threads ? opts.max_threads : 10);
		rc = fuse_session_loop_mt(se, lc);
		fuse_loop_cfg_destroy(lc);
	}
	rc = rc ? 1 : 0;
	fuse_session_unmount(se);
out_signals:
	fuse_remove_signal_handlers(se);
out:
	if (se)
		fuse_session_destroy(se);
	pfs_free(fs);
	free(opts.mountpoint);
	free(mo.source);
	free(mo.cache);
	fuse_opt_free_args(&args);
	return rc;
}

int main(int argc, char **argv)
{
	if (argc == 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
		usage(stdout);
		fuse_cmdline_help();
		return 0;
	}
	if (argc == 2 && (!strcmp(argv[1], "--version") || !strcmp(argv[1], "-V"))) {
		printf("picklefs %s\n", PICKLEFS_VERSION);
		return 0;
	}
	if (argc >= 2 && !strcmp(argv[1], "inspect")) {
		if (argc != 3) {
			usage(stderr);
			return 2;
		}
		return inspect(argv[2]);
	}
	return mount_main(argc, argv);
}
