/*
 * test_pickle.c - unit tests for codec/pickle.c, the symbolic pickle VM.
 *
 * Fixtures are real pickles written by CPython 3.11 (/usr/bin/python3); the
 * generator is quoted below so that they can be remade.  Hand-written byte
 * strings cover what CPython 3 never writes (Python 2 STRING/BINSTRING,
 * INST/OBJ, EXT*, PERSID, huge lengths) and every malformed case.
 *
 * Most tests render the graph as text (render() below) and compare it with
 * the value the pickle holds, so a wrong kind, number or string fails.
 *
 *   classes Obj, Kw (__getnewargs_ex__ -> ((1,), {'k': 2})), L(list),
 *   D(dict) live in module "mod";  x = [1];  od = OrderedDict(a=1, b=2);
 *   l = L([1, 2]); l.z = 3;  d = D(q=1)
 *   INTSp   = dumps([0,1,255,256,65536,-1,2**31-1,-2**31,2**31,2**63-1,
 *                    -2**63,2**63,2**100,True,False,None,1.5], p)
 *   STRSp   = dumps(['', 'hé\n\\', b'\0\xffa', bytearray(b'xy')], p)
 *   CONTp   = dumps([(), (1,), (1,2), (1,2,3), (1,2,3,4), {}, {'a':1,'b':2},
 *                    set(), {7}, frozenset(), frozenset([8])], p)
 *   SHAREDp = dumps([x, x, (x,)], p)
 *   OBJSp   = dumps([Obj(), od, l, d], p)
 *   KW4     = dumps(Kw(), 4)
 *   SG4     = dumps([OrderedDict(), Counter(), OrderedDict()], 4)
 *   BIG2    = dumps([2**2100, -2**2100, -2**63-1, 2**64], 2)
 *   MEMO300 = dumps([strs, strs[299], strs[5]], 2), strs = ['s0'..'s299']
 *   LONG4   = dumps(['x'*300, b'y'*300], 4)
 *   OOB5    = dumps([PickleBuffer(b'abc'), PickleBuffer(bytearray(b'de'))],
 *                   5, buffer_callback=lambda b: False)
 *   FL0     = dumps([1.5, -0.25, 1e300, float('inf')], 0)
 */
#include <check.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pickle.h"

static const char INTS0[] =
	"(lp0\012I0\012aI1\012aI255\012aI256\012aI65536\012aI-1\012aI2147483647"
	"\012aI-2147483648\012aL2147483648L\012aL9223372036854775807L\012aL-92233"
	"72036854775808L\012aL9223372036854775808L\012aL1267650600228229401496703"
	"205376L\012aI01\012aI00\012aNaF1.5\012a.";
static const char STRS0[] =
	"(lp0\012V\012p1\012aVh\351\134u000a\134u005c\012p2\012ac_codecs\012encod"
	"e\012p3\012(V\134u0000\377a\012p4\012Vlatin1\012p5\012tp6\012Rp7\012ac__"
	"builtin__\012bytearray\012p8\012(g3\012(Vxy\012p9\012g5\012tp10\012Rp11"
	"\012tp12\012Rp13\012a.";
static const char CONT0[] =
	"(lp0\012(ta(I1\012tp1\012a(I1\012I2\012tp2\012a(I1\012I2\012I3\012tp3"
	"\012a(I1\012I2\012I3\012I4\012tp4\012a(dp5\012a(dp6\012Va\012p7\012I1"
	"\012sVb\012p8\012I2\012sac__builtin__\012set\012p9\012((lp10\012tp11\012"
	"Rp12\012ag9\012((lp13\012I7\012atp14\012Rp15\012ac__builtin__\012frozens"
	"et\012p16\012((lp17\012tp18\012Rp19\012ag16\012((lp20\012I8\012atp21\012"
	"Rp22\012a.";
static const char SHARED0[] =
	"(lp0\012(lp1\012I1\012aag1\012a(g1\012tp2\012a.";
static const char OBJS0[] =
	"(lp0\012ccopy_reg\012_reconstructor\012p1\012(cmod\012Obj\012p2\012c__bu"
	"iltin__\012object\012p3\012Ntp4\012Rp5\012(dp6\012Va\012p7\012I1\012sVb"
	"\012p8\012(lp9\012I2\012asbaccollections\012OrderedDict\012p10\012(tRp11"
	"\012g7\012I1\012sg8\012I2\012sag1\012(cmod\012L\012p12\012c__builtin__"
	"\012list\012p13\012(lp14\012I1\012aI2\012atp15\012Rp16\012(dp17\012Vz"
	"\012p18\012I3\012sbag1\012(cmod\012D\012p19\012c__builtin__\012dict\012p"
	"20\012(dp21\012Vq\012p22\012I1\012stp23\012Rp24\012a.";
static const char INTS1[] =
	"]q\000(K\000K\001K\377M\000\001J\000\000\001\000J\377\377\377\377J\377"
	"\377\377\177J\000\000\000\200L2147483648L\012L9223372036854775807L\012L-"
	"9223372036854775808L\012L9223372036854775808L\012L1267650600228229401496"
	"703205376L\012I01\012I00\012NG\077\370\000\000\000\000\000\000e.";
static const char STRS1[] =
	"]q\000(X\000\000\000\000q\001X\005\000\000\000h\303\251\012\134q\002c_co"
	"decs\012encode\012q\003(X\004\000\000\000\000\303\277aq\004X\006\000\000"
	"\000latin1q\005tq\006Rq\007c__builtin__\012bytearray\012q\010(h\003(X"
	"\002\000\000\000xyq\011h\005tq\012Rq\013tq\014Rq\015e.";
static const char CONT1[] =
	"]q\000()(K\001tq\001(K\001K\002tq\002(K\001K\002K\003tq\003(K\001K\002K"
	"\003K\004tq\004}q\005}q\006(X\001\000\000\000aq\007K\001X\001\000\000"
	"\000bq\010K\002uc__builtin__\012set\012q\011(]q\012tq\013Rq\014h\011(]q"
	"\015K\007atq\016Rq\017c__builtin__\012frozenset\012q\020(]q\021tq\022Rq"
	"\023h\020(]q\024K\010atq\025Rq\026e.";
static const char SHARED1[] =
	"]q\000(]q\001K\001ah\001(h\001tq\002e.";
static const char OBJS1[] =
	"]q\000(ccopy_reg\012_reconstructor\012q\001(cmod\012Obj\012q\002c__built"
	"in__\012object\012q\003Ntq\004Rq\005}q\006(X\001\000\000\000aq\007K\001X"
	"\001\000\000\000bq\010]q\011K\002aubccollections\012OrderedDict\012q\012"
	")Rq\013(h\007K\001h\010K\002uh\001(cmod\012L\012q\014c__builtin__\012lis"
	"t\012q\015]q\016(K\001K\002etq\017Rq\020}q\021X\001\000\000\000zq\022K"
	"\003sbh\001(cmod\012D\012q\023c__builtin__\012dict\012q\024}q\025X\001"
	"\000\000\000qq\026K\001stq\027Rq\030e.";
static const char INTS2[] =
	"\200\002]q\000(K\000K\001K\377M\000\001J\000\000\001\000J\377\377\377"
	"\377J\377\377\377\177J\000\000\000\200\212\005\000\000\000\200\000\212"
	"\010\377\377\377\377\377\377\377\177\212\010\000\000\000\000\000\000\000"
	"\200\212\011\000\000\000\000\000\000\000\200\000\212\015\000\000\000\000"
	"\000\000\000\000\000\000\000\000\020\210\211NG\077\370\000\000\000\000"
	"\000\000e.";
static const char STRS2[] =
	"\200\002]q\000(X\000\000\000\000q\001X\005\000\000\000h\303\251\012\134q"
	"\002c_codecs\012encode\012q\003X\004\000\000\000\000\303\277aq\004X\006"
	"\000\000\000latin1q\005\206q\006Rq\007c__builtin__\012bytearray\012q\010"
	"h\003X\002\000\000\000xyq\011h\005\206q\012Rq\013\205q\014Rq\015e.";
static const char CONT2[] =
	"\200\002]q\000()K\001\205q\001K\001K\002\206q\002K\001K\002K\003\207q"
	"\003(K\001K\002K\003K\004tq\004}q\005}q\006(X\001\000\000\000aq\007K\001"
	"X\001\000\000\000bq\010K\002uc__builtin__\012set\012q\011]q\012\205q\013"
	"Rq\014h\011]q\015K\007a\205q\016Rq\017c__builtin__\012frozenset\012q\020"
	"]q\021\205q\022Rq\023h\020]q\024K\010a\205q\025Rq\026e.";
static const char SHARED2[] =
	"\200\002]q\000(]q\001K\001ah\001h\001\205q\002e.";
static const char OBJS2[] =
	"\200\002]q\000(cmod\012Obj\012q\001)\201q\002}q\003(X\001\000\000\000aq"
	"\004K\001X\001\000\000\000bq\005]q\006K\002aubccollections\012OrderedDic"
	"t\012q\007)Rq\010(h\004K\001h\005K\002ucmod\012L\012q\011)\201q\012(K"
	"\001K\002e}q\013X\001\000\000\000zq\014K\003sbcmod\012D\012q\015)\201q"
	"\016X\001\000\000\000qq\017K\001se.";
static const char INTS3[] =
	"\200\003]q\000(K\000K\001K\377M\000\001J\000\000\001\000J\377\377\377"
	"\377J\377\377\377\177J\000\000\000\200\212\005\000\000\000\200\000\212"
	"\010\377\377\377\377\377\377\377\177\212\010\000\000\000\000\000\000\000"
	"\200\212\011\000\000\000\000\000\000\000\200\000\212\015\000\000\000\000"
	"\000\000\000\000\000\000\000\000\020\210\211NG\077\370\000\000\000\000"
	"\000\000e.";
static const char STRS3[] =
	"\200\003]q\000(X\000\000\000\000q\001X\005\000\000\000h\303\251\012\134q"
	"\002C\003\000\377aq\003cbuiltins\012bytearray\012q\004C\002xyq\005\205q"
	"\006Rq\007e.";
static const char CONT3[] =
	"\200\003]q\000()K\001\205q\001K\001K\002\206q\002K\001K\002K\003\207q"
	"\003(K\001K\002K\003K\004tq\004}q\005}q\006(X\001\000\000\000aq\007K\001"
	"X\001\000\000\000bq\010K\002ucbuiltins\012set\012q\011]q\012\205q\013Rq"
	"\014h\011]q\015K\007a\205q\016Rq\017cbuiltins\012frozenset\012q\020]q"
	"\021\205q\022Rq\023h\020]q\024K\010a\205q\025Rq\026e.";
static const char SHARED3[] =
	"\200\003]q\000(]q\001K\001ah\001h\001\205q\002e.";
static const char OBJS3[] =
	"\200\003]q\000(cmod\012Obj\012q\001)\201q\002}q\003(X\001\000\000\000aq"
	"\004K\001X\001\000\000\000bq\005]q\006K\002aubccollections\012OrderedDic"
	"t\012q\007)Rq\010(h\004K\001h\005K\002ucmod\012L\012q\011)\201q\012(K"
	"\001K\002e}q\013X\001\000\000\000zq\014K\003sbcmod\012D\012q\015)\201q"
	"\016X\001\000\000\000qq\017K\001se.";
static const char INTS4[] =
	"\200\004\225c\000\000\000\000\000\000\000]\224(K\000K\001K\377M\000\001J"
	"\000\000\001\000J\377\377\377\377J\377\377\377\177J\000\000\000\200\212"
	"\005\000\000\000\200\000\212\010\377\377\377\377\377\377\377\177\212\010"
	"\000\000\000\000\000\000\000\200\212\011\000\000\000\000\000\000\000\200"
	"\000\212\015\000\000\000\000\000\000\000\000\000\000\000\000\020\210\211"
	"NG\077\370\000\000\000\000\000\000e.";
static const char STRS4[] =
	"\200\004\2258\000\000\000\000\000\000\000]\224(\214\000\224\214\005h\303"
	"\251\012\134\224C\003\000\377a\224\214\010builtins\224\214\011bytearray"
	"\224\223\224C\002xy\224\205\224R\224e.";
static const char CONT4[] =
	"\200\004\225E\000\000\000\000\000\000\000]\224()K\001\205\224K\001K\002"
	"\206\224K\001K\002K\003\207\224(K\001K\002K\003K\004t\224}\224}\224(\214"
	"\001a\224K\001\214\001b\224K\002u\217\224\217\224(K\007\220(\221\224(K"
	"\010\221\224e.";
