/* compute._kernels: one pass over a block of a base/SFT tensor pair, in C.
 *
 *     nz_b, nz_s, changed, sub_b, sub_s, pow2_sq_b, pow2_sq_s = _kernels.prepare(
 *         "bfloat16", "float32", src_b, src_s, out_b, out_s, out_d)
 *
 * src_b and src_s are the same block of base and SFT, each in its own storage dtype
 * (bfloat16, float16, float32 or float64; the two may differ): 1-D or 2-D buffers
 * whose rows are contiguous (any row stride, so a column slice w[:, a:b] of a
 * C-ordered matrix is fine), bfloat16 and float16 as 16-bit integers. Each is upcast
 * into the C-ordered fp64 buffer out_b / out_s, and out_d = out_s - out_b (exact in
 * fp64 when the two exponents are at most 53 - p apart, p the significant bits of
 * the wider storage dtype: always for float16 pairs, and for bfloat16 or float32
 * ones that are not 29 binades apart). From the storage bits, in the same pass:
 *   nz_b, nz_s  entries that are not +-0
 *   changed     entries where dW != 0: the bits differ, except +0 against -0, when
 *               both sides share a dtype; the values differ when they do not (NaN
 *               and Inf make dW's Gram trace non-finite, and the caller recounts in
 *               fp64)
 *   sub_b, sub_s  subnormal entries of base, of SFT
 *   pow2_sq_b, pow2_sq_s  sum over the side's entries of p^2, p = |x| rounded down
 *               to a power of two (the exponent bits alone; 0 for zeros and
 *               subnormals, inf for Inf/NaN): the side's rounding noise is
 *               p * 2^-mantissa bits of its own dtype.
 * Everything compute/spectra.py's NumPy path does in ~15 passes over the block, in
 * one. The loop runs without the GIL, so worker threads overlap.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

static float f16_table[1 << 16];  /* float16 bits -> value, exact */

static void build_f16_table(void) {
    for (uint32_t h = 0; h < (1u << 16); h++) {
        uint32_t sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1F, man = h & 0x3FF;
        uint32_t bits;
        if (exp == 0x1F) {  /* Inf, NaN (the payload kept in the top mantissa bits) */
            bits = sign | 0x7F800000u | (man << 13);
        } else if (exp != 0) {  /* normal: rebias 15 -> 127 */
            bits = sign | ((exp + 112) << 23) | (man << 13);
        } else if (man == 0) {
            bits = sign;
        } else {  /* subnormal: man * 2^-24, normal in fp32 */
            int e = -1;
            do { man <<= 1; e++; } while (!(man & 0x400));
            bits = sign | ((uint32_t)(112 - e) << 23) | ((man & 0x3FF) << 13);
        }
        memcpy(&f16_table[h], &bits, 4);
    }
}

static inline double bf16_value(uint16_t x) {
    uint32_t bits = (uint32_t)x << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}
static inline double f16_value(uint16_t x) { return f16_table[x]; }
static inline double f32_value(uint32_t x) {
    float f;
    memcpy(&f, &x, 4);
    return f;
}
static inline double f64_value(uint64_t x) {
    double d;
    memcpy(&d, &x, 8);
    return d;
}

typedef struct {
    int64_t nz_b, nz_s, changed, normal_b, normal_s;
    double sq_b, sq_s;
} Stats;

/* One row of `n` entries. For each side a storage type: T, the integer of its bits;
 * VALUE: bits -> double; NONSIGN, EXP: masks of the magnitude and of the exponent.
 * CHANGED: whether dW's entry is not 0, from the bits when both sides share a dtype
 * (+0 against -0 is no change), from the values when they do not. The per-row sums
 * are kept in locals so the compiler can vectorize them. */
