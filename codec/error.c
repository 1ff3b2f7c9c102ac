#include "error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

int pf_fail(pf_error *err, pf_code code, uint64_t offset, const char *fmt, ...)
{
	va_list ap;

	if (!err || err->code != PF_OK)
		return -1;
	err->code = code;
	err->offset = offset;
	va_start(ap, fmt);
	vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
	va_end(ap);
	return -1;
}

void pf_error_clear(pf_error *err)
{
	memset(err, 0, sizeof(*err));
}

const char *pf_code_name(pf_code code)
{
	switch (code) {
	case PF_OK: return "ok";
	case PF_E_TRUNCATED: return "truncated";
	case PF_E_OPCODE: return "bad opcode";
	case PF_E_STACK: return "bad stack";
	case PF_E_MEMO: return "bad memo";
	case PF_E_LIMIT: return "limit";
	case PF_E_NOMEM: return "out of memory";
	case PF_E_ZIP: return "bad zip";
	case PF_E_FORMAT: return "bad format";
	case PF_E_INFLATE: return "bad deflate";
	case PF_E_UNSUPPORTED: return "unsupported";
	case PF_E_INVALID: return "invalid change";
	}
	return "unknown";
}