static const char SHARED4[] =
	"\200\004\225\020\000\000\000\000\000\000\000]\224(]\224K\001ah\001h\001"
	"\205\224e.";
static const char OBJS4[] =
	"\200\004\225\202\000\000\000\000\000\000\000]\224(\214\003mod\224\214"
	"\003Obj\224\223\224)\201\224}\224(\214\001a\224K\001\214\001b\224]\224K"
	"\002aub\214\013collections\224\214\013OrderedDict\224\223\224)R\224(h"
	"\006K\001h\007K\002uh\001\214\001L\224\223\224)\201\224(K\001K\002e}\224"
	"\214\001z\224K\003sbh\001\214\001D\224\223\224)\201\224\214\001q\224K"
	"\001se.";
static const char INTS5[] =
	"\200\005\225c\000\000\000\000\000\000\000]\224(K\000K\001K\377M\000\001J"
	"\000\000\001\000J\377\377\377\377J\377\377\377\177J\000\000\000\200\212"
	"\005\000\000\000\200\000\212\010\377\377\377\377\377\377\377\177\212\010"
	"\000\000\000\000\000\000\000\200\212\011\000\000\000\000\000\000\000\200"
	"\000\212\015\000\000\000\000\000\000\000\000\000\000\000\000\020\210\211"
	"NG\077\370\000\000\000\000\000\000e.";
static const char STRS5[] =
	"\200\005\225\042\000\000\000\000\000\000\000]\224(\214\000\224\214\005h"
	"\303\251\012\134\224C\003\000\377a\224\226\002\000\000\000\000\000\000"
	"\000xy\224e.";
static const char CONT5[] =
	"\200\005\225E\000\000\000\000\000\000\000]\224()K\001\205\224K\001K\002"
	"\206\224K\001K\002K\003\207\224(K\001K\002K\003K\004t\224}\224}\224(\214"
	"\001a\224K\001\214\001b\224K\002u\217\224\217\224(K\007\220(\221\224(K"
	"\010\221\224e.";
static const char SHARED5[] =
	"\200\005\225\020\000\000\000\000\000\000\000]\224(]\224K\001ah\001h\001"
	"\205\224e.";
static const char OBJS5[] =
	"\200\005\225\202\000\000\000\000\000\000\000]\224(\214\003mod\224\214"
	"\003Obj\224\223\224)\201\224}\224(\214\001a\224K\001\214\001b\224]\224K"
	"\002aub\214\013collections\224\214\013OrderedDict\224\223\224)R\224(h"
	"\006K\001h\007K\002uh\001\214\001L\224\223\224)\201\224(K\001K\002e}\224"
	"\214\001z\224K\003sbh\001\214\001D\224\223\224)\201\224\214\001q\224K"
	"\001se.";
static const char KW4[] =
	"\200\004\225\035\000\000\000\000\000\000\000\214\003mod\224\214\002Kw"
	"\224\223\224K\001\205\224}\224\214\001k\224K\002s\222\224.";
static const char SG4[] =
	"\200\004\225\077\000\000\000\000\000\000\000]\224(\214\013collections"
	"\224\214\013OrderedDict\224\223\224)R\224h\001\214\007Counter\224\223"
	"\224}\224\205\224R\224h\003)R\224e.";
static const char BIG2[] =
	"\200\002]q\000(\213\007\001\000\000\000\000\000\000\000\000\000\000\000"
	"\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000"
	"\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000"
	"\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000"
	"\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000"
	"\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000"
	"\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000"
	"\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000"
	"\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000"
	"\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000"
	"\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000"
	"\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000"
	"\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000"
	"\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000"
	"\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000"
	"\000\020\213\007\001\000\000\000\000\000\000\000\000\000\000\000\000\000"
	"\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000"
	"\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000"
	"\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000"
	"\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000"
	"\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000"
	"\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000"
	"\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000"
	"\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000"
	"\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000"
	"\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000"
	"\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000"
	"\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000"
	"\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000"
	"\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\360"
	"\212\011\377\377\377\377\377\377\377\177\377\212\011\000\000\000\000\000"
	"\000\000\000\001e.";
static const char MEMO300[] =
	"\200\002]q\000(]q\001(X\002\000\000\000s0q\002X\002\000\000\000s1q\003X"
	"\002\000\000\000s2q\004X\002\000\000\000s3q\005X\002\000\000\000s4q\006X"
	"\002\000\000\000s5q\007X\002\000\000\000s6q\010X\002\000\000\000s7q\011X"
	"\002\000\000\000s8q\012X\002\000\000\000s9q\013X\003\000\000\000s10q\014"
	"X\003\000\000\000s11q\015X\003\000\000\000s12q\016X\003\000\000\000s13q"
	"\017X\003\000\000\000s14q\020X\003\000\000\000s15q\021X\003\000\000\000s"
	"16q\022X\003\000\000\000s17q\023X\003\000\000\000s18q\024X\003\000\000"
	"\000s19q\025X\003\000\000\000s20q\026X\003\000\000\000s21q\027X\003\000"
	"\000\000s22q\030X\003\000\000\000s23q\031X\003\000\000\000s24q\032X\003"
	"\000\000\000s25q\033X\003\000\000\000s26q\034X\003\000\000\000s27q\035X"
	"\003\000\000\000s28q\036X\003\000\000\000s29q\037X\003\000\000\000s30q X"
	"\003\000\000\000s31q!X\003\000\000\000s32q\042X\003\000\000\000s33q#X"
	"\003\000\000\000s34q$X\003\000\000\000s35q%X\003\000\000\000s36q&X\003"
	"\000\000\000s37q'X\003\000\000\000s38q(X\003\000\000\000s39q)X\003\000"
	"\000\000s40q*X\003\000\000\000s41q+X\003\000\000\000s42q,X\003\000\000"
	"\000s43q-X\003\000\000\000s44q.X\003\000\000\000s45q/X\003\000\000\000s4"
	"6q0X\003\000\000\000s47q1X\003\000\000\000s48q2X\003\000\000\000s49q3X"
	"\003\000\000\000s50q4X\003\000\000\000s51q5X\003\000\000\000s52q6X\003"
	"\000\000\000s53q7X\003\000\000\000s54q8X\003\000\000\000s55q9X\003\000"
	"\000\000s56q:X\003\000\000\000s57q;X\003\000\000\000s58q<X\003\000\000"
	"\000s59q=X\003\000\000\000s60q>X\003\000\000\000s61q\077X\003\000\000"
	"\000s62q@X\003\000\000\000s63qAX\003\000\000\000s64qBX\003\000\000\000s6"
	"5qCX\003\000\000\000s66qDX\003\000\000\000s67qEX\003\000\000\000s68qFX"
	"\003\000\000\000s69qGX\003\000\000\000s70qHX\003\000\000\000s71qIX\003"
	"\000\000\000s72qJX\003\000\000\000s73qKX\003\000\000\000s74qLX\003\000"
	"\000\000s75qMX\003\000\000\000s76qNX\003\000\000\000s77qOX\003\000\000"
	"\000s78qPX\003\000\000\000s79qQX\003\000\000\000s80qRX\003\000\000\000s8"
	"1qSX\003\000\000\000s82qTX\003\000\000\000s83qUX\003\000\000\000s84qVX"
	"\003\000\000\000s85qWX\003\000\000\000s86qXX\003\000\000\000s87qYX\003"
	"\000\000\000s88qZX\003\000\000\000s89q[X\003\000\000\000s90q\134X\003"
	"\000\000\000s91q]X\003\000\000\000s92q^X\003\000\000\000s93q_X\003\000"
	"\000\000s94q`X\003\000\000\000s95qaX\003\000\000\000s96qbX\003\000\000"
	"\000s97qcX\003\000\000\000s98qdX\003\000\000\000s99qeX\004\000\000\000s1"
	"00qfX\004\000\000\000s101qgX\004\000\000\000s102qhX\004\000\000\000s103q"
	"iX\004\000\000\000s104qjX\004\000\000\000s105qkX\004\000\000\000s106qlX"
	"\004\000\000\000s107qmX\004\000\000\000s108qnX\004\000\000\000s109qoX"
	"\004\000\000\000s110qpX\004\000\000\000s111qqX\004\000\000\000s112qrX"
	"\004\000\000\000s113qsX\004\000\000\000s114qtX\004\000\000\000s115quX"
	"\004\000\000\000s116qvX\004\000\000\000s117qwX\004\000\000\000s118qxX"
	"\004\000\000\000s119qyX\004\000\000\000s120qzX\004\000\000\000s121q{X"
	"\004\000\000\000s122q|X\004\000\000\000s123q}X\004\000\000\000s124q~X"
	"\004\000\000\000s125q\177X\004\000\000\000s126q\200X\004\000\000\000s127"
	"q\201X\004\000\000\000s128q\202X\004\000\000\000s129q\203X\004\000\000"
	"\000s130q\204X\004\000\000\000s131q\205X\004\000\000\000s132q\206X\004"
	"\000\000\000s133q\207X\004\000\000\000s134q\210X\004\000\000\000s135q"
	"\211X\004\000\000\000s136q\212X\004\000\000\000s137q\213X\004\000\000"
	"\000s138q\214X\004\000\000\000s139q\215X\004\000\000\000s140q\216X\004"
	"\000\000\000s141q\217X\004\000\000\000s142q\220X\004\000\000\000s143q"
	"\221X\004\000\000\000s144q\222X\004\000\000\000s145q\223X\004\000\000"
	"\000s146q\224X\004\000\000\000s147q\225X\004\000\000\000s148q\226X\004"
	"\000\000\000s149q\227X\004\000\000\000s150q\230X\004\000\000\000s151q"
	"\231X\004\000\000\000s152q\232X\004\000\000\000s153q\233X\004\000\000"
	"\000s154q\234X\004\000\000\000s155q\235X\004\000\000\000s156q\236X\004"
	"\000\000\000s157q\237X\004\000\000\000s158q\240X\004\000\000\000s159q"
	"\241X\004\000\000\000s160q\242X\004\000\000\000s161q\243X\004\000\000"
	"\000s162q\244X\004\000\000\000s163q\245X\004\000\000\000s164q\246X\004"
	"\000\000\000s165q\247X\004\000\000\000s166q\250X\004\000\000\000s167q"
	"\251X\004\000\000\000s168q\252X\004\000\000\000s169q\253X\004\000\000"
	"\000s170q\254X\004\000\000\000s171q\255X\004\000\000\000s172q\256X\004"
	"\000\000\000s173q\257X\004\000\000\000s174q\260X\004\000\000\000s175q"
	"\261X\004\000\000\000s176q\262X\004\000\000\000s177q\263X\004\000\000"
	"\000s178q\264X\004\000\000\000s179q\265X\004\000\000\000s180q\266X\004"
	"\000\000\000s181q\267X\004\000\000\000s182q\270X\004\000\000\000s183q"
	"\271X\004\000\000\000s184q\272X\004\000\000\000s185q\273X\004\000\000"
	"\000s186q\274X\004\000\000\000s187q\275X\004\000\000\000s188q\276X\004"
	"\000\000\000s189q\277X\004\000\000\000s190q\300X\004\000\000\000s191q"
	"\301X\004\000\000\000s192q\302X\004\000\000\000s193q\303X\004\000\000"
	"\000s194q\304X\004\000\000\000s195q\305X\004\000\000\000s196q\306X\004"
	"\000\000\000s197q\307X\004\000\000\000s198q\310X\004\000\000\000s199q"
	"\311X\004\000\000\000s200q\312X\004\000\000\000s201q\313X\004\000\000"
	"\000s202q\314X\004\000\000\000s203q\315X\004\000\000\000s204q\316X\004"
	"\000\000\000s205q\317X\004\000\000\000s206q\320X\004\000\000\000s207q"
	"\321X\004\000\000\000s208q\322X\004\000\000\000s209q\323X\004\000\000"
	"\000s210q\324X\004\000\000\000s211q\325X\004\000\000\000s212q\326X\004"
	"\000\000\000s213q\327X\004\000\000\000s214q\330X\004\000\000\000s215q"
	"\331X\004\000\000\000s216q\332X\004\000\000\000s217q\333X\004\000\000"
	"\000s218q\334X\004\000\000\000s219q\335X\004\000\000\000s220q\336X\004"
	"\000\000\000s221q\337X\004\000\000\000s222q\340X\004\000\000\000s223q"
	"\341X\004\000\000\000s224q\342X\004\000\000\000s225q\343X\004\000\000"
	"\000s226q\344X\004\000\000\000s227q\345X\004\000\000\000s228q\346X\004"
	"\000\000\000s229q\347X\004\000\000\000s230q\350X\004\000\000\000s231q"
	"\351X\004\000\000\000s232q\352X\004\000\000\000s233q\353X\004\000\000"
	"\000s234q\354X\004\000\000\000s235q\355X\004\000\000\000s236q\356X\004"
	"\000\000\000s237q\357X\004\000\000\000s238q\360X\004\000\000\000s239q"
	"\361X\004\000\000\000s240q\362X\004\000\000\000s241q\363X\004\000\000"
	"\000s242q\364X\004\000\000\000s243q\365X\004\000\000\000s244q\366X\004"
	"\000\000\000s245q\367X\004\000\000\000s246q\370X\004\000\000\000s247q"
	"\371X\004\000\000\000s248q\372X\004\000\000\000s249q\373X\004\000\000"
	"\000s250q\374X\004\000\000\000s251q\375X\004\000\000\000s252q\376X\004"
	"\000\000\000s253q\377X\004\000\000\000s254r\000\001\000\000X\004\000\000"
	"\000s255r\001\001\000\000X\004\000\000\000s256r\002\001\000\000X\004\000"
	"\000\000s257r\003\001\000\000X\004\000\000\000s258r\004\001\000\000X\004"
	"\000\000\000s259r\005\001\000\000X\004\000\000\000s260r\006\001\000\000X"
	"\004\000\000\000s261r\007\001\000\000X\004\000\000\000s262r\010\001\000"
	"\000X\004\000\000\000s263r\011\001\000\000X\004\000\000\000s264r\012\001"
	"\000\000X\004\000\000\000s265r\013\001\000\000X\004\000\000\000s266r\014"
	"\001\000\000X\004\000\000\000s267r\015\001\000\000X\004\000\000\000s268r"
	"\016\001\000\000X\004\000\000\000s269r\017\001\000\000X\004\000\000\000s"
	"270r\020\001\000\000X\004\000\000\000s271r\021\001\000\000X\004\000\000"
	"\000s272r\022\001\000\000X\004\000\000\000s273r\023\001\000\000X\004\000"
	"\000\000s274r\024\001\000\000X\004\000\000\000s275r\025\001\000\000X\004"
	"\000\000\000s276r\026\001\000\000X\004\000\000\000s277r\027\001\000\000X"
	"\004\000\000\000s278r\030\001\000\000X\004\000\000\000s279r\031\001\000"
	"\000X\004\000\000\000s280r\032\001\000\000X\004\000\000\000s281r\033\001"
	"\000\000X\004\000\000\000s282r\034\001\000\000X\004\000\000\000s283r\035"
	"\001\000\000X\004\000\000\000s284r\036\001\000\000X\004\000\000\000s285r"
	"\037\001\000\000X\004\000\000\000s286r \001\000\000X\004\000\000\000s287"
	"r!\001\000\000X\004\000\000\000s288r\042\001\000\000X\004\000\000\000s28"
	"9r#\001\000\000X\004\000\000\000s290r$\001\000\000X\004\000\000\000s291r"
	"%\001\000\000X\004\000\000\000s292r&\001\000\000X\004\000\000\000s293r'"
	"\001\000\000X\004\000\000\000s294r(\001\000\000X\004\000\000\000s295r)"
	"\001\000\000X\004\000\000\000s296r*\001\000\000X\004\000\000\000s297r+"
	"\001\000\000X\004\000\000\000s298r,\001\000\000X\004\000\000\000s299r-"
	"\001\000\000ej-\001\000\000h\007e.";
