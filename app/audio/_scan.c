/* The byte scans behind app/audio/disguise.py, in one pass each.
 *
 * disguise.py says what is looked for and why (FFmpeg's stream probers), and builds the
 * tables; this module only walks the bytes. Every read is bounds-checked against the
 * buffer's length: the samples are a tenant's upload. The GIL is released while walking.
 *
 * Each walk is two steps over blocks that stay in the L1 cache: a branch-free pass the
 * compiler vectorises marks where something could start (a few bytes in a hundred, in
 * speech), then only those places are read. A byte-by-byte switch cost ~4 ns a byte on
 * speech, whose samples are full of FF and FE bytes: mispredicted branches.
 *
 *   sync_counts(samples, patterns) -> tuple[int, ...]
 *       How often each 4-byte big-endian pattern occurs at even offsets, then at odd ones
 *       (2 × len(patterns) counts).
 *   first_nonzero(samples, start) -> int
 *       The offset of the first byte at or after `start` that is not zero (`start` if none).
 *   chained(samples, mpeg_sizes, ac3_sizes, starts, runs) -> bool
 *       Whether one format's frame headers chain (each where the one before ends) from one
 *       of `starts`, or `runs[format]` of them in a row anywhere. Formats, in the order of
 *       `runs`: MPEG audio, ADTS, LOAS, AC-3, byte-swapped AC-3.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* The marking passes are vectorised; on x86-64 with glibc they also get an AVX2 version,
 * which the loader picks when the CPU has it (GCC and Clang's function multiversioning):
 * 62 -> 45 us for 100 KB of speech. */
#if defined(__x86_64__) && defined(__GLIBC__) && defined(__has_attribute)
#if __has_attribute(target_clones)
#define VECTORISED __attribute__((target_clones("avx2", "default")))
#endif
#endif
#ifndef VECTORISED
#define VECTORISED
#endif

#define FORMATS 5
#define MAX_PATTERNS 16
#define MAX_STARTS 8
#define BLOCK 4096

enum { MPEG_AUDIO, ADTS, LOAS, AC3, AC3_SWAPPED };

typedef struct {
    int32_t *at;   /* header positions, ascending */
    int32_t *size; /* frame sizes */
    Py_ssize_t n, cap;
} Headers;

static int push(Headers *h, Py_ssize_t at, int32_t size) {
    if (h->n == h->cap) {
        Py_ssize_t cap = h->cap ? h->cap * 2 : 64;
        int32_t *grown_at = realloc(h->at, cap * sizeof(int32_t));
        if (grown_at == NULL) return -1;
        h->at = grown_at;
        int32_t *grown_size = realloc(h->size, cap * sizeof(int32_t));
        if (grown_size == NULL) return -1;
        h->size = grown_size;
        h->cap = cap;
    }
    h->at[h->n] = (int32_t)at;
    h->size[h->n] = size;
    h->n++;
    return 0;
}

/* The AC-3 or E-AC-3 frame size from header bytes 2-5 (0: none). */
static int32_t ac3_size(const uint8_t *h, int swap, const int64_t *ac3_sizes) {
    unsigned h2 = h[2 ^ swap], h3 = h[3 ^ swap], h4 = h[4 ^ swap], h5 = h[5 ^ swap];
    unsigned bsid = h5 >> 3;
    if (bsid <= 10) {
        unsigned code = h4 & 0x3F;
        return (int32_t)ac3_sizes[(code < 38 ? code : 38) * 4 + (h4 >> 6)];
    }
    if (bsid <= 16 && (h2 >> 6) != 3) return (int32_t)(((((h2 & 7) << 8) | h3) + 1) * 2);
    return 0;
}

/* The header (if any) starting at `h`, by format (FFmpeg's parsers' rules, as disguise.py
 * gives them), where find_headers marked a candidate: its first two bytes matched there.
 * Returns -1 when out of memory. */
