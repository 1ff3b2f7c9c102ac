/*
 * names.h - turning keys and attribute names into safe file names.
 *
 * DESIGN §3.1: '/' -> %2F, '%' -> %25, NUL -> %00, empty -> "%",
 * "." -> "%2E", ".." -> "%2E%2E".  A name longer than the room left
 * (PF_NAME_MAX minus `reserve`, which callers use for ".npy" or a "~N"
 * collision suffix) is cut at a character boundary and ends in "~" and 16
 * hex digits of a 64-bit FNV-1a hash of the whole unescaped name, so
 * different long names stay different.  The result never contains '/' or
 * NUL and is never "." or "..".
 */
#ifndef PF_NAMES_H
#define PF_NAMES_H

#include <stddef.h>
#include <stdint.h>

#define PF_NAME_MAX 255

/*
 * Escape in[0..len) into out (room for PF_NAME_MAX + 1 bytes), NUL-terminated,
 * at most PF_NAME_MAX - reserve bytes long.  Returns the length.
 * reserve must be < PF_NAME_MAX - 17.
 */
size_t pf_name_escape(const uint8_t *in, size_t len, size_t reserve, char *out);

/*
 * Undo pf_name_escape for names that were not cut: decode %XX sequences
 * and "%" alone (the empty name).  Returns the decoded length, or
 * (size_t)-1 for a name pf_name_escape cannot have produced.  out needs
 * room for len bytes.
 */
size_t pf_name_unescape(const char *in, size_t len, uint8_t *out);

#endif