static const char LONG4[] =
	"\200\004\225i\002\000\000\000\000\000\000]\224(X,\001\000\000xxxxxxxxxxx"
	"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
	"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
	"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
	"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
	"x\224B,\001\000\000yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy"
	"yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy"
	"yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy"
	"yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy"
	"yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy\224e.";
static const char OOB5[] =
	"\200\005\225\010\000\000\000\000\000\000\000]\224(\227\230\227e.";
static const char FL0[] =
	"(lp0\012F1.5\012aF-0.25\012aF1e+300\012aFinf\012a.";

#define FIX(a) { a, sizeof(a) - 1 }

typedef struct fixture {
	const char *b;
	size_t n;
} fixture;

static const fixture INTS[6] = { FIX(INTS0), FIX(INTS1), FIX(INTS2), FIX(INTS3), FIX(INTS4), FIX(INTS5) };
static const fixture STRS[6] = { FIX(STRS0), FIX(STRS1), FIX(STRS2), FIX(STRS3), FIX(STRS4), FIX(STRS5) };
static const fixture CONT[6] = { FIX(CONT0), FIX(CONT1), FIX(CONT2), FIX(CONT3), FIX(CONT4), FIX(CONT5) };
static const fixture SHARED[6] = { FIX(SHARED0), FIX(SHARED1), FIX(SHARED2), FIX(SHARED3), FIX(SHARED4), FIX(SHARED5) };
static const fixture OBJS[6] = { FIX(OBJS0), FIX(OBJS1), FIX(OBJS2), FIX(OBJS3), FIX(OBJS4), FIX(OBJS5) };

/* ------------------------------------------------------------------ */
/* Per-test state: one graph, the last run's info and error.           */

static pf_graph g;
static pf_pickle_info info;
static pf_error err;

static void setup(void)
{
	pf_error_clear(&err);
	ck_assert_int_eq(pf_graph_init(&g, NULL, &err), 0);
}

static void teardown(void)
{
	pf_graph_free(&g);
}

/* Start over with different limits. */
static void reset_with(const pf_limits *l)
{
	pf_graph_free(&g);
	pf_error_clear(&err);
	ck_assert_int_eq(pf_graph_init(&g, l, &err), 0);
}

static int run_at(const void *buf, size_t len, uint64_t start, uint32_t seg, uint64_t origin)
{
	pf_error_clear(&err);
	memset(&info, 0xa5, sizeof(info));
	return pf_pickle_run(&g, buf, len, start, seg, origin, &info, &err);
}

static int run(const void *buf, size_t len)
{
	return run_at(buf, len, 0, 0, 0);
}

/* Run a string literal (its length without the final NUL). */
#define RUN(lit) run(lit, sizeof(lit) - 1)

/* The run must succeed and cover the whole buffer. */
#define RUN_OK(buf, len)                                                          \
	do {                                                                      \
		int rc_ = run(buf, len);                                          \
		ck_assert_msg(rc_ == 0, "run failed: %s at %llu: %s",             \
			      pf_code_name(err.code),                             \
			      (unsigned long long)err.offset, err.msg);           \
		ck_assert_uint_eq(info.end, len);                                 \
	} while (0)

/* The run must fail with code `want` at absolute offset `off`. */
#define ASSERT_FAILS(rc, want, off)                                               \
	do {                                                                      \
		ck_assert_int_eq((rc), -1);                                       \
		ck_assert_msg(err.code == (want), "code %s, want %s (%s)",        \
			      pf_code_name(err.code), pf_code_name(want), err.msg); \
		ck_assert_uint_eq(err.offset, (off));                             \
		ck_assert(err.msg[0] != '\0');                                    \
	} while (0)

static pf_node *N(pf_nid id)
{
	pf_node *n = pf_node_at(&g, id);
	ck_assert_ptr_nonnull(n);
	return n;
}

/* ------------------------------------------------------------------ */
/* render(): the graph as compact text.                                */
/*   None True 12 12n (bigint) 1.5 'str' s'py2' b'bytes' ba'bytearray'  */
/*   [list] (tuple,) {k: v} set{} fset{} G(mod:name) P(pid) buf(ro)     */
/*   R(f, args) NEW(c, args) NEWEX(c, args, kw) OBJ(c, args)            */
/*   INST(c, args), then .items([..]) .dictitems({..}) .state(x)        */

typedef struct sbuf {
	char s[1 << 16];
	size_t n;
} sbuf;

static void put(sbuf *b, const char *fmt, ...)
{
	va_list ap;
	int k;

	va_start(ap, fmt);
	k = vsnprintf(b->s + b->n, sizeof(b->s) - b->n, fmt, ap);
	va_end(ap);
	ck_assert(k >= 0 && (size_t)k < sizeof(b->s) - b->n);
	b->n += (size_t)k;
}

static void put_quoted(sbuf *b, const uint8_t *p, uint64_t n)
{
	put(b, "'");
	for (uint64_t i = 0; i < n; i++) {
		if (p[i] >= 0x20 && p[i] < 0x7f && p[i] != '\'' && p[i] != '\\')
			put(b, "%c", p[i]);
		else
			put(b, "\\x%02x", p[i]);
	}
	put(b, "'");
}

/* Little-endian two's complement to decimal (schoolbook division). */
static void put_le_decimal(sbuf *b, const uint8_t *p, uint64_t n)
{
	uint8_t *v = malloc(n ? n : 1);
	char *digits = malloc(n * 3 + 2);
	size_t nd = 0;
	bool neg = n && (p[n - 1] & 0x80);

	memcpy(v, p, n);
	if (neg) { /* negate: invert and add one */
		unsigned carry = 1;
		for (uint64_t i = 0; i < n; i++) {
			unsigned x = (uint8_t)~v[i] + carry;
			v[i] = (uint8_t)x;
			carry = x >> 8;
		}
	}
	for (;;) {
		unsigned rem = 0;
		bool zero = true;
		for (uint64_t i = n; i-- > 0;) {
			unsigned cur = rem * 256 + v[i];
			v[i] = (uint8_t)(cur / 10);
			rem = cur % 10;
			zero = zero && v[i] == 0;
		}
		digits[nd++] = (char)('0' + rem);
		if (zero)
			break;
	}
	if (neg)
		put(b, "-");
	while (nd-- > 0)
		put(b, "%c", digits[nd]);
	free(v);
	free(digits);
}

static void render_into(sbuf *b, pf_nid id, int depth);

static void render_items(sbuf *b, const pf_node *n, const char *sep2, int depth)
{
	for (uint32_t i = 0; i < n->u.seq.n; i++) {
		if (i)
			put(b, (sep2 && i % 2) ? sep2 : ", ");
		render_into(b, n->u.seq.v[i], depth + 1);
	}
}

static void render_call(sbuf *b, const pf_node *n, int depth)
{
	static const char *const how[] = { "R", "NEW", "NEWEX", "OBJ", "INST" };

	put(b, "%s(", how[n->how]);
	render_into(b, n->u.call.func, depth + 1);
	put(b, ", ");
	render_into(b, n->u.call.args, depth + 1);
	if (n->u.call.kwargs) {
		put(b, ", ");
		render_into(b, n->u.call.kwargs, depth + 1);
	}
	put(b, ")");
	if (n->u.call.listitems) {
		put(b, ".items(");
		render_into(b, n->u.call.listitems, depth + 1);
		put(b, ")");
	}
	if (n->u.call.dictitems) {
		put(b, ".dictitems(");
		render_into(b, n->u.call.dictitems, depth + 1);
		put(b, ")");
	}
	if (n->u.call.state) {
		put(b, ".state(");
		render_into(b, n->u.call.state, depth + 1);
		put(b, ")");
	}
}