#define ROW_KERNEL_(NAME, TB, VB, NSB, EB, TS, VS, NSS, ES, CHANGED)                \
    static void NAME(const TB *restrict b, const TS *restrict s, double *restrict ob, \
                     double *restrict os, double *restrict od, Py_ssize_t n,          \
                     Stats *st) {                                                    \
        int64_t nz_b = 0, nz_s = 0, changed = 0, normal_b = 0, normal_s = 0;       \
        double sq_b = 0.0, sq_s = 0.0;                                              \
        const TB nonsign __attribute__((unused)) = NSB; /* SAME's mask */         \
        _Pragma("omp simd reduction(+:nz_b,nz_s,changed,normal_b,normal_s,sq_b,sq_s)") \
        for (Py_ssize_t i = 0; i < n; i++) {                                         \
            TB xb = b[i];                                                            \
            TS xs = s[i];                                                            \
            double vb = VB(xb), vs = VS(xs);                                         \
            ob[i] = vb;                                                              \
            os[i] = vs;                                                              \
            od[i] = vs - vb;                                                         \
            nz_b += (xb & NSB) != 0;                                                 \
            nz_s += (xs & NSS) != 0;                                                 \
            changed += CHANGED;                                                      \
            TB eb = xb & EB;                                                         \
            TS es = xs & ES;                                                         \
            normal_b += eb != 0;                                                     \
            normal_s += es != 0;                                                     \
            double pb = VB(eb), ps = VS(es);                                         \
            sq_b += pb * pb;                                                         \
            sq_s += ps * ps;                                                         \
        }                                                                            \
        st->nz_b += nz_b;                                                            \
        st->nz_s += nz_s;                                                            \
        st->changed += changed;                                                      \
        st->normal_b += normal_b;                                                    \
        st->normal_s += normal_s;                                                    \
        st->sq_b += sq_b;                                                            \
        st->sq_s += sq_s;                                                            \
    }
#define ROW_KERNEL(...) ROW_KERNEL_(__VA_ARGS__)

/* each storage dtype's T, VALUE, NONSIGN, EXP */
#define BF16 uint16_t, bf16_value, 0x7FFFu, 0x7F80u
#define F16 uint16_t, f16_value, 0x7FFFu, 0x7C00u
#define F32 uint32_t, f32_value, 0x7FFFFFFFu, 0x7F800000u
#define F64 uint64_t, f64_value, 0x7FFFFFFFFFFFFFFFull, 0x7FF0000000000000ull
#define SAME ((xb != xs) & (((xb | xs) & nonsign) != 0))
#define MIXED (vb != vs)

ROW_KERNEL(row_bf16_bf16, BF16, BF16, SAME)
ROW_KERNEL(row_bf16_f16, BF16, F16, MIXED)
ROW_KERNEL(row_bf16_f32, BF16, F32, MIXED)
ROW_KERNEL(row_bf16_f64, BF16, F64, MIXED)
ROW_KERNEL(row_f16_bf16, F16, BF16, MIXED)
ROW_KERNEL(row_f16_f16, F16, F16, SAME)
ROW_KERNEL(row_f16_f32, F16, F32, MIXED)
ROW_KERNEL(row_f16_f64, F16, F64, MIXED)
ROW_KERNEL(row_f32_bf16, F32, BF16, MIXED)
ROW_KERNEL(row_f32_f16, F32, F16, MIXED)
ROW_KERNEL(row_f32_f32, F32, F32, SAME)
ROW_KERNEL(row_f32_f64, F32, F64, MIXED)
ROW_KERNEL(row_f64_bf16, F64, BF16, MIXED)
ROW_KERNEL(row_f64_f16, F64, F16, MIXED)
ROW_KERNEL(row_f64_f32, F64, F32, MIXED)
ROW_KERNEL(row_f64_f64, F64, F64, SAME)

typedef void (*row_fn)(const void *, const void *, double *, double *, double *,
                       Py_ssize_t, Stats *);

#define N_KINDS 4
static const struct {
    const char *name;
    Py_ssize_t itemsize;
} KINDS[N_KINDS] = {{"bfloat16", 2}, {"float16", 2}, {"float32", 4}, {"float64", 8}};

/* ROWS[base kind][SFT kind], kinds in KINDS' order */
static const row_fn ROWS[N_KINDS][N_KINDS] = {
    {(row_fn)row_bf16_bf16, (row_fn)row_bf16_f16, (row_fn)row_bf16_f32,
     (row_fn)row_bf16_f64},
    {(row_fn)row_f16_bf16, (row_fn)row_f16_f16, (row_fn)row_f16_f32,
     (row_fn)row_f16_f64},
    {(row_fn)row_f32_bf16, (row_fn)row_f32_f16, (row_fn)row_f32_f32,
     (row_fn)row_f32_f64},
    {(row_fn)row_f64_bf16, (row_fn)row_f64_f16, (row_fn)row_f64_f32,
     (row_fn)row_f64_f64},
};

static int kind_index(const char *name) {
    for (int i = 0; i < N_KINDS; i++)
        if (strcmp(name, KINDS[i].name) == 0) return i;
    PyErr_Format(PyExc_ValueError, "unknown storage dtype %s", name);
    return -1;
}