static int read_header(const uint8_t *h, Py_ssize_t at, const int64_t *mpeg_sizes,
                       const int64_t *ac3_sizes, Headers *out) {
    int32_t size;
    switch (h[0]) {
    case 0xFF:
        if (h[1] >= 0xE2 && (uint8_t)(h[2] - 0x10) < 0xE0) {
            size = (int32_t)mpeg_sizes[(h[1] << 8) | h[2]];
            if (size > 0 && push(&out[MPEG_AUDIO], at, size)) return -1;
        }
        if ((h[1] & 0xF6) == 0xF0) {
            size = ((h[3] & 3) << 11) | (h[4] << 3) | (h[5] >> 5);
            if (size >= 7 && push(&out[ADTS], at, size)) return -1;
        }
        break;
    case 0x56:
        size = (((h[1] & 0x1F) << 8) | h[2]) + 3;
        if (size >= 7 && push(&out[LOAS], at, size)) return -1;
        break;
    case 0x0B:
        size = ac3_size(h, 0, ac3_sizes);
        if (size >= 7 && push(&out[AC3], at, size)) return -1;
        break;
    case 0x77:
        size = ac3_size(h, 1, ac3_sizes);
        if (size >= 7 && push(&out[AC3_SWAPPED], at, size)) return -1;
        break;
    }
    return 0;
}

/* Every header that parses, by format. Returns -1 when out of memory. */
VECTORISED
static int find_headers(const uint8_t *d, Py_ssize_t len, const int64_t *mpeg_sizes,
                        const int64_t *ac3_sizes, Headers *out) {
    Py_ssize_t n = len - 7; /* a header starts at least 8 bytes before the end */
    uint8_t mark[BLOCK + 8];
    for (Py_ssize_t base = 0; base < n; base += BLOCK) {
        /* Unsigned, so the compiler sees 0 <= m <= BLOCK (with -fwrapv it cannot rule out
           a wrapped n - base, and warns that mark + m may be out of bounds). */
        size_t m = (size_t)(n - base < BLOCK ? n - base : BLOCK);
        const uint8_t *x = d + base, *y = d + base + 1;
        /* FF or 56 then E0-FF (MPEG audio, ADTS, LOAS), 0B 77 or 77 0B (AC-3). */
        for (size_t i = 0; i < m; i++) {
            mark[i] = (((x[i] == 0xFF) | (x[i] == 0x56)) & (y[i] >= 0xE0)) |
                      ((x[i] == 0x0B) & (y[i] == 0x77)) | ((x[i] == 0x77) & (y[i] == 0x0B));
        }
        memset(mark + m, 0, 8);
        for (size_t i = 0; i < m; i += 8) {
            uint64_t any;
            memcpy(&any, mark + i, 8);
            if (!any) continue;
            for (size_t k = i; k < i + 8 && k < m; k++) {
                if (mark[k] && read_header(x + k, base + (Py_ssize_t)k, mpeg_sizes, ac3_sizes, out))
                    return -1;
            }
        }
    }
    return 0;
}

/* The index of the header at `at`, or -1. */
static Py_ssize_t header_at(const Headers *h, int64_t at) {
    Py_ssize_t lo = 0, hi = h->n;
    while (lo < hi) {
        Py_ssize_t mid = lo + (hi - lo) / 2;
        if (h->at[mid] < at) lo = mid + 1;
        else hi = mid;
    }
    return lo < h->n && h->at[lo] == at ? lo : -1;
}

/* Whether two headers follow one another from one of `starts`, or `frames` of them
 * anywhere. AC-3's prober also steps over a 16-byte `01 10` preamble between frames.
 * Returns -1 when out of memory. */