static void render_into(sbuf *b, pf_nid id, int depth)
{
	const pf_node *n = pf_node_at(&g, id);
	const pf_global *gl;

	ck_assert_msg(depth < 100, "render too deep");
	if (!n) {
		put(b, "<0>");
		return;
	}
	switch (n->kind) {
	case PF_K_NONE: put(b, "None"); break;
	case PF_K_BOOL: put(b, n->u.b ? "True" : "False"); break;
	case PF_K_INT: put(b, "%lld", (long long)n->u.i); break;
	case PF_K_BIGINT:
		if (n->flags & PF_F_DECIMAL)
			put(b, "%.*s", (int)n->u.s.len, (const char *)n->u.s.p);
		else
			put_le_decimal(b, n->u.s.p, n->u.s.len);
		put(b, "n");
		break;
	case PF_K_FLOAT: put(b, "%.17g", n->u.f); break;
	case PF_K_STR:
		if (n->flags & PF_F_PY2STR)
			put(b, "s");
		put_quoted(b, n->u.s.p, n->u.s.len);
		break;
	case PF_K_BYTES:
		put(b, (n->flags & PF_F_BYTEARRAY) ? "ba" : "b");
		put_quoted(b, n->u.s.p, n->u.s.len);
		break;
	case PF_K_LIST: put(b, "["); render_items(b, n, NULL, depth); put(b, "]"); break;
	case PF_K_TUPLE:
		put(b, "(");
		render_items(b, n, NULL, depth);
		put(b, n->u.seq.n == 1 ? ",)" : ")");
		break;
	case PF_K_DICT: put(b, "{"); render_items(b, n, ": ", depth); put(b, "}"); break;
	case PF_K_SET: put(b, "set{"); render_items(b, n, NULL, depth); put(b, "}"); break;
	case PF_K_FROZENSET: put(b, "fset{"); render_items(b, n, NULL, depth); put(b, "}"); break;
	case PF_K_GLOBAL:
		gl = pf_node_global(&g, id);
		ck_assert_ptr_nonnull(gl);
		put(b, "G(%s:%s)", gl->module, gl->name);
		break;
	case PF_K_CALL: render_call(b, n, depth); break;
	case PF_K_PERSID:
		put(b, "P(");
		render_into(b, n->u.persid.pid, depth + 1);
		put(b, ")");
		break;
	case PF_K_BUFFER: put(b, (n->flags & PF_F_READONLY) ? "buf(ro)" : "buf"); break;
	default: ck_abort_msg("node %u has kind %d", id, n->kind);
	}
}

static const char *render(pf_nid id)
{
	static sbuf b;
	b.n = 0;
	b.s[0] = '\0';
	render_into(&b, id, 0);
	return b.s;
}

#define ASSERT_RENDER(id, want) ck_assert_str_eq(render(id), want)

/* Load a complete pickle and return its root. */
static pf_nid load(const void *buf, size_t len)
{
	RUN_OK(buf, len);
	return info.root;
}

#define LOAD(lit) load(lit, sizeof(lit) - 1)

/* Run a string literal that must fail with code at offset. */
#define FAILS(lit, want, off) ASSERT_FAILS(RUN(lit), want, off)

/* ------------------------------------------------------------------ */
/* Every protocol, from CPython's own pickler.                         */

/* Protocols 0 and 1 have no PROTO opcode: the machine reports 1 when a
 * binary opcode appears, as pickletools' "highest protocol among opcodes". */
static void check_protocol(int got, int p)
{
	if (p >= 2)
		ck_assert_int_eq(got, p);
	else if (p == 0)
		ck_assert_int_eq(got, 0);
	else
		ck_assert(got == 0 || got == 1);
}

START_TEST(test_ints_every_protocol)
{
	pf_nid root = load(INTS[_i].b, INTS[_i].n);

	ASSERT_RENDER(root, "[0, 1, 255, 256, 65536, -1, 2147483647, -2147483648, 2147483648, "
			    "9223372036854775807, -9223372036854775808, 9223372036854775808n, "
			    "1267650600228229401496703205376n, True, False, None, 1.5]");
	check_protocol(info.protocol, _i);
	ck_assert_uint_eq(info.start, 0);
	ck_assert_uint_eq(pf_seq_len(&g, root), 17);
	ck_assert_int_eq(pf_kind_of(&g, pf_seq_at(&g, root, 10)), PF_K_INT);
	ck_assert_int_eq(N(pf_seq_at(&g, root, 10))->u.i, INT64_MIN);
	ck_assert_int_eq(pf_kind_of(&g, pf_seq_at(&g, root, 11)), PF_K_BIGINT);
	/* protocols 0 and 1 write big ints as LONG text, 2+ as LONG1 */
	ck_assert_int_eq(!!(N(pf_seq_at(&g, root, 11))->flags & PF_F_DECIMAL), _i < 2);
}
END_TEST

START_TEST(test_strings_and_bytes_every_protocol)
{
	static const char *const want[6] = {
		"['', 'h\\xc3\\xa9\\x0a\\x5c', R(G(_codecs:encode), ('\\x00\\xc3\\xbfa', 'latin1')), "
		"R(G(__builtin__:bytearray), (R(G(_codecs:encode), ('xy', 'latin1')),))]",
		"['', 'h\\xc3\\xa9\\x0a\\x5c', R(G(_codecs:encode), ('\\x00\\xc3\\xbfa', 'latin1')), "
		"R(G(__builtin__:bytearray), (R(G(_codecs:encode), ('xy', 'latin1')),))]",
		"['', 'h\\xc3\\xa9\\x0a\\x5c', R(G(_codecs:encode), ('\\x00\\xc3\\xbfa', 'latin1')), "
		"R(G(__builtin__:bytearray), (R(G(_codecs:encode), ('xy', 'latin1')),))]",
		"['', 'h\\xc3\\xa9\\x0a\\x5c', b'\\x00\\xffa', R(G(builtins:bytearray), (b'xy',))]",
		"['', 'h\\xc3\\xa9\\x0a\\x5c', b'\\x00\\xffa', R(G(builtins:bytearray), (b'xy',))]",
		"['', 'h\\xc3\\xa9\\x0a\\x5c', b'\\x00\\xffa', ba'xy']",
	};
	pf_nid root = load(STRS[_i].b, STRS[_i].n);
	pf_node *s = N(pf_seq_at(&g, root, 1));

	ASSERT_RENDER(root, want[_i]);
	check_protocol(info.protocol, _i);
	/* protocol 0 decodes raw-unicode-escape into the arena; others point into the input */
	ck_assert_int_eq(!!(s->flags & PF_F_DECODED), _i == 0);
	if (_i > 0) {
		ck_assert_ptr_eq(s->u.s.p, (const uint8_t *)STRS[_i].b + s->u.s.off);
	}
	ck_assert(pf_str_eq(&g, pf_seq_at(&g, root, 0), ""));
	ck_assert(pf_str_eq(&g, pf_seq_at(&g, root, 1), "h\xc3\xa9\n\\"));
}
END_TEST

START_TEST(test_containers_every_protocol)
{
	static const char *const head = "[(), (1,), (1, 2), (1, 2, 3), (1, 2, 3, 4), {}, {'a': 1, 'b': 2}, ";
	static const char *const tail[6] = {
		"R(G(__builtin__:set), ([],)), R(G(__builtin__:set), ([7],)), "
		"R(G(__builtin__:frozenset), ([],)), R(G(__builtin__:frozenset), ([8],))]",
		"R(G(__builtin__:set), ([],)), R(G(__builtin__:set), ([7],)), "
		"R(G(__builtin__:frozenset), ([],)), R(G(__builtin__:frozenset), ([8],))]",
		"R(G(__builtin__:set), ([],)), R(G(__builtin__:set), ([7],)), "
		"R(G(__builtin__:frozenset), ([],)), R(G(__builtin__:frozenset), ([8],))]",
		"R(G(builtins:set), ([],)), R(G(builtins:set), ([7],)), "
		"R(G(builtins:frozenset), ([],)), R(G(builtins:frozenset), ([8],))]",
		"set{}, set{7}, fset{}, fset{8}]",
		"set{}, set{7}, fset{}, fset{8}]",
	};
	char want[1024];
	pf_nid root = load(CONT[_i].b, CONT[_i].n);

	snprintf(want, sizeof(want), "%s%s", head, tail[_i]);
	ASSERT_RENDER(root, want);
	if (_i < 4) {
		/* the set/frozenset globals are memoized: one node, one global, two uses of it */
		pf_nid set1 = N(pf_seq_at(&g, root, 7))->u.call.func;
		pf_nid set2 = N(pf_seq_at(&g, root, 8))->u.call.func;
		ck_assert_uint_eq(set1, set2);
		ck_assert_uint_eq(g.n_globals, 2);
		ck_assert_uint_eq(g.globals[0].uses, 1);
		ck_assert_str_eq(g.globals[0].name, "set");
		ck_assert_str_eq(g.globals[1].name, "frozenset");
	} else {
		ck_assert_uint_eq(g.n_globals, 0);
	}
	ck_assert_uint_eq(pf_seq_len(&g, pf_seq_at(&g, root, 6)), 4);
	ck_assert_uint_eq(N(pf_dict_get(&g, pf_seq_at(&g, root, 6), "b"))->u.i, 2);
}
END_TEST

START_TEST(test_memo_sharing_every_protocol)
{
	pf_nid root = load(SHARED[_i].b, SHARED[_i].n);
	pf_nid x = pf_seq_at(&g, root, 0);

	ASSERT_RENDER(root, "[[1], [1], ([1],)]");
	ck_assert_uint_ne(x, 0);
	ck_assert_uint_eq(pf_seq_at(&g, root, 1), x);
	ck_assert_uint_eq(pf_seq_at(&g, pf_seq_at(&g, root, 2), 0), x);
	ck_assert_int_eq(pf_kind_of(&g, x), PF_K_LIST);
}
END_TEST

START_TEST(test_objects_every_protocol)
{
	static const char *const old =
		"[R(G(copy_reg:_reconstructor), (G(mod:Obj), G(__builtin__:object), None))"
		".state({'a': 1, 'b': [2]}), "
		"R(G(collections:OrderedDict), ()).dictitems({'a': 1, 'b': 2}), "
		"R(G(copy_reg:_reconstructor), (G(mod:L), G(__builtin__:list), [1, 2])).state({'z': 3}), "
		"R(G(copy_reg:_reconstructor), (G(mod:D), G(__builtin__:dict), {'q': 1}))]";
	static const char *const newer =
		"[NEW(G(mod:Obj), ()).state({'a': 1, 'b': [2]}), "
		"R(G(collections:OrderedDict), ()).dictitems({'a': 1, 'b': 2}), "
		"NEW(G(mod:L), ()).items([1, 2]).state({'z': 3}), "
		"NEW(G(mod:D), ()).dictitems({'q': 1})]";
	pf_nid root = load(OBJS[_i].b, OBJS[_i].n);
	pf_node *obj = N(pf_seq_at(&g, root, 0));

	ASSERT_RENDER(root, _i < 2 ? old : newer);
	ck_assert_int_eq(obj->kind, PF_K_CALL);
	ck_assert_uint_eq(obj->u.call.n_builds, 1);
	ck_assert_int_eq(obj->how, _i < 2 ? PF_HOW_REDUCE : PF_HOW_NEWOBJ);
	/* the keys 'a' and 'b' of the OrderedDict are memo references to Obj's */
	pf_nid state = obj->u.call.state;
	pf_nid items = N(pf_seq_at(&g, root, 1))->u.call.dictitems;
	ck_assert_uint_eq(pf_seq_at(&g, items, 0), pf_seq_at(&g, state, 0));
	ck_assert_uint_eq(pf_seq_at(&g, items, 2), pf_seq_at(&g, state, 2));
	ck_assert_uint_eq(N(pf_seq_at(&g, root, 3))->u.call.n_builds, 0);
}
END_TEST

/* ------------------------------------------------------------------ */
/* Protocol 4/5 specifics.                                             */

START_TEST(test_newobj_ex_and_frame)
{
	pf_nid root = load(KW4, sizeof(KW4) - 1);
	pf_node *call = N(root);
	pf_node *cls;

	ASSERT_RENDER(root, "NEWEX(G(mod:Kw), (1,), {'k': 2})");
	ck_assert_int_eq(call->how, PF_HOW_NEWOBJ_EX);
	ck_assert_uint_eq(call->off, 37); /* the NEWOBJ_EX opcode */
	ck_assert_int_eq(info.protocol, 4);
	ck_assert_uint_eq(info.n_opcodes, 20);
	cls = N(call->u.call.func);
	ck_assert_uint_eq(cls->off, 22); /* STACK_GLOBAL */
	ck_assert(pf_str_eq(&g, cls->u.g.module, "mod"));
	ck_assert(pf_str_eq(&g, cls->u.g.name, "Kw"));
	ck_assert_uint_eq(N(cls->u.g.module)->off, 11);
	ck_assert_uint_eq(N(cls->u.g.module)->u.s.off, 13);
	ck_assert(pf_is_global(&g, call->u.call.func, "mod", "Kw"));
	ck_assert(!pf_is_global(&g, call->u.call.func, "mod", "K"));
}
END_TEST

