/*
 * utf8.h - strict UTF-8 checks shared by the codec (names, .npy headers,
 * meta.json text): no overlong forms, no surrogates, nothing past U+10FFFF.
 */
#ifndef PF_UTF8_H
#define PF_UTF8_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Length (1-4) of the valid UTF-8 sequence at p[0..n), or 0 if none starts there. n > 0. */
size_t pf_utf8_seq(const uint8_t *p, size_t n);

/* True when p[0..n) is valid UTF-8 without NUL bytes. */
bool pf_utf8_valid(const uint8_t *p, size_t n);

#endif