static int has_run(const Headers *h, const uint8_t *d, Py_ssize_t len, Py_ssize_t frames,
                   const int64_t *starts, int n_starts, int preamble) {
    if (h->n < 2) return 0;
    /* run[j]: how many headers chain from header j (itself included); a header's
     * successor lies after it, so walking back from the last fills them in one pass. */
    Py_ssize_t *run = malloc(h->n * sizeof(Py_ssize_t));
    if (run == NULL) return -1;
    int found = 0;
    for (Py_ssize_t j = h->n - 1; j >= 0; j--) {
        int64_t next = (int64_t)h->at[j] + h->size[j];
        if (preamble && next + 1 < len && d[next] == 0x01 && d[next + 1] == 0x10) next += 16;
        Py_ssize_t after = header_at(h, next);
        run[j] = after < 0 ? 1 : run[after] + 1;
        if (run[j] >= frames) {
            found = 1;
            break;
        }
        if (after >= 0) {
            for (int s = 0; s < n_starts; s++) {
                if (starts[s] == h->at[j]) found = 1;
            }
            if (found) break;
        }
    }
    free(run);
    return found;
}

/* counts[parity * n + k]: occurrences of wanted[k] (big-endian) at offsets of that parity
 * that a reader of whole 16-bit words there sees: the pattern's second word is whole. */
VECTORISED
static void count_patterns(const uint8_t *d, Py_ssize_t len, const uint32_t *wanted,
                           Py_ssize_t n, Py_ssize_t *counts) {
    uint8_t heads[MAX_PATTERNS][2], mark[BLOCK + 8];
    int n_heads = 0;
    for (Py_ssize_t k = 0; k < n; k++) { /* each distinct first two bytes once */
        uint8_t a = wanted[k] >> 24, b = (wanted[k] >> 16) & 0xFF;
        int seen = 0;
        for (int h = 0; h < n_heads; h++) seen |= heads[h][0] == a && heads[h][1] == b;
        if (!seen) {
            heads[n_heads][0] = a;
            heads[n_heads][1] = b;
            n_heads++;
        }
    }
    Py_ssize_t last = len - 4; /* the last offset with four bytes */
    for (Py_ssize_t base = 0; base <= last; base += BLOCK) {
        Py_ssize_t m = last + 1 - base < BLOCK ? last + 1 - base : BLOCK;
        const uint8_t *x = d + base, *y = d + base + 1;
        memset(mark, 0, sizeof mark);
        for (int h = 0; h < n_heads; h++) {
            uint8_t a = heads[h][0], b = heads[h][1];
            for (Py_ssize_t i = 0; i < m; i++) mark[i] |= (x[i] == a) & (y[i] == b);
        }
        for (Py_ssize_t i = 0; i < m; i += 8) {
            uint64_t any;
            memcpy(&any, mark + i, 8);
            if (!any) continue;
            for (Py_ssize_t j = i; j < i + 8 && j < m; j++) {
                Py_ssize_t at = base + j;
                int parity = (int)(at & 1);
                if (!mark[j] || at + 4 > parity + 2 * ((len - parity) / 2)) continue;
                const uint8_t *p = d + at;
                uint32_t value = (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
                for (Py_ssize_t k = 0; k < n; k++) counts[parity * n + k] += value == wanted[k];
            }
        }
    }
}

static PyObject *sync_counts(PyObject *Py_UNUSED(self), PyObject *args) {
    Py_buffer samples;
    PyObject *patterns;
    if (!PyArg_ParseTuple(args, "y*O!", &samples, &PyTuple_Type, &patterns)) return NULL;
    Py_ssize_t n_patterns = PyTuple_GET_SIZE(patterns);
    uint32_t wanted[MAX_PATTERNS] = {0};
    Py_ssize_t counts[2 * MAX_PATTERNS] = {0};
    if (n_patterns > MAX_PATTERNS) {
        PyBuffer_Release(&samples);
        return PyErr_Format(PyExc_ValueError, "at most %d patterns", MAX_PATTERNS);
    }
    for (Py_ssize_t k = 0; k < n_patterns; k++) {
        unsigned long value = PyLong_AsUnsignedLong(PyTuple_GET_ITEM(patterns, k));
        if (PyErr_Occurred() || value > 0xFFFFFFFFUL) {
            PyBuffer_Release(&samples);
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "a pattern is 4 bytes");
            return NULL;
        }
        wanted[k] = (uint32_t)value;
    }
    const uint8_t *d = samples.buf;
    Py_ssize_t len = samples.len;
    Py_BEGIN_ALLOW_THREADS
    count_patterns(d, len, wanted, n_patterns, counts);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&samples);
    PyObject *result = PyTuple_New(2 * n_patterns);
    if (result == NULL) return NULL;
    for (Py_ssize_t k = 0; k < 2 * n_patterns; k++) {
        PyObject *count = PyLong_FromSsize_t(counts[k]);
        if (count == NULL) {
            Py_DECREF(result);
            return NULL;
        }
        PyTuple_SET_ITEM(result, k, count);
    }
    return result;
}