START_TEST(test_stack_global_with_memo_module)
{
	pf_nid root = load(SG4, sizeof(SG4) - 1);
	pf_nid od1 = N(pf_seq_at(&g, root, 0))->u.call.func;
	pf_nid counter = N(pf_seq_at(&g, root, 1))->u.call.func;
	pf_nid od2 = N(pf_seq_at(&g, root, 2))->u.call.func;

	ASSERT_RENDER(root, "[R(G(collections:OrderedDict), ()), R(G(collections:Counter), ({},)), "
			    "R(G(collections:OrderedDict), ())]");
	ck_assert_uint_eq(od1, od2); /* BINGET of the memoized class */
	/* Counter's module string is BINGET 1: the very str node OrderedDict used */
	ck_assert_uint_eq(N(counter)->u.g.module, N(od1)->u.g.module);
	ck_assert_uint_ne(N(counter)->u.g.name, N(od1)->u.g.name);
	ck_assert_uint_eq(N(N(od1)->u.g.module)->off, 14);
	ck_assert_uint_eq(g.n_globals, 2);
	ck_assert_str_eq(g.globals[0].module, "collections");
	ck_assert_str_eq(g.globals[0].name, "OrderedDict");
	ck_assert_uint_eq(g.globals[0].first_off, 42);
	ck_assert_uint_eq(g.globals[0].uses, 1);
	ck_assert_str_eq(g.globals[1].name, "Counter");
	ck_assert_uint_eq(g.globals[1].first_off, 59);
	ck_assert_uint_eq(N(counter)->u.g.index, 1);
	ck_assert_ptr_eq(pf_node_global(&g, counter), &g.globals[1]);
}
END_TEST

START_TEST(test_out_of_band_buffers)
{
	pf_nid root = load(OOB5, sizeof(OOB5) - 1);

	ASSERT_RENDER(root, "[buf(ro), buf]");
	ck_assert_uint_eq(N(pf_seq_at(&g, root, 0))->off, 14);
	ck_assert_int_eq(info.protocol, 5);
}
END_TEST

START_TEST(test_long_lengths_protocol4)
{
	pf_nid root = load(LONG4, sizeof(LONG4) - 1);
	pf_node *s = N(pf_seq_at(&g, root, 0));
	pf_node *b = N(pf_seq_at(&g, root, 1));

	ck_assert_int_eq(s->kind, PF_K_STR);
	ck_assert_uint_eq(s->u.s.len, 300);
	ck_assert_int_eq(s->u.s.p[299], 'x');
	ck_assert_int_eq(b->kind, PF_K_BYTES);
	ck_assert_uint_eq(b->u.s.len, 300);
	ck_assert_ptr_eq(b->u.s.p, (const uint8_t *)LONG4 + b->u.s.off);
	ck_assert_int_eq(LONG4[b->off], 'B'); /* BINBYTES: 300 > 255 */
	ck_assert_int_eq((uint8_t)LONG4[s->off], 0x58); /* BINUNICODE */
}
END_TEST

START_TEST(test_hand_written_wide_opcodes)
{
	/* BINUNICODE8, BINBYTES8, BYTEARRAY8, SHORT_BINBYTES, BINFLOAT, BININT2 */
	static const char p[] = "\x80\x05("
		"\x8d\x02\0\0\0\0\0\0\0hi"
		"\x8e\x01\0\0\0\0\0\0\0z"
		"\x96\0\0\0\0\0\0\0\0"
		"C\x02\xff\x00"
		"G\xc0\x04\x00\x00\x00\x00\x00\x00"
		"M\xff\xff"
		"J\xfe\xff\xff\xff"
		"t.";
	pf_nid root = LOAD(p);

	ASSERT_RENDER(root, "('hi', b'z', ba'', b'\\xff\\x00', -2.5, 65535, -2)");
	ck_assert_uint_eq(N(pf_seq_at(&g, root, 0))->u.s.off, 12);
	ck_assert_uint_eq(N(pf_seq_at(&g, root, 1))->off, 14);
	ck_assert_uint_eq(N(pf_seq_at(&g, root, 2))->flags, PF_F_BYTEARRAY);
}
END_TEST

/* ------------------------------------------------------------------ */
/* Globals.                                                            */

START_TEST(test_global_dedupe_in_first_use_order)
{
	static const char p[] = "(cmod\nA\ncmod\nB\ncmod\nA\nl.";
	static const char q[] = "xxcmod\nB\ncother\nC\n\x86.";
	pf_nid root = LOAD(p);
	pf_nid a1 = pf_seq_at(&g, root, 0), a2 = pf_seq_at(&g, root, 2);

	ASSERT_RENDER(root, "[G(mod:A), G(mod:B), G(mod:A)]");
	ck_assert_uint_ne(a1, a2); /* two opcodes, two nodes ... */
	ck_assert_uint_eq(N(a1)->u.g.index, N(a2)->u.g.index); /* ... one global */
	ck_assert_uint_eq(N(a2)->off, 15);
	ck_assert_uint_eq(N(a1)->u.g.module, 0);
	ck_assert_uint_eq(g.n_globals, 2);
	ck_assert_str_eq(g.globals[0].name, "A");
	ck_assert_uint_eq(g.globals[0].uses, 2);
	ck_assert_uint_eq(g.globals[0].first_off, 1);
	ck_assert_str_eq(g.globals[1].name, "B");
	ck_assert_uint_eq(g.globals[1].uses, 1);
	ck_assert_uint_eq(g.globals[1].first_off, 8);

	/* a second pickle in the same graph shares the table */
	ck_assert_int_eq(run_at(q, sizeof(q) - 1, 2, 7, 0), 0);
	ck_assert_uint_eq(info.start, 2);
	ASSERT_RENDER(info.root, "(G(mod:B), G(other:C))");
	ck_assert_uint_eq(g.n_globals, 3);
	ck_assert_uint_eq(g.globals[1].uses, 2);
	ck_assert_uint_eq(g.globals[2].first_seg, 7);
	ck_assert_uint_eq(g.globals[2].first_off, 9);
	ck_assert_uint_eq(N(info.root)->seg, 7);
	ck_assert_uint_eq(N(info.root)->off, 18);
}
END_TEST

START_TEST(test_many_globals_rehash)
{
	/* 5000 distinct globals then all again: the index must survive growth */
	size_t cap = 5000 * 2 * 24 + 16, n = 0;
	char *p = malloc(cap);

	for (int pass = 0; pass < 2; pass++)
		for (int i = 0; i < 5000; i++)
			n += (size_t)sprintf(p + n, "cm%d\nn%d\n0", i % 70, i);
	p[n++] = 'N';
	p[n++] = '.';
	RUN_OK(p, n);
	ck_assert_uint_eq(g.n_globals, 5000);
	for (uint32_t i = 0; i < 5000; i++) {
		char name[16];
		snprintf(name, sizeof(name), "n%u", i);
		ck_assert_str_eq(g.globals[i].name, name);
		ck_assert_uint_eq(g.globals[i].uses, 2);
	}
	free(p);
}
END_TEST

START_TEST(test_ext_opcodes)
{
	static const char p[] = "\x80\x02(\x82\x05\x83\x02\x01\x84\x00\x00\x00\x01\x82\x05l.";
	pf_nid root = LOAD(p);

	ASSERT_RENDER(root, "[G(copyreg._extension_registry:5), G(copyreg._extension_registry:258), "
			    "G(copyreg._extension_registry:16777216), G(copyreg._extension_registry:5)]");
	ck_assert_uint_eq(g.n_globals, 3);
	ck_assert_uint_eq(g.globals[0].uses, 2);
	ck_assert_uint_eq(N(pf_seq_at(&g, root, 2))->off, 8);
	ck_assert(pf_is_global(&g, pf_seq_at(&g, root, 1), "copyreg._extension_registry", "258"));
	FAILS("\x82\x00.", PF_E_FORMAT, 0);
	FAILS("\x83\x00\x00.", PF_E_FORMAT, 0);
	FAILS("N\x84\xff\xff\xff\xff.", PF_E_FORMAT, 1);
	FAILS("\x84\x01\x00", PF_E_TRUNCATED, 1);
}
END_TEST

START_TEST(test_inst_and_obj)
{
	pf_nid root = LOAD("(I1\nV\\u00e9\nimod\nCls\n.");
	pf_node *call = N(root);

	ASSERT_RENDER(root, "INST(G(mod:Cls), (1, '\\xc3\\xa9'))");
	ck_assert_int_eq(call->how, PF_HOW_INST);
	ck_assert_uint_eq(call->off, 12);
	ck_assert_uint_eq(N(call->u.call.func)->off, 12);
	ck_assert_uint_eq(g.globals[0].first_off, 12);

	root = LOAD("(cmod\nCls\nI1\nI2\no.");
	ASSERT_RENDER(root, "OBJ(G(mod:Cls), (1, 2))");
	ck_assert_int_eq(N(root)->how, PF_HOW_OBJ);
	ck_assert_uint_eq(g.globals[0].uses, 2);

	root = LOAD("(cmod\nCls\no}b.");
	ASSERT_RENDER(root, "OBJ(G(mod:Cls), ()).state({})");
	root = LOAD("(imod\nCls\n.");
	ASSERT_RENDER(root, "INST(G(mod:Cls), ())");

	FAILS("(o.", PF_E_STACK, 1);
	FAILS("o.", PF_E_STACK, 0);
	FAILS("imod\nCls\n.", PF_E_STACK, 0);
	FAILS("(imod\nCls", PF_E_TRUNCATED, 6);
}
END_TEST

START_TEST(test_stack_global_errors)
{
	FAILS("\x8c\x01mK\x01\x93.", PF_E_STACK, 5);
	FAILS("K\x01\x8c\x01n\x93.", PF_E_STACK, 5);
	FAILS("\x8c\x01m\x93.", PF_E_STACK, 3);
	FAILS("\x8c\x01m(\x8c\x01n\x93.", PF_E_STACK, 7); /* module is below the MARK */
	FAILS("\x93.", PF_E_STACK, 0);
}
END_TEST

START_TEST(test_stack_global_decoded_and_bad_names)
{
	pf_nid root = LOAD("Vmod\nS'Cls'\n\x93.");
	pf_limits l = pf_limits_default();

	ASSERT_RENDER(root, "G(mod:Cls)");
	ck_assert_int_eq(N(N(root)->u.g.name)->flags, PF_F_DECODED | PF_F_PY2STR);
	FAILS("\x8c\x03" "a\x00" "b\x8c\x01n\x93.", PF_E_FORMAT, 8);
	FAILS("cm\x00od\nA\n.", PF_E_FORMAT, 1);

	l.max_name_len = 3;
	reset_with(&l);
	LOAD("cabc\nxyz\n.");
	FAILS("cabcd\nx\n.", PF_E_LIMIT, 1);
	FAILS("cabc\nwxyz\n.", PF_E_LIMIT, 5);
	FAILS("\x8c\x01m\x8c\x04wxyz\x93.", PF_E_LIMIT, 9);
}
END_TEST

/* ------------------------------------------------------------------ */
/* Integers.                                                           */

START_TEST(test_big_ints)
{
	pf_nid root = load(BIG2, sizeof(BIG2) - 1);
	pf_node *big = N(pf_seq_at(&g, root, 0));

	ASSERT_RENDER(root, "[145542856500486309361890238449330649728809442059217056345945587654749356876225241259209611218744456911185381599558875746375475103914048669297745718921773427823433158419120765536610198213840157598554853892256499754024901966411683189991501042476088459679727981986945418043202748661248211748339825091903351744676279304293991165443043691726770700206972879550908196640425338921571293316568559870845121133328067132170701239967995835212682384168881471395081720829376174989450825971966494657064899340276140769794081777796371143547287807483740385375334659668424882133140661394443058747655483603144141890006567217223554270198636103730385125376n, -145542856500486309361890238449330649728809442059217056345945587654749356876225241259209611218744456911185381599558875746375475103914048669297745718921773427823433158419120765536610198213840157598554853892256499754024901966411683189991501042476088459679727981986945418043202748661248211748339825091903351744676279304293991165443043691726770700206972879550908196640425338921571293316568559870845121133328067132170701239967995835212682384168881471395081720829376174989450825971966494657064899340276140769794081777796371143547287807483740385375334659668424882133140661394443058747655483603144141890006567217223554270198636103730385125376n, -9223372036854775809n, 18446744073709551616n]");
	ck_assert_int_eq(big->kind, PF_K_BIGINT);
	ck_assert_uint_eq(big->u.s.len, 263); /* 2100 bits + sign */
	ck_assert_int_eq((uint8_t)BIG2[big->off], 0x8b); /* LONG4 */
	ck_assert_uint_eq(big->u.s.off, big->off + 5);
	ck_assert_int_eq(big->flags, 0);
}
END_TEST

