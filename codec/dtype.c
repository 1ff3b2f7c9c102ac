#include "dtype.h"

#include <stdio.h>
#include <string.h>

static const pf_dtype_info table[PF_DT_COUNT] = {
	[PF_DT_NONE] = {"none", NULL, 0, "|V0"},
	[PF_DT_F64] = {"float64", "DoubleStorage", 8, "<f8"},
	[PF_DT_F32] = {"float32", "FloatStorage", 4, "<f4"},
	[PF_DT_F16] = {"float16", "HalfStorage", 2, "<f2"},
	[PF_DT_BF16] = {"bfloat16", "BFloat16Storage", 2, "|V2"},
	[PF_DT_I64] = {"int64", "LongStorage", 8, "<i8"},
	[PF_DT_I32] = {"int32", "IntStorage", 4, "<i4"},
	[PF_DT_I16] = {"int16", "ShortStorage", 2, "<i2"},
	[PF_DT_I8] = {"int8", "CharStorage", 1, "|i1"},
	[PF_DT_U8] = {"uint8", "ByteStorage", 1, "|u1"},
	[PF_DT_BOOL] = {"bool", "BoolStorage", 1, "|b1"},
	[PF_DT_C128] = {"complex128", "ComplexDoubleStorage", 16, "<c16"},
	[PF_DT_C64] = {"complex64", "ComplexFloatStorage", 8, "<c8"},
	[PF_DT_C32] = {"complex32", NULL, 4, "|V4"},
	[PF_DT_QINT8] = {"qint8", "QInt8Storage", 1, "|i1"},
	[PF_DT_QUINT8] = {"quint8", "QUInt8Storage", 1, "|u1"},
	[PF_DT_QINT32] = {"qint32", "QInt32Storage", 4, "<i4"},
	[PF_DT_QUINT4X2] = {"quint4x2", "QUInt4x2Storage", 1, "|u1"},
	[PF_DT_QUINT2X4] = {"quint2x4", "QUInt2x4Storage", 1, "|u1"},
	[PF_DT_F8_E5M2] = {"float8_e5m2", NULL, 1, "|V1"},
	[PF_DT_F8_E4M3FN] = {"float8_e4m3fn", NULL, 1, "|V1"},
	[PF_DT_F8_E5M2FNUZ] = {"float8_e5m2fnuz", NULL, 1, "|V1"},
	[PF_DT_F8_E4M3FNUZ] = {"float8_e4m3fnuz", NULL, 1, "|V1"},
	[PF_DT_U16] = {"uint16", NULL, 2, "<u2"},
	[PF_DT_U32] = {"uint32", NULL, 4, "<u4"},
	[PF_DT_U64] = {"uint64", NULL, 8, "<u8"},
	[PF_DT_NUMPY] = {"numpy", NULL, 0, NULL},
};

const pf_dtype_info *pf_dtype_get(pf_dtype dt)
{
	if ((unsigned)dt >= PF_DT_COUNT)
		dt = PF_DT_NONE;
	return &table[dt];
}

pf_dtype pf_dtype_from_storage(const char *name)
{
	for (int i = 1; i < PF_DT_NUMPY; i++)
		if (table[i].storage && strcmp(table[i].storage, name) == 0)
			return (pf_dtype)i;
	return PF_DT_NONE;
}

pf_dtype pf_dtype_from_name(const char *name)
{
	/* torch.float/double/half/long/int/short/cfloat... are aliases that
	 * pickle under the canonical name, but old files may use them */
	static const struct { const char *alias; pf_dtype dt; } aliases[] = {
		{"float", PF_DT_F32}, {"double", PF_DT_F64}, {"half", PF_DT_F16},
		{"long", PF_DT_I64}, {"int", PF_DT_I32}, {"short", PF_DT_I16},
		{"cfloat", PF_DT_C64}, {"cdouble", PF_DT_C128}, {"chalf", PF_DT_C32},
	};
	for (int i = 1; i < PF_DT_NUMPY; i++)
		if (strcmp(table[i].name, name) == 0)
			return (pf_dtype)i;
	for (size_t i = 0; i < sizeof(aliases) / sizeof(aliases[0]); i++)
		if (strcmp(aliases[i].alias, name) == 0)
			return aliases[i].dt;
	return PF_DT_NONE;
}

static bool parse_uint(const char *s, size_t len, unsigned *out)
{
	unsigned v = 0;
	if (len == 0 || len > 6)
		return false;
	for (size_t i = 0; i < len; i++) {
		if (s[i] < '0' || s[i] > '9')
			return false;
		v = v * 10 + (unsigned)(s[i] - '0');
	}
	*out = v;
	return true;
}

bool pf_numpy_typestr(const char *ts, size_t len, unsigned *itemsize,
		      char *descr, size_t descr_cap, char *name_buf, size_t name_cap)
{
	char order = 0, kind;
	unsigned n;
	const char *kname;

	if (len > 0 && (ts[0] == '<' || ts[0] == '>' || ts[0] == '|' || ts[0] == '=')) {
		order = ts[0];
		ts++;
		len--;
	}
	if (len < 2)
		return false;
	kind = ts[0];
	if (!parse_uint(ts + 1, len - 1, &n) || n == 0)
		return false;
	switch (kind) {
	case 'f': kname = "float"; if (n != 2 && n != 4 && n != 8 && n != 16) return false; break;
	case 'i': kname = "int"; if (n != 1 && n != 2 && n != 4 && n != 8) return false; break;
	case 'u': kname = "uint"; if (n != 1 && n != 2 && n != 4 && n != 8) return false; break;
	case 'c': kname = "complex"; if (n != 8 && n != 16 && n != 32) return false; break;
	case 'b': kname = "bool"; if (n != 1) return false; break;
	case 'S': kname = "bytes"; break;
	case 'V': kname = "void"; break;
	case 'U': kname = "str"; if (n > 0x3fffffff) return false; n *= 4; break;
	case 'M': kname = "datetime64"; if (n != 8) return false; break;
	case 'm': kname = "timedelta64"; if (n != 8) return false; break;
	default: return false;
	}
	/* '=' is native order, which is little-endian on every machine we run on */
	if (order == '=' || order == 0)
		order = (n == 1 || kind == 'S' || kind == 'V' || kind == 'b') ? '|' : '<';
	if (n == 1 || kind == 'S' || kind == 'V')
		order = '|';
	*itemsize = n;
	snprintf(descr, descr_cap, "%c%c%u", order, kind, kind == 'U' ? n / 4 : n);
	if (kind == 'b')
		snprintf(name_buf, name_cap, "bool");
	else if (kind == 'M' || kind == 'm')
		snprintf(name_buf, name_cap, "%s", kname);
	else
		snprintf(name_buf, name_cap, "%s%u", kname, n * 8);
	return true;
}