/* rows, cols and row stride (bytes) of a 1-D or 2-D buffer with contiguous rows */
static int source_geometry(Py_buffer *v, Py_ssize_t itemsize, const char *what,
                           Py_ssize_t *rows, Py_ssize_t *cols, Py_ssize_t *stride) {
    if (v->itemsize != itemsize) {
        PyErr_Format(PyExc_ValueError, "%s: %zd-byte entries, the storage dtype has %zd",
                     what, v->itemsize, itemsize);
        return 0;
    }
    if (v->ndim == 1) {
        *rows = 1;
        *cols = v->shape[0];
        *stride = *cols * itemsize;
        if (*cols > 1 && v->strides[0] != itemsize) goto strided;
        return 1;
    }
    if (v->ndim != 2) {
        PyErr_Format(PyExc_ValueError, "%s: %d dimensions, expected 1 or 2", what,
                     v->ndim);
        return 0;
    }
    *rows = v->shape[0];
    *cols = v->shape[1];
    *stride = v->strides[0];
    if ((*cols > 1 && v->strides[1] != itemsize) || (*rows > 1 && *stride < 0))
        goto strided;
    return 1;
strided:
    PyErr_Format(PyExc_ValueError, "%s: rows are not contiguous", what);
    return 0;
}

static PyObject *prepare(PyObject *self, PyObject *args) {
    const char *kind_b, *kind_s;
    PyObject *objs[5];
    if (!PyArg_ParseTuple(args, "ssOOOOO:prepare", &kind_b, &kind_s, &objs[0],
                          &objs[1], &objs[2], &objs[3], &objs[4]))
        return NULL;
    int kb = kind_index(kind_b), ks = kb < 0 ? -1 : kind_index(kind_s);
    if (kb < 0 || ks < 0) return NULL;
    Py_buffer views[5];
    int got = 0;
    PyObject *result = NULL;
    static const char *names[5] = {"base block", "SFT block", "base output",
                                   "SFT output", "delta output"};
    for (; got < 5; got++) {
        int flags = got < 2 ? PyBUF_STRIDED_RO : (PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS);
        if (PyObject_GetBuffer(objs[got], &views[got], flags) < 0) goto done;
    }
    Py_ssize_t rows, cols, stride_b, rows_s, cols_s, stride_s;
    if (!source_geometry(&views[0], KINDS[kb].itemsize, names[0], &rows, &cols,
                         &stride_b) ||
        !source_geometry(&views[1], KINDS[ks].itemsize, names[1], &rows_s, &cols_s,
                         &stride_s))
        goto done;
    if (rows != rows_s || cols != cols_s) {
        PyErr_Format(PyExc_ValueError, "base block is %zd x %zd, SFT block %zd x %zd",
                     rows, cols, rows_s, cols_s);
        goto done;
    }
    for (int i = 2; i < 5; i++) {
        if (views[i].itemsize != 8 || views[i].len < rows * cols * 8) {
            PyErr_Format(PyExc_ValueError, "%s: needs %zd fp64 entries", names[i],
                         rows * cols);
            goto done;
        }
    }
    Stats st = {0, 0, 0, 0, 0, 0.0, 0.0};
    const char *pb = views[0].buf, *ps = views[1].buf;
    double *ob = views[2].buf, *os = views[3].buf, *od = views[4].buf;
    row_fn fn = ROWS[kb][ks];
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t r = 0; r < rows; r++)
        fn(pb + r * stride_b, ps + r * stride_s, ob + r * cols, os + r * cols,
           od + r * cols, cols, &st);
    Py_END_ALLOW_THREADS
    result = Py_BuildValue("LLLLLdd", (long long)st.nz_b, (long long)st.nz_s,
                           (long long)st.changed, (long long)(st.nz_b - st.normal_b),
                           (long long)(st.nz_s - st.normal_s), st.sq_b, st.sq_s);
done:
    for (int i = 0; i < got; i++) PyBuffer_Release(&views[i]);
    return result;
}

static PyMethodDef methods[] = {
    {"prepare", prepare, METH_VARARGS,
     "prepare(storage_b, storage_s, src_b, src_s, out_b, out_s, out_d) -> "
     "(nonzero_b, nonzero_s, changed, subnormal_b, subnormal_s, pow2_sq_b, "
     "pow2_sq_s): upcast a base/SFT block pair to fp64, their difference, and the "
     "counts from the storage bits (see the module source)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_kernels", NULL, -1,
                                    methods};

PyMODINIT_FUNC PyInit__kernels(void) {
    build_f16_table();
    return PyModule_Create(&module);
}