START_TEST(test_long1_edges)
{
	static const char p[] = "("
		"\x8a\x00"                                  /* 0 */
		"\x8a\x01\x80"                              /* -128 */
		"\x8a\x01\x7f"                              /* 127 */
		"\x8a\x02\x00\x80"                          /* -32768 */
		"\x8a\x08\x00\x00\x00\x00\x00\x00\x00\x80"  /* INT64_MIN */
		"\x8a\x09\xff\xff\xff\xff\xff\xff\xff\xff\xff" /* -1, redundant sign byte */
		"\x8a\x09\xff\xff\xff\xff\xff\xff\xff\x7f\x00" /* INT64_MAX, redundant */
		"\x8a\x09\xff\xff\xff\xff\xff\xff\xff\xff\x00" /* 2**64-1 */
		"\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x80\xff" /* INT64_MIN, redundant */
		"\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x00\xff" /* -2**64 */
		"\x8b\x00\x00\x00\x00"                      /* LONG4 0 */
		"\x8b\x02\x00\x00\x00\xff\xff"              /* LONG4 -1 */
		"l.";
	pf_nid root = LOAD(p);

	ASSERT_RENDER(root, "[0, -128, 127, -32768, -9223372036854775808, -1, 9223372036854775807, "
			    "18446744073709551615n, -9223372036854775808, -18446744073709551616n, 0, -1]");
	ck_assert_int_eq(pf_kind_of(&g, pf_seq_at(&g, root, 6)), PF_K_INT);
	ck_assert_int_eq(pf_kind_of(&g, pf_seq_at(&g, root, 7)), PF_K_BIGINT);
	FAILS("\x8b\xff\xff\xff\xff.", PF_E_FORMAT, 0);         /* negative LONG4 length */
	FAILS("\x8b\xff\xff\xff\x7f\x00.", PF_E_TRUNCATED, 5);  /* LONG4 0x7fffffff */
	FAILS("\x8a\x09\x00.", PF_E_TRUNCATED, 2);
}
END_TEST

START_TEST(test_text_ints_and_bools)
{
	pf_nid root = LOAD("(I01\nI00\nI1\nI0\nI-7\nI+7\nI0001\nL5L\nL-5\n"
			   "I9223372036854775807\nI-9223372036854775808\n"
			   "I9223372036854775808\nL-9223372036854775809L\nl.");
	pf_node *big;

	ASSERT_RENDER(root, "[True, False, 1, 0, -7, 7, 1, 5, -5, 9223372036854775807, "
			    "-9223372036854775808, 9223372036854775808n, -9223372036854775809n]");
	ck_assert_int_eq(pf_kind_of(&g, pf_seq_at(&g, root, 0)), PF_K_BOOL);
	ck_assert_int_eq(pf_kind_of(&g, pf_seq_at(&g, root, 2)), PF_K_INT);
	big = N(pf_seq_at(&g, root, 12));
	ck_assert_int_eq(big->flags, PF_F_DECIMAL);
	ck_assert_uint_eq(big->u.s.len, 20); /* no trailing 'L' */
	ck_assert_uint_eq(big->u.s.off, big->off + 1);
	FAILS("I12a\n.", PF_E_FORMAT, 1);
	FAILS("I\n.", PF_E_FORMAT, 1);
	FAILS("I-\n.", PF_E_FORMAT, 1);
	FAILS("NL1.5\n.", PF_E_FORMAT, 2);
	FAILS("I12", PF_E_TRUNCATED, 1);
}
END_TEST

/* ------------------------------------------------------------------ */
/* Protocol-0 text.                                                    */

START_TEST(test_floats)
{
	pf_nid root = load(FL0, sizeof(FL0) - 1);

	ASSERT_RENDER(root, "[1.5, -0.25, 1.0000000000000001e+300, inf]");
	root = LOAD("(F-0.0\nF1e-5\nFnan\nG\x7f\xf0\x00\x00\x00\x00\x00\x00l.");
	ASSERT_RENDER(root, "[-0, 1.0000000000000001e-05, nan, inf]");
	FAILS("Fabc\n.", PF_E_FORMAT, 1);
	FAILS("F1.5x\n.", PF_E_FORMAT, 1);
	FAILS("F\n.", PF_E_FORMAT, 1);
	FAILS("F0x10\n.", PF_E_FORMAT, 1);
	FAILS("F1.5 \n.", PF_E_FORMAT, 1);
	FAILS("G\x00\x00", PF_E_TRUNCATED, 1);

	/* a long but valid text goes through an arena copy */
	char p[128];
	int n = snprintf(p, sizeof(p), "F0.%0*d1\n.", 80, 0);
	root = load(p, (size_t)n);
	ck_assert(N(root)->u.f == 1e-81);
	ck_assert_uint_ge(g.arena.used, 83);
	n = snprintf(p, sizeof(p), "F0.%0*d1z\n.", 80, 0);
	ASSERT_FAILS(run(p, (size_t)n), PF_E_FORMAT, 1);
}
END_TEST

START_TEST(test_string_escapes)
{
	/* S'a\nb\x41\101\'"\q\' with a double-quoted variant */
	pf_nid root = LOAD("(S'a\\nb\\x41\\101\\'\"\\q\\\\\\t\\0'\nS\"it's\"\nS''\nl.");
	pf_node *s = N(pf_seq_at(&g, root, 0));

	ASSERT_RENDER(root, "[s'a\\x0abAA\\x27\"\\x5cq\\x5c\\x09\\x00', s'it\\x27s', s'']");
	ck_assert_int_eq(s->flags, PF_F_DECODED | PF_F_PY2STR);
	ck_assert_uint_eq(s->off, 1);
	ck_assert_uint_eq(s->u.s.off, 2);
	/* Python 2 BINSTRING / SHORT_BINSTRING keep their bytes in place */
	root = LOAD("(T\x02\x00\x00\x00\xe9xU\x01zl.");
	ASSERT_RENDER(root, "[s'\\xe9x', s'z']");
	ck_assert_int_eq(N(pf_seq_at(&g, root, 0))->flags, PF_F_PY2STR);

	FAILS("S'abc\n.", PF_E_FORMAT, 1);
	FAILS("Sabc\n.", PF_E_FORMAT, 1);
	FAILS("S'\n.", PF_E_FORMAT, 1);
	FAILS("S'abc\"\n.", PF_E_FORMAT, 1);
	FAILS("S'a\\x4'\n.", PF_E_FORMAT, 1);
	FAILS("S'a\\'\n.", PF_E_FORMAT, 1); /* the quote is escaped: trailing backslash */
	FAILS("T\xff\xff\xff\xff.", PF_E_FORMAT, 0); /* negative BINSTRING length */
	FAILS("T\xff\xff\xff\x7f.", PF_E_TRUNCATED, 5);
}
END_TEST

START_TEST(test_raw_unicode_escapes)
{
	/* \u00e9, \U0001f600, a raw latin-1 byte, "\x" kept, "\u0041" kept,
	 * a lone surrogate, and a trailing backslash */
	pf_nid root = LOAD("(V\\u00e9\\U0001F600\xe9\\x\\\\u0041\\ud800\\\nV\nl.");
	pf_node *s = N(pf_seq_at(&g, root, 0));

	ASSERT_RENDER(root, "['\\xc3\\xa9\\xf0\\x9f\\x98\\x80\\xc3\\xa9\\x5cx\\x5c\\x5cu0041"
			    "\\xed\\xa0\\x80\\x5c', '']");
	ck_assert_int_eq(s->flags, PF_F_DECODED);
	ck_assert_uint_eq(s->u.s.off, 2);
	FAILS("V\\u12\n.", PF_E_FORMAT, 1);
	FAILS("V\\u12g4\n.", PF_E_FORMAT, 1);
	FAILS("V\\U00110000\n.", PF_E_FORMAT, 1);
	FAILS("Vabc", PF_E_TRUNCATED, 1);
}
END_TEST

START_TEST(test_persistent_ids)
{
	pf_nid root = LOAD("(Pfoo\nX\x03\x00\x00\x00" "abcQ\x8c\x02idK\x01\x86Ql.");
	pf_node *p0;

	ASSERT_RENDER(root, "[P('foo'), P('abc'), P(('id', 1))]");
	p0 = N(pf_seq_at(&g, root, 0));
	ck_assert_int_eq(p0->kind, PF_K_PERSID);
	ck_assert_uint_eq(p0->off, 1);
	ck_assert_uint_eq(N(p0->u.persid.pid)->off, 1);
	ck_assert_uint_eq(N(p0->u.persid.pid)->u.s.off, 2);
	ck_assert_uint_eq(N(pf_seq_at(&g, root, 1))->off, 14);
	FAILS("Pf\xffo\n.", PF_E_FORMAT, 2);
	FAILS("Q.", PF_E_STACK, 0);
}
END_TEST

/* ------------------------------------------------------------------ */
/* Stack and memo opcodes.                                             */

START_TEST(test_stack_opcodes)
{
	/* 1 MARK 2 3 POP_MARK MARK POP(the mark) 4 DUP TUPLE2; the 1 left
	 * below the root is ignored, as in CPython */
	pf_nid root = LOAD("K\x01(K\x02K\x03" "1(0K\x04" "2\x86.");

	ASSERT_RENDER(root, "(4, 4)");
	ck_assert_uint_eq(pf_seq_at(&g, root, 0), pf_seq_at(&g, root, 1));
	ck_assert_uint_eq(info.n_opcodes, 11);
	root = LOAD("NN0.");
	ck_assert_int_eq(pf_kind_of(&g, root), PF_K_NONE);
	ck_assert_uint_eq(N(root)->off, 0);
	root = LOAD("NN.");
	ck_assert_uint_eq(N(root)->off, 1);
	root = LOAD("]N\x85\x85\x85.");
	ASSERT_RENDER(root, "(((None,),),)");

	FAILS("0.", PF_E_STACK, 0);
	FAILS("1.", PF_E_STACK, 0);
	FAILS("2.", PF_E_STACK, 0);
	FAILS("N(2.", PF_E_STACK, 2);        /* DUP cannot see below a MARK */
	FAILS("N(\x85.", PF_E_STACK, 2);
	FAILS("NN(\x86.", PF_E_STACK, 3);
	FAILS("NN\x87.", PF_E_STACK, 2);
	FAILS("t.", PF_E_STACK, 0);
	FAILS("l.", PF_E_STACK, 0);
	FAILS("d.", PF_E_STACK, 0);
	FAILS("(N0.", PF_E_STACK, 3);        /* STOP sees only the MARK */
}
END_TEST

START_TEST(test_stop)
{
	FAILS(".", PF_E_STACK, 0);
	FAILS("(.", PF_E_STACK, 1);
	FAILS("N(.", PF_E_STACK, 2);
	FAILS("", PF_E_TRUNCATED, 0);
	FAILS("N", PF_E_TRUNCATED, 1);
	ck_assert_int_eq(info.root, 0);
	ck_assert_int_eq(RUN("N.garbage after STOP is never read"), 0);
	ck_assert_uint_eq(info.end, 2);
}
END_TEST

START_TEST(test_memo_opcodes)
{
	pf_nid root;

	/* text PUT/GET */
	root = LOAD("(lp7\nI1\nag7\na.");
	ck_assert_uint_eq(pf_seq_at(&g, root, 1), root); /* a list containing itself */
	ck_assert_uint_eq(pf_seq_len(&g, root), 2);
	/* LONG_BINPUT / LONG_BINGET at 0xffffffff cost one entry */
	root = LOAD("Nr\xff\xff\xff\xffj\xff\xff\xff\xff\x86.");
	ASSERT_RENDER(root, "(None, None)");
	ck_assert_uint_eq(pf_seq_at(&g, root, 0), pf_seq_at(&g, root, 1));
	/* MEMOIZE stores at the number of filled slots, not the highest index */
	root = LOAD("Nr\x05\x00\x00\x00K\x01\x94h\x01.");
	ck_assert_int_eq(pf_kind_of(&g, root), PF_K_INT);
	ck_assert_int_eq(N(root)->u.i, 1);
	root = LOAD("N\x94K\x02\x94h\x00h\x01\x86.");
	ASSERT_RENDER(root, "(None, 2)");
	/* PUT overwrites without a new entry; then MEMOIZE is index 1 */
	root = LOAD("Nq\x00K\x01q\x00K\x02\x94h\x00h\x01\x86.");
	ASSERT_RENDER(root, "(1, 2)");
	/* a PUT made in one run is not seen by the next */
	LOAD("Nq\x00.");
	FAILS("h\x00.", PF_E_MEMO, 0);

	FAILS("Nj\xff\xff\xff\xff.", PF_E_MEMO, 1);
	FAILS("Nh\x05.", PF_E_MEMO, 1);
	FAILS("Ng5\n.", PF_E_MEMO, 1);
	FAILS("Nq\x01h\x00.", PF_E_MEMO, 3);
	FAILS("q\x00.", PF_E_STACK, 0);
	FAILS("(q\x00.", PF_E_STACK, 1);
	FAILS("\x94.", PF_E_STACK, 0);
	FAILS("Np-1\n.", PF_E_FORMAT, 2);
	FAILS("Npx\n.", PF_E_FORMAT, 2);
	FAILS("Ng\n.", PF_E_FORMAT, 2);
	FAILS("Nr\x01\x00", PF_E_TRUNCATED, 2);
}
END_TEST