static PyObject *chained(PyObject *Py_UNUSED(self), PyObject *args) {
    Py_buffer samples, mpeg, ac3;
    PyObject *starts_tuple;
    Py_ssize_t runs[FORMATS];
    if (!PyArg_ParseTuple(args, "y*y*y*O!(nnnnn)", &samples, &mpeg, &ac3, &PyTuple_Type,
                          &starts_tuple, &runs[0], &runs[1], &runs[2], &runs[3], &runs[4]))
        return NULL;
    PyObject *result = NULL;
    int64_t starts[MAX_STARTS];
    int n_starts = (int)PyTuple_GET_SIZE(starts_tuple);
    if (samples.len > INT32_MAX || mpeg.len != (1 << 16) * (Py_ssize_t)sizeof(int64_t) ||
        ac3.len != 39 * 4 * (Py_ssize_t)sizeof(int64_t) || n_starts > MAX_STARTS) {
        PyErr_SetString(PyExc_ValueError,
                        "samples under 2 GiB, tables of int64: 65536 MPEG sizes, 39 x 4 AC-3 sizes");
        goto done;
    }
    for (int s = 0; s < n_starts; s++) {
        starts[s] = PyLong_AsLongLong(PyTuple_GET_ITEM(starts_tuple, s));
        if (PyErr_Occurred()) goto done;
    }
    Headers headers[FORMATS];
    memset(headers, 0, sizeof headers);
    int found = 0;
    Py_BEGIN_ALLOW_THREADS
    found = find_headers(samples.buf, samples.len, mpeg.buf, ac3.buf, headers);
    for (int f = 0; f < FORMATS && found == 0; f++) {
        found = has_run(&headers[f], samples.buf, samples.len, runs[f], starts, n_starts,
                        f == AC3 || f == AC3_SWAPPED);
    }
    Py_END_ALLOW_THREADS
    for (int f = 0; f < FORMATS; f++) {
        free(headers[f].at);
        free(headers[f].size);
    }
    if (found < 0) {
        PyErr_NoMemory();
        goto done;
    }
    result = PyBool_FromLong(found);
done:
    PyBuffer_Release(&samples);
    PyBuffer_Release(&mpeg);
    PyBuffer_Release(&ac3);
    return result;
}

static PyObject *first_nonzero(PyObject *Py_UNUSED(self), PyObject *args) {
    Py_buffer samples;
    Py_ssize_t start;
    if (!PyArg_ParseTuple(args, "y*n", &samples, &start)) return NULL;
    const uint8_t *d = samples.buf;
    Py_ssize_t at = start < 0 ? 0 : start, len = samples.len;
    for (uint64_t word = 0; at + 8 <= len; at += 8) {
        memcpy(&word, d + at, 8);
        if (word) break;
    }
    while (at < len && d[at] == 0) at++;
    PyBuffer_Release(&samples);
    return PyLong_FromSsize_t(at < len ? at : start);
}

static PyMethodDef methods[] = {
    {"sync_counts", sync_counts, METH_VARARGS, "Counts of 4-byte patterns at even, then odd offsets."},
    {"first_nonzero", first_nonzero, METH_VARARGS, "The first byte from `start` that is not zero."},
    {"chained", chained, METH_VARARGS, "Whether one format's frame headers chain or run."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, .m_name = "_scan", .m_size = -1, .m_methods = methods,
};

PyMODINIT_FUNC PyInit__scan(void) { return PyModule_Create(&module); }
