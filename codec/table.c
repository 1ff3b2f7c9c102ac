#include "table.h"

#include <stdlib.h>

int pf_table_grow(void **items, uint32_t *cap, uint32_t need, size_t size, pf_error *err)
{
	if (need <= *cap)
		return 0;
	uint32_t ncap = *cap ? *cap : 16;
	while (ncap < need) {
		if (ncap > UINT32_MAX / 2)
			return pf_fail(err, PF_E_LIMIT, 0, "table too large");
		ncap *= 2;
	}
	if ((size_t)ncap > SIZE_MAX / size)
		return pf_fail(err, PF_E_NOMEM, 0, "table too large");
	void *p = realloc(*items, (size_t)ncap * size);
	if (!p)
		return pf_fail(err, PF_E_NOMEM, 0, "out of memory");
	*items = p;
	*cap = ncap;
	return 0;
}
