#include "mapfile.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

int pf_mapfile_open(pf_mapfile *mf, const char *path)
{
	memset(mf, 0, sizeof(*mf));
	mf->fd = open(path, O_RDONLY | O_CLOEXEC);
	if (mf->fd < 0)
		return -errno;
	if (fstat(mf->fd, &mf->st) < 0) {
		int e = -errno;
		close(mf->fd);
		return e;
	}
	if (!S_ISREG(mf->st.st_mode)) {
		close(mf->fd);
		return -EINVAL;
	}
	mf->len = (uint64_t)mf->st.st_size;
	if (mf->len == 0)
		return 0;
	void *p = mmap(NULL, (size_t)mf->len, PROT_READ, MAP_PRIVATE, mf->fd, 0);
	if (p == MAP_FAILED) {
		int e = -errno;
		close(mf->fd);
		return e;
	}
	/* The codec reads a few bytes next to each record and never the tensor
	 * bytes: without this, each such read makes the kernel read ahead
	 * megabytes of tensor data (the whole file on a cold cache). */
	madvise(p, (size_t)mf->len, MADV_RANDOM);
	mf->data = p;
	return 0;
}

void pf_mapfile_close(pf_mapfile *mf)
{
	if (mf->data)
		munmap((void *)mf->data, (size_t)mf->len);
	if (mf->fd >= 0)
		close(mf->fd);
	memset(mf, 0, sizeof(*mf));
	mf->fd = -1;
}
