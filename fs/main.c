/*
 * picklefs - mount saved Python and PyTorch model files as directories.
 *
 * This file is the command line: `picklefs inspect FILE` prints the
 * meta.json the mount shows for FILE.  Exit status: 0 for a model, 1 when
 * FILE is not a model we can read (one line: path, byte offset, reason),
 * 2 for usage and I/O errors.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mapfile.h"
#include "meta.h"
#include "model.h"

#ifndef PICKLEFS_VERSION
#define PICKLEFS_VERSION "unknown"
#endif

static void usage(FILE *to)
{
	fprintf(to,
		"usage: picklefs inspect FILE     print the meta.json the mount shows for FILE\n"
		"       picklefs --help | --version\n"
		"\n"
		"FILE may be a torch.save zip or legacy file, a TorchScript archive or a\n"
		"plain pickle.  Nothing in it is imported or executed.\n");
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
	if (!parsed) {
		fprintf(stderr, "picklefs: %s: offset %llu: %s (%s)\n", path, (unsigned long long)err.offset,
			err.msg, pf_code_name(err.code));
		pf_mapfile_close(&mf);
		return 1;
	}
	if (pf_tree_build(&m, &t, &err)) {
		fprintf(stderr, "picklefs: %s: offset %llu: %s (%s)\n", path, (unsigned long long)err.offset,
			err.msg, pf_code_name(err.code));
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

int main(int argc, char **argv)
{
	if (argc == 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
		usage(stdout);
		return 0;
	}
	if (argc == 2 && (!strcmp(argv[1], "--version") || !strcmp(argv[1], "-V"))) {
		printf("picklefs %s\n", PICKLEFS_VERSION);
		return 0;
	}
	if (argc == 3 && !strcmp(argv[1], "inspect"))
		return inspect(argv[2]);
	usage(stderr);
	return 2;
}
