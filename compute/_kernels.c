/* compute._kernels: one pass over a block of a base/SFT tensor pair, in C.
 *
 *     nz_b, nz_s, changed, subnormal, pow2_sq = _kernels.prepare(
 *         "bfloat16", src_b, src_s, out_b, out_s, out_d)
 *
 * src_b and src_s are the same block of base and SFT in their storage dtype: 1-D or
 * 2-D buffers whose rows are contiguous (any row stride, so a column slice w[:, a:b]
 * of a C-ordered matrix is fine), bfloat16 and float16 as 16-bit integers. Each is
 * upcast into the C-ordered fp64 buffer out_b / out_s, and out_d = out_s - out_b
 * (exact in fp64 when the two exponents are at most 53 - p apart, p the significant
 * bits of the storage dtype: always for float16, and for any bfloat16 pair that is
 * not 45 binades apart). From the storage bits, in the same pass:
 *   nz_b, nz_s  entries that are not +-0
 *   changed     entries where the bits differ, except +0 against -0 (dW != 0 for
 *               finite values; NaN/Inf make dW's Gram trace non-finite, and the
 *               caller recounts in fp64)
 *   subnormal   subnormal entries of base and SFT together
 *   pow2_sq     sum over base and SFT entries of p^2, p = |x| rounded down to a
 *               power of two (the exponent bits alone; 0 for zeros and subnormals,
 *               inf for Inf/NaN): the rounding noise is p * 2^-mantissa bits.
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
    int64_t nz_b, nz_s, changed, normal;
    double pow2_sq;
} Stats;

/* One row of `n` entries. T: the storage bits' integer type; VALUE: bits -> double;
 * NONSIGN, EXP: masks of the magnitude and of the exponent. The per-row sums are
 * kept in locals so the compiler can vectorize them. */
#define ROW_KERNEL(NAME, T, VALUE, NONSIGN, EXP)                                    \
    static void NAME(const T *restrict b, const T *restrict s, double *restrict ob,  \
                     double *restrict os, double *restrict od, Py_ssize_t n,          \
                     Stats *st) {                                                    \
        int64_t nz_b = 0, nz_s = 0, changed = 0, normal = 0;                        \
        double sq = 0.0;                                                             \
        _Pragma("omp simd reduction(+:nz_b,nz_s,changed,normal,sq)")               \
        for (Py_ssize_t i = 0; i < n; i++) {                                         \
            T xb = b[i], xs = s[i];                                                  \
            double vb = VALUE(xb), vs = VALUE(xs);                                   \
            ob[i] = vb;                                                              \
            os[i] = vs;                                                              \
            od[i] = vs - vb;                                                         \
            nz_b += (xb & NONSIGN) != 0;                                             \
            nz_s += (xs & NONSIGN) != 0;                                             \
            changed += (xb != xs) & (((xb | xs) & NONSIGN) != 0);                    \
            T eb = xb & EXP, es = xs & EXP;                                          \
            normal += (eb != 0) + (es != 0);                                         \
            double pb = VALUE(eb), ps = VALUE(es);                                   \
            sq += pb * pb + ps * ps;                                                 \
        }                                                                            \
        st->nz_b += nz_b;                                                            \
        st->nz_s += nz_s;                                                            \
        st->changed += changed;                                                      \
        st->normal += normal;                                                        \
        st->pow2_sq += sq;                                                           \
    }

ROW_KERNEL(row_bf16, uint16_t, bf16_value, 0x7FFFu, 0x7F80u)
ROW_KERNEL(row_f16, uint16_t, f16_value, 0x7FFFu, 0x7C00u)
ROW_KERNEL(row_f32, uint32_t, f32_value, 0x7FFFFFFFu, 0x7F800000u)
ROW_KERNEL(row_f64, uint64_t, f64_value, 0x7FFFFFFFFFFFFFFFull, 0x7FF0000000000000ull)

typedef void (*row_fn)(const void *, const void *, double *, double *, double *,
                       Py_ssize_t, Stats *);

static const struct {
    const char *name;
    Py_ssize_t itemsize;
    row_fn fn;
} KINDS[] = {
    {"bfloat16", 2, (row_fn)row_bf16},
    {"float16", 2, (row_fn)row_f16},
    {"float32", 4, (row_fn)row_f32},
    {"float64", 8, (row_fn)row_f64},
};

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
    const char *kind;
    PyObject *objs[5];
    if (!PyArg_ParseTuple(args, "sOOOOO:prepare", &kind, &objs[0], &objs[1], &objs[2],
                          &objs[3], &objs[4]))
        return NULL;
    int k = -1;
    for (size_t i = 0; i < sizeof KINDS / sizeof KINDS[0]; i++)
        if (strcmp(kind, KINDS[i].name) == 0) k = (int)i;
    if (k < 0) {
        PyErr_Format(PyExc_ValueError, "unknown storage dtype %s", kind);
        return NULL;
    }
    Py_buffer views[5];
    int got = 0;
    PyObject *result = NULL;
    static const char *names[5] = {"base block", "SFT block", "base output",
                                   "SFT output", "delta output"};
    for (; got < 5; got++) {
        int flags = got < 2 ? PyBUF_STRIDED_RO : (PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS);
        if (PyObject_GetBuffer(objs[got], &views[got], flags) < 0) goto done;
    }
    Py_ssize_t itemsize = KINDS[k].itemsize, rows, cols, stride_b, rows_s, cols_s,
               stride_s;
    if (!source_geometry(&views[0], itemsize, names[0], &rows, &cols, &stride_b) ||
        !source_geometry(&views[1], itemsize, names[1], &rows_s, &cols_s, &stride_s))
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
    Stats st = {0, 0, 0, 0, 0.0};
    const char *pb = views[0].buf, *ps = views[1].buf;
    double *ob = views[2].buf, *os = views[3].buf, *od = views[4].buf;
    row_fn fn = KINDS[k].fn;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t r = 0; r < rows; r++)
        fn(pb + r * stride_b, ps + r * stride_s, ob + r * cols, os + r * cols,
           od + r * cols, cols, &st);
    Py_END_ALLOW_THREADS
    result = Py_BuildValue("LLLLd", (long long)st.nz_b, (long long)st.nz_s,
                           (long long)st.changed,
                           (long long)(st.nz_b + st.nz_s - st.normal), st.pow2_sq);
done:
    for (int i = 0; i < got; i++) PyBuffer_Release(&views[i]);
    return result;
}

static PyMethodDef methods[] = {
    {"prepare", prepare, METH_VARARGS,
     "prepare(storage, src_b, src_s, out_b, out_s, out_d) -> (nonzero_b, nonzero_s, "
     "changed, subnormal, pow2_sq): upcast a base/SFT block pair to fp64, their "
     "difference, and the counts from the storage bits (see the module source)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_kernels", NULL, -1,
                                    methods};

PyMODINIT_FUNC PyInit__kernels(void) {
    build_f16_table();
    return PyModule_Create(&module);
}
