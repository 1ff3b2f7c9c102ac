#include "mapfile.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

/* Fill the page holding `addr` from the file (zeros past its end). */
static void fill_page(pf_mapfile *mf, uint64_t addr, uint8_t *page, size_t psz)
{
	uint64_t off = addr - (uint64_t)(uintptr_t)mf->data;
	size_t want = off + psz <= mf->len ? psz : (size_t)(mf->len - off);
	size_t got = 0;

	while (got < want) {
		ssize_t n = pread(mf->fd, page + got, want - got, (off_t)(off + got));
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			int expected = 0;
			atomic_compare_exchange_strong(&mf->io_error, &expected, n < 0 ? errno : EIO);
			break;
		}
		got += (size_t)n;
	}
	memset(page + got, 0, psz - got);
	struct uffdio_copy copy = {.dst = addr, .src = (uint64_t)(uintptr_t)page, .len = psz};
	/* EEXIST: another fault on the same page was served first */
	if (ioctl(mf->uffd, UFFDIO_COPY, &copy) < 0 && errno != EEXIST) {
		int expected = 0;
		atomic_compare_exchange_strong(&mf->io_error, &expected, errno);
	}
}

static void *pager_main(void *arg)
{
	pf_mapfile *mf = arg;
	size_t psz = (size_t)sysconf(_SC_PAGESIZE);
	uint8_t *page = aligned_alloc(psz, psz);
	struct pollfd fds[2] = {{.fd = mf->uffd, .events = POLLIN}, {.fd = mf->stop_fd, .events = POLLIN}};

	if (!page)
		return NULL;
	for (;;) {
		if (poll(fds, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		if (fds[1].revents)
			break;
		struct uffd_msg msg;
		ssize_t n = read(mf->uffd, &msg, sizeof(msg));
		if (n != (ssize_t)sizeof(msg) || msg.event != UFFD_EVENT_PAGEFAULT)
			continue;
		fill_page(mf, msg.arg.pagefault.address & ~(uint64_t)(psz - 1), page, psz);
	}
	free(page);
	return NULL;
}

/* Set up the paged buffer; -1 (nothing left behind) when userfaultfd is not to be had. */
static int map_paged(pf_mapfile *mf)
{
	size_t psz = (size_t)sysconf(_SC_PAGESIZE);
	mf->map_len = (size_t)((mf->len + psz - 1) & ~(uint64_t)(psz - 1));
	mf->uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
	if (mf->uffd < 0)
		return -1;
	struct uffdio_api api = {.api = UFFD_API};
	void *p = MAP_FAILED;
	if (ioctl(mf->uffd, UFFDIO_API, &api) < 0)
		goto fail;
	p = mmap(NULL, mf->map_len, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (p == MAP_FAILED)
		goto fail;
	/* 4 KiB pages: a huge page would bring back the cost we are avoiding */
	madvise(p, mf->map_len, MADV_NOHUGEPAGE);
	struct uffdio_register reg = {
		.range = {.start = (uint64_t)(uintptr_t)p, .len = mf->map_len},
		.mode = UFFDIO_REGISTER_MODE_MISSING,
	};
	if (ioctl(mf->uffd, UFFDIO_REGISTER, &reg) < 0)
		goto fail;
	mf->stop_fd = eventfd(0, EFD_CLOEXEC);
	if (mf->stop_fd < 0)
		goto fail;
	mf->data = p;
	if (pthread_create(&mf->pager, NULL, pager_main, mf) != 0) {
		close(mf->stop_fd);
		mf->stop_fd = -1;
		goto fail;
	}
	mf->paged = true;
	return 0;
fail:
	if (p != MAP_FAILED)
		munmap(p, mf->map_len);
	close(mf->uffd);
	mf->uffd = -1;
	mf->data = NULL;
	return -1;
}

static int map_direct(pf_mapfile *mf)
{
	void *p = mmap(NULL, (size_t)mf->len, PROT_READ, MAP_PRIVATE, mf->fd, 0);
	if (p == MAP_FAILED)
		return -errno;
	/* no read-ahead of tensor bytes around each header read on a cold cache */
	madvise(p, (size_t)mf->len, MADV_RANDOM);
	mf->data = p;
	mf->map_len = (size_t)mf->len;
	return 0;
}

static int map_open_fd(pf_mapfile *mf)
{
	if (fstat(mf->fd, &mf->st) < 0 || !S_ISREG(mf->st.st_mode)) {
		int e = S_ISREG(mf->st.st_mode) ? -errno : -EINVAL;
		close(mf->fd);
		mf->fd = -1;
		return e;
	}
	mf->len = (uint64_t)mf->st.st_size;
	if (mf->len == 0 || getenv("PICKLEFS_NO_PAGER") || map_paged(mf) == 0)
		return mf->len == 0 || mf->data ? 0 : map_direct(mf);
	int rc = map_direct(mf);
	if (rc) {
		close(mf->fd);
		mf->fd = -1;
	}
	return rc;
}

int pf_mapfile_open(pf_mapfile *mf, const char *path)
{
	memset(mf, 0, sizeof(*mf));
	mf->uffd = mf->stop_fd = -1;
	mf->fd = open(path, O_RDONLY | O_CLOEXEC);
	if (mf->fd < 0)
		return -errno;
	return map_open_fd(mf);
}

int pf_mapfile_open_direct(pf_mapfile *mf, int fd)
{
	memset(mf, 0, sizeof(*mf));
	mf->uffd = mf->stop_fd = -1;
	mf->fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
	if (mf->fd < 0)
		return -errno;
	if (fstat(mf->fd, &mf->st) < 0 || !S_ISREG(mf->st.st_mode)) {
		int e = S_ISREG(mf->st.st_mode) ? -errno : -EINVAL;
		close(mf->fd);
		mf->fd = -1;
		return e;
	}
	mf->len = (uint64_t)mf->st.st_size;
	int rc = mf->len ? map_direct(mf) : 0;
	if (rc) {
		close(mf->fd);
		mf->fd = -1;
	}
	return rc;
}

int pf_mapfile_open_fd(pf_mapfile *mf, int fd)
{
	memset(mf, 0, sizeof(*mf));
	mf->uffd = mf->stop_fd = -1;
	mf->fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
	if (mf->fd < 0)
		return -errno;
	return map_open_fd(mf);
}

int pf_mapfile_error(pf_mapfile *mf)
{
	return -atomic_load(&mf->io_error);
}

void pf_mapfile_close(pf_mapfile *mf)
{
	if (mf->paged) {
		uint64_t one = 1;
		if (write(mf->stop_fd, &one, sizeof(one)) == (ssize_t)sizeof(one))
			pthread_join(mf->pager, NULL);
		close(mf->stop_fd);
		close(mf->uffd);
	}
	if (mf->data)
		munmap((void *)mf->data, mf->map_len);
	if (mf->fd >= 0)
		close(mf->fd);
	memset(mf, 0, sizeof(*mf));
	mf->fd = mf->uffd = mf->stop_fd = -1;
}