START_TEST(test_memo_long_indices)
{
	pf_nid root = load(MEMO300, sizeof(MEMO300) - 1);
	pf_nid strs = pf_seq_at(&g, root, 0);

	ck_assert_uint_eq(pf_seq_len(&g, strs), 300);
	ck_assert(pf_str_eq(&g, pf_seq_at(&g, strs, 299), "s299"));
	ck_assert_uint_eq(pf_seq_at(&g, root, 1), pf_seq_at(&g, strs, 299)); /* LONG_BINGET */
	ck_assert_uint_eq(pf_seq_at(&g, root, 2), pf_seq_at(&g, strs, 5));   /* BINGET */
	ck_assert(memchr(MEMO300, 'j', sizeof(MEMO300)) != NULL);
}
END_TEST

/* ------------------------------------------------------------------ */
/* APPEND / SETITEM / ADDITEMS / BUILD targets.                        */

START_TEST(test_container_targets)
{
	pf_nid root;

	root = LOAD("cm\nf\n)R(K\x01K\x02" "eK\x03" "a(\x8c\x01kK\x04u\x8c\x01jK\x05sN" "b.");
	ASSERT_RENDER(root, "R(G(m:f), ()).items([1, 2, 3]).dictitems({'k': 4, 'j': 5}).state(None)");
	ck_assert_uint_eq(N(N(root)->u.call.listitems)->off, 12);   /* the first APPENDS */
	ck_assert_uint_eq(N(N(root)->u.call.dictitems)->off, 22);
	root = LOAD("cm\nf\n)RNbK\x01" "b.");
	ck_assert_uint_eq(N(root)->u.call.n_builds, 2);
	ASSERT_RENDER(root, "R(G(m:f), ()).state(1)");
	/* duplicate keys are all kept in order; lookup sees the last */
	root = LOAD("}(\x8c\x01" "aK\x01\x8c\x01" "aK\x02u\x8c\x01" "bK\x03s.");
	ASSERT_RENDER(root, "{'a': 1, 'a': 2, 'b': 3}");
	ck_assert_int_eq(N(pf_dict_get(&g, root, "a"))->u.i, 2);
	ck_assert_uint_eq(pf_dict_get(&g, root, "c"), 0);
	root = LOAD("\x8f(K\x01K\x02\x90(K\x03\x90.");
	ASSERT_RENDER(root, "set{1, 2, 3}");
	/* empty APPENDS / SETITEMS / ADDITEMS do not look at the target (CPython) */
	root = LOAD("K\x07(e(u(\x90.");
	ASSERT_RENDER(root, "7");

	FAILS("K\x01K\x02" "a.", PF_E_STACK, 4);
	FAILS("]K\x01" "b.", PF_E_STACK, 3);
	FAILS("NN" "b.", PF_E_STACK, 2);
	FAILS("]K\x01K\x02s.", PF_E_STACK, 5);
	FAILS("}K\x01s.", PF_E_STACK, 3);
	FAILS("}(K\x01u.", PF_E_STACK, 4);
	FAILS("(K\x01" "d.", PF_E_STACK, 3);
	FAILS("](K\x01\x90.", PF_E_STACK, 4);
	FAILS("cm\nf\n)R(K\x01\x90.", PF_E_STACK, 10);
	FAILS("]e.", PF_E_STACK, 1);
	FAILS("(K\x01" "e.", PF_E_STACK, 3);  /* no object below the MARK */
	FAILS("]((K\x01" "e.", PF_E_STACK, 5); /* ... nor above the outer MARK */
	FAILS("]a.", PF_E_STACK, 1);
}
END_TEST

START_TEST(test_call_argument_kinds)
{
	pf_nid root;

	/* args may be anything whose value we cannot know */
	root = LOAD("cm\nf\ncm\ng\n)RR.");
	ASSERT_RENDER(root, "R(G(m:f), R(G(m:g), ()))");
	root = LOAD("cm\nc\n)}\x92.");
	ASSERT_RENDER(root, "NEWEX(G(m:c), (), {})");
	FAILS("cm\nf\nK\x01R.", PF_E_STACK, 7);
	FAILS("cm\nf\n]\x81.", PF_E_STACK, 6);
	FAILS("cm\nf\n)]\x92.", PF_E_STACK, 7);
	FAILS("cm\nf\n]}\x92.", PF_E_STACK, 7);
	FAILS(")R.", PF_E_STACK, 1);
	FAILS("R.", PF_E_STACK, 0);
	FAILS(")}\x92.", PF_E_STACK, 2);
}
END_TEST

START_TEST(test_proto_and_frame)
{
	pf_nid root = LOAD("\x80\x04\x95\x02\x00\x00\x00\x00\x00\x00\x00N.");

	ck_assert_int_eq(pf_kind_of(&g, root), PF_K_NONE);
	ck_assert_int_eq(info.protocol, 4);
	ck_assert_uint_eq(N(root)->off, 11);
	FAILS("\x80\x04\x95\x03\x00\x00\x00\x00\x00\x00\x00N.", PF_E_TRUNCATED, 11);
	FAILS("\x80\x04\x95\xff\xff\xff\xff\xff\xff\xff\xffN.", PF_E_TRUNCATED, 11);
	FAILS("\x80\x04\x95\x00\x00", PF_E_TRUNCATED, 3);
	FAILS("\x80\x06N.", PF_E_UNSUPPORTED, 0);
	FAILS("\x80", PF_E_TRUNCATED, 1);
}
END_TEST

/* ------------------------------------------------------------------ */
/* Hostile input.                                                      */

/* Every proper prefix of a good pickle must fail as truncated, at or
 * before its end, without crashing (check forks, so a crash fails). */
static void assert_prefixes_truncated(const char *p, size_t len)
{
	uint8_t *copy = malloc(len ? len : 1);

	for (size_t n = 0; n < len; n++) {
		/* an exact-size heap copy lets ASan catch any read past the end */
		uint8_t *buf = malloc(n ? n : 1);
		memcpy(buf, p, n);
		ck_assert_msg(run(buf, n) == -1, "prefix %zu of %zu loaded", n, len);
		ck_assert_msg(err.code == PF_E_TRUNCATED, "prefix %zu: %s (%s)", n,
			      pf_code_name(err.code), err.msg);
		ck_assert_uint_le(err.offset, n);
		free(buf);
	}
	memcpy(copy, p, len);
	ck_assert_int_eq(run(copy, len), 0);
	free(copy);
}

START_TEST(test_truncation_at_every_prefix)
{
	for (int p = 0; p < 6; p++) {
		assert_prefixes_truncated(INTS[p].b, INTS[p].n);
		assert_prefixes_truncated(STRS[p].b, STRS[p].n);
		assert_prefixes_truncated(OBJS[p].b, OBJS[p].n);
	}
	assert_prefixes_truncated(KW4, sizeof(KW4) - 1);
	assert_prefixes_truncated(SG4, sizeof(SG4) - 1);
	assert_prefixes_truncated(BIG2, sizeof(BIG2) - 1);
	assert_prefixes_truncated(OOB5, sizeof(OOB5) - 1);
	assert_prefixes_truncated(FL0, sizeof(FL0) - 1);
	assert_prefixes_truncated(LONG4, sizeof(LONG4) - 1);
}
END_TEST

START_TEST(test_huge_declared_lengths)
{
	/* 2^63 and 2^64-1 byte payloads: refused before any allocation */
	FAILS("\x8e\x00\x00\x00\x00\x00\x00\x00\x80xyz", PF_E_TRUNCATED, 9);
	FAILS("\x8e\xff\xff\xff\xff\xff\xff\xff\xffxyz", PF_E_TRUNCATED, 9);
	FAILS("\x8d\xff\xff\xff\xff\xff\xff\xff\xffxyz", PF_E_TRUNCATED, 9);
	FAILS("\x96\x00\x00\x00\x00\x00\x00\x00\x80xyz", PF_E_TRUNCATED, 9);
	FAILS("\x95\xff\xff\xff\xff\xff\xff\xff\xffN.", PF_E_TRUNCATED, 9);
	FAILS("B\xff\xff\xff\xffxyz", PF_E_TRUNCATED, 5);
	FAILS("X\xff\xff\xff\xffxyz", PF_E_TRUNCATED, 5);
	FAILS("C\xffxyz", PF_E_TRUNCATED, 2);
	FAILS("\x8c\xffxyz", PF_E_TRUNCATED, 2);
	FAILS("U\xffxyz", PF_E_TRUNCATED, 2);
	FAILS("\x8b\xff\xff\xff\x7fxyz", PF_E_TRUNCATED, 5);
	FAILS("T\x00\x00\x00\x80xyz", PF_E_FORMAT, 0);
	ck_assert_uint_eq(g.n_nodes, 1);     /* not one node made */
	ck_assert_uint_eq(g.arena.used, 0);  /* nor one byte copied */
}
END_TEST

START_TEST(test_memo_limit)
{
	const size_t puts = 1000000;
	size_t len = 1 + puts * 5 + 1;
	uint8_t *p = malloc(len);
	pf_limits l = pf_limits_default();

	p[0] = 'N';
	for (size_t i = 0; i < puts; i++) {
		uint8_t *q = p + 1 + i * 5;
		q[0] = 'r';
		q[1] = (uint8_t)i;
		q[2] = (uint8_t)(i >> 8);
		q[3] = (uint8_t)(i >> 16);
		q[4] = 0;
	}
	p[len - 1] = '.';
	/* the default max_memo (10^6) holds exactly 10^6 entries */
	RUN_OK(p, len);
	l.max_memo = 1000;
	reset_with(&l);
	ASSERT_FAILS(run(p, len), PF_E_LIMIT, 1 + 1000 * 5);
	ck_assert(strstr(err.msg, "max_memo") != NULL);
	/* re-PUTs of one index are not new entries */
	for (size_t i = 0; i < puts; i++)
		p[2 + i * 5] = p[3 + i * 5] = p[4 + i * 5] = 0;
	l.max_memo = 1;
	reset_with(&l);
	RUN_OK(p, len);
	free(p);
}
END_TEST

START_TEST(test_sparse_memo_indices)
{
	/* 1000 PUTs of indices 2^32 - k*4099: one entry each, GETs find them */
	size_t n = 0;
	uint8_t *p = malloc(1 + 1000 * 10 + 2);

	p[n++] = 'N';
	for (uint32_t k = 0; k < 1000; k++) {
		uint32_t idx = 0xffffffffu - k * 4099u;
		p[n++] = 'r';
		memcpy(p + n, &idx, 4); /* little-endian host, as the test machine */
		n += 4;
		p[n++] = 'j';
		memcpy(p + n, &idx, 4);
		n += 4;
	}
	p[n++] = '.';
	RUN_OK(p, n);
	ck_assert_int_eq(pf_kind_of(&g, info.root), PF_K_NONE);
	ck_assert_uint_eq(g.n_nodes, 2);
	free(p);
}
END_TEST

static uint8_t *repeat(const char *head, char c, size_t count, const char *tail, size_t *len)
{
	size_t h = strlen(head), t = strlen(tail);
	uint8_t *p = malloc(h + count + t);

	memcpy(p, head, h);
	memset(p + h, c, count);
	memcpy(p + h + count, tail, t);
	*len = h + count + t;
	return p;
}

START_TEST(test_deep_nesting)
{
	size_t len;
	uint8_t *p;

	/* 10^5 MARKs fit the default max_stack (10^5); STOP then finds nothing */
	p = repeat("", '(', 100000, ".", &len);
	ASSERT_FAILS(run(p, len), PF_E_STACK, 100000);
	free(p);
	/* one more MARK, or one item on top, exceeds it */
	p = repeat("", '(', 100001, ".", &len);
	ASSERT_FAILS(run(p, len), PF_E_LIMIT, 100000);
	ck_assert(strstr(err.msg, "max_stack") != NULL);
	free(p);
	p = repeat("", '(', 100000, "N.", &len);
	ASSERT_FAILS(run(p, len), PF_E_LIMIT, 100000);
	free(p);

	/* 50000 nested lists load, and nothing recursed to build them */
	size_t depth = 50000;
	p = malloc(2 * depth + 1);
	memset(p, '(', depth);
	memset(p + depth, 'l', depth);
	p[2 * depth] = '.';
	RUN_OK(p, 2 * depth + 1);
	pf_nid id = info.root;
	size_t d = 0;
	while (pf_kind_of(&g, id) == PF_K_LIST && pf_seq_len(&g, id) == 1) {
		id = pf_seq_at(&g, id, 0);
		d++;
	}
	ck_assert_uint_eq(d, depth - 1);
	ck_assert_uint_eq(pf_seq_len(&g, id), 0);
	free(p);
}
END_TEST

START_TEST(test_dup_bomb)
{
	size_t len;
	uint8_t *p = repeat("N", '2', 1000000, ".", &len);
	pf_limits l = pf_limits_default();

	/* the stack limit: DUP at offset k pushes item k+1 */
	ASSERT_FAILS(run(p, len), PF_E_LIMIT, 100000);
	/* the opcode limit, with a stack large enough */
	l.max_stack = 10000000;
	l.max_opcodes = 1000;
	reset_with(&l);
	ASSERT_FAILS(run(p, len), PF_E_LIMIT, 1000);
	ck_assert(strstr(err.msg, "max_opcodes") != NULL);
	ck_assert_uint_eq(info.n_opcodes, 1000);
	free(p);

	/* DUP/POP pairs never grow the stack: only the opcode limit stops them */
	len = 1 + 2 * 600000 + 1;
	p = malloc(len);
	p[0] = 'N';
	for (size_t i = 0; i < 600000; i++) {
		p[1 + 2 * i] = '2';
		p[2 + 2 * i] = '0';
	}
	p[len - 1] = '.';
	l = pf_limits_default();
	l.max_opcodes = 1000000;
	reset_with(&l);
	ASSERT_FAILS(run(p, len), PF_E_LIMIT, 1000000);
	free(p);
}
END_TEST

START_TEST(test_node_limit)
{
	pf_limits l = pf_limits_default();

	l.max_nodes = 3;
	reset_with(&l);
	FAILS("NNN\x87.", PF_E_LIMIT, 3);
	ck_assert(strstr(err.msg, "max_nodes") != NULL);
	/* the limit is per graph: the nodes of the failed run still count */
	FAILS("N.", PF_E_LIMIT, 0);
	ck_assert_uint_eq(g.n_nodes, 4);
}
END_TEST

START_TEST(test_decoded_limit)
{
	pf_limits l = pf_limits_default();

	l.max_decoded = 16;
	reset_with(&l);
	LOAD("Vabc\n.");
	FAILS("Vabcdefghijklmnopqrstuvwxyz\n.", PF_E_LIMIT, 1);
	ck_assert(strstr(err.msg, "max_decoded") != NULL);
}
END_TEST

START_TEST(test_unknown_opcodes)
{
	static const char known[] = "(.012FILNPRSVabcdeghijlopqrstu})GJKMQTUX]BC";
	int n_known = 0;

	for (int b = 0; b < 256; b++) {
		uint8_t buf[1] = { (uint8_t)b };
		bool is_known = (b >= 0x80 && b <= 0x98) || (b && strchr(known, b));
		int rc = run_at(buf, 1, 0, 0, 1000);

		n_known += is_known;
		ck_assert_int_eq(rc, -1);
		if (is_known) {
			ck_assert_msg(err.code != PF_E_OPCODE, "0x%02x is an opcode", b);
		} else {
			ck_assert_msg(err.code == PF_E_OPCODE, "0x%02x: %s", b, pf_code_name(err.code));
			ck_assert_uint_eq(err.offset, 1000);
		}
	}
	ck_assert_int_eq(n_known, 68);
	FAILS("\x80\x02N\xff.", PF_E_OPCODE, 3);
	ck_assert(strstr(err.msg, "0xff") != NULL);
}
END_TEST

START_TEST(test_segments_and_origin)
{
	/* two pickles back to back, as in a legacy torch.save file */
	static const char p[] = "\x80\x02K\x05.\x80\x02\x8c\x01" "a\xff";
	pf_nid first;

	ck_assert_int_eq(run_at(p, sizeof(p) - 1, 0, 3, 4096), 0);
	first = info.root;
	ck_assert_uint_eq(info.end, 5);
	ck_assert_uint_eq(N(first)->seg, 3);
	ck_assert_uint_eq(N(first)->off, 2); /* relative to buf, not origin */
	ck_assert_int_eq(run_at(p, sizeof(p) - 1, info.end, 4, 4096), -1);
	ck_assert_int_eq(err.code, PF_E_OPCODE);
	ck_assert_uint_eq(err.offset, 4096 + 10);
	/* nodes made before the error stay in the graph */
	ck_assert_int_eq(pf_kind_of(&g, first + 1), PF_K_STR);
	ck_assert_uint_eq(N(first + 1)->seg, 4);
	ck_assert_uint_eq(N(first + 1)->u.s.off, 9);
	ck_assert_int_eq(run_at(p, 3, 4, 0, 0), -1);
	ck_assert_int_eq(err.code, PF_E_TRUNCATED);
}
END_TEST

START_TEST(test_accessors)
{
	pf_nid root = LOAD("(\x8c\x01" "a\x8c\x01" "bcm\nf\n]\x8f\x86\x85t.");
	pf_error e;
	pf_nid list, item;

	ck_assert_uint_eq(pf_seq_len(&g, root), 4);
	ck_assert_uint_eq(pf_seq_at(&g, root, 4), 0);
	ck_assert_uint_eq(pf_seq_len(&g, pf_seq_at(&g, root, 0)), 0); /* a str */
	ck_assert(pf_str_eq(&g, pf_seq_at(&g, root, 0), "a"));
	ck_assert(!pf_str_eq(&g, pf_seq_at(&g, root, 0), "ab"));
	ck_assert(!pf_str_eq(&g, pf_seq_at(&g, root, 0), ""));
	ck_assert(!pf_str_eq(&g, root, "a"));
	ck_assert_ptr_null(pf_node_global(&g, root));
	ck_assert_ptr_null(pf_node_global(&g, 0));
	ck_assert(!pf_is_global(&g, pf_seq_at(&g, root, 0), "m", "f"));
	ck_assert(pf_is_global(&g, pf_seq_at(&g, root, 2), "m", "f"));
	ck_assert_uint_eq(pf_dict_get(&g, root, "a"), 0);
	ck_assert_int_eq(pf_kind_of(&g, 0), 0);
	ck_assert_int_eq(pf_kind_of(&g, g.n_nodes), 0);
	ck_assert_ptr_null(pf_node_at(&g, g.n_nodes));
	ck_assert_str_eq(pf_kind_name(PF_K_CALL), "call");
	ck_assert_str_eq(pf_kind_name(99), "invalid");
	ASSERT_RENDER(root, "('a', 'b', G(m:f), (([], set{}),))");

	/* derived nodes */
	pf_error_clear(&e);
	list = pf_graph_add(&g, PF_K_LIST, 9, 77, &e);
	item = pf_graph_add(&g, PF_K_INT, 9, 78, &e);
	ck_assert_uint_ne(list, 0);
	ck_assert_uint_eq(N(list)->off, 77);
	ck_assert_uint_eq(N(list)->seg, 9);
	N(item)->u.i = 42;
	for (int i = 0; i < 100; i++)
		ck_assert_int_eq(pf_seq_push(&g, list, item, &e), 0);
	ck_assert_uint_eq(pf_seq_len(&g, list), 100);
	ck_assert_uint_eq(pf_seq_at(&g, list, 99), item);
	ck_assert_int_eq(pf_seq_push(&g, item, list, &e), -1);
	ck_assert_int_eq(e.code, PF_E_STACK);
}
END_TEST

START_TEST(test_graph_add_limit)
{
	pf_limits l = pf_limits_default();
	pf_error e;

	l.max_nodes = 2;
	reset_with(&l);
	pf_error_clear(&e);
	ck_assert_uint_eq(pf_graph_add(&g, PF_K_NONE, 0, 0, &e), 1);
	ck_assert_uint_eq(pf_graph_add(&g, PF_K_NONE, 0, 0, &e), 2);
	ck_assert_uint_eq(pf_graph_add(&g, PF_K_NONE, 0, 55, &e), 0);
	ck_assert_int_eq(e.code, PF_E_LIMIT);
	ck_assert_uint_eq(e.offset, 55);
}
END_TEST

START_TEST(test_free_twice_and_empty)
{
	pf_graph h;
	pf_error e;

	pf_error_clear(&e);
	ck_assert_int_eq(pf_graph_init(&h, NULL, &e), 0);
	ck_assert_uint_eq(h.n_nodes, 1);
	ck_assert_uint_eq(h.limits.max_stack, 100000);
	pf_graph_free(&h);
	pf_graph_free(&h); /* zeroed: safe */
	ck_assert_ptr_null(h.nodes);
}
END_TEST

/* ------------------------------------------------------------------ */

static Suite *pickle_suite(void)
{
	Suite *s = suite_create("pickle");
	TCase *tc;

	tc = tcase_create("protocols");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_loop_test(tc, test_ints_every_protocol, 0, 6);
	tcase_add_loop_test(tc, test_strings_and_bytes_every_protocol, 0, 6);
	tcase_add_loop_test(tc, test_containers_every_protocol, 0, 6);
	tcase_add_loop_test(tc, test_memo_sharing_every_protocol, 0, 6);
	tcase_add_loop_test(tc, test_objects_every_protocol, 0, 6);
	tcase_add_test(tc, test_newobj_ex_and_frame);
	tcase_add_test(tc, test_stack_global_with_memo_module);
	tcase_add_test(tc, test_out_of_band_buffers);
	tcase_add_test(tc, test_long_lengths_protocol4);
	tcase_add_test(tc, test_hand_written_wide_opcodes);
	suite_add_tcase(s, tc);

	tc = tcase_create("opcodes");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_global_dedupe_in_first_use_order);
	tcase_add_test(tc, test_many_globals_rehash);
	tcase_add_test(tc, test_ext_opcodes);
	tcase_add_test(tc, test_inst_and_obj);
	tcase_add_test(tc, test_stack_global_errors);
	tcase_add_test(tc, test_stack_global_decoded_and_bad_names);
	tcase_add_test(tc, test_big_ints);
	tcase_add_test(tc, test_long1_edges);
	tcase_add_test(tc, test_text_ints_and_bools);
	tcase_add_test(tc, test_floats);
	tcase_add_test(tc, test_string_escapes);
	tcase_add_test(tc, test_raw_unicode_escapes);
	tcase_add_test(tc, test_persistent_ids);
	tcase_add_test(tc, test_stack_opcodes);
	tcase_add_test(tc, test_stop);
	tcase_add_test(tc, test_memo_opcodes);
	tcase_add_test(tc, test_memo_long_indices);
	tcase_add_test(tc, test_container_targets);
	tcase_add_test(tc, test_call_argument_kinds);
	tcase_add_test(tc, test_proto_and_frame);
	tcase_add_test(tc, test_accessors);
	tcase_add_test(tc, test_graph_add_limit);
	tcase_add_test(tc, test_free_twice_and_empty);
	suite_add_tcase(s, tc);

	tc = tcase_create("hostile");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, test_truncation_at_every_prefix);
	tcase_add_test(tc, test_huge_declared_lengths);
	tcase_add_test(tc, test_memo_limit);
	tcase_add_test(tc, test_sparse_memo_indices);
	tcase_add_test(tc, test_deep_nesting);
	tcase_add_test(tc, test_dup_bomb);
	tcase_add_test(tc, test_node_limit);
	tcase_add_test(tc, test_decoded_limit);
	tcase_add_test(tc, test_unknown_opcodes);
	tcase_add_test(tc, test_segments_and_origin);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(pickle_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
