/* ingest._sefast: the Stack Exchange dump's <row .../> elements parsed straight
 * into Arrow buffers, and post bodies turned into plain text, in C.
 *
 *     from ingest import _sefast
 *     out = _sefast.parse_rows(data, ("Id", "Body", ...), body=1, tags=-1,
 *                              html_fallback=se_text.html_to_text)
 *
 * `data` is a chunk of whole rows as RowSplitter yields it (rows, whitespace and
 * comments; no root tag). Each attribute column comes back as three Arrow buffers of
 * a large_string array (validity bitmap, int64 offsets, UTF-8 data), so no Python
 * object is made per value. The XML rules of a dump row are checked as a validating
 * parser would: well-formed tags and attributes, only the five predefined entities
 * and valid character references, valid UTF-8, no control characters, no duplicate
 * attributes. A violation raises _sefast.ParseError(message, line) with the line
 * counted from 0 at the chunk's first byte.
 *
 * body_text follows the rules of ingest/se_text.py exactly (tests compare the two on
 * every sample body and on generated ones). Where a body holds something whose
 * Python result depends on Unicode tables or on regex subtleties (a named entity
 * other than the common five, a tag name followed by a non-ASCII character, a `<`
 * inside a tag, an unusual character reference), that one body is handed to
 * `html_fallback`, the Python implementation: same result, rarely taken.
 *
 * The scan runs without the GIL, so several threads can parse chunks at once.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static PyObject *ParseError;

/* ------------------------------------------------------------ growable buffers */

typedef struct {
    char *p;
    size_t n, cap;
    int oom;
} Buf;

static int buf_reserve(Buf *b, size_t extra) {
    if (b->n + extra <= b->cap && b->p) return 1;  /* never NULL once reserved */
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->n + extra) cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) { b->oom = 1; return 0; }
    b->p = p;
    b->cap = cap;
    return 1;
}

static inline int buf_put(Buf *b, const char *s, size_t len) {
    if (!len) return 1;
    if (!buf_reserve(b, len)) return 0;
    memcpy(b->p + b->n, s, len);
    b->n += len;
    return 1;
}

static inline int buf_putc(Buf *b, char c) {
    if (b->n == b->cap && !buf_reserve(b, 1)) return 0;
    b->p[b->n++] = c;
    return 1;
}

static void buf_free(Buf *b) { free(b->p); b->p = NULL; b->n = b->cap = 0; }

static int put_utf8(Buf *b, uint32_t c) {
    char s[4];
    size_t n;
    if (c < 0x80) { s[0] = (char)c; n = 1; }
    else if (c < 0x800) { s[0] = (char)(0xC0 | (c >> 6)); s[1] = (char)(0x80 | (c & 0x3F)); n = 2; }
    else if (c < 0x10000) {
        s[0] = (char)(0xE0 | (c >> 12)); s[1] = (char)(0x80 | ((c >> 6) & 0x3F));
        s[2] = (char)(0x80 | (c & 0x3F)); n = 3;
    } else {
        s[0] = (char)(0xF0 | (c >> 18)); s[1] = (char)(0x80 | ((c >> 12) & 0x3F));
        s[2] = (char)(0x80 | ((c >> 6) & 0x3F)); s[3] = (char)(0x80 | (c & 0x3F)); n = 4;
    }
    return buf_put(b, s, n);
}

/* One Arrow large_string column being built. */
typedef struct {
    Buf data, offsets, validity;
    int64_t nulls;
} Col;

static int col_init(Col *c, size_t rows_hint) {
    memset(c, 0, sizeof *c);
    int64_t zero = 0;
    buf_reserve(&c->offsets, (rows_hint + 1) * 8);
    buf_reserve(&c->validity, rows_hint / 8 + 1);
    return buf_put(&c->offsets, (const char *)&zero, 8);
}

/* Close row `i` of the column: valid (the bytes appended since the last row) or null. */
static int col_end_row(Col *c, int64_t i, int valid) {
    if ((i & 7) == 0 && !buf_putc(&c->validity, 0)) return 0;
    if (valid) c->validity.p[i >> 3] |= (char)(1 << (i & 7));
    else c->nulls++;
    int64_t off = (int64_t)c->data.n;
    return buf_put(&c->offsets, (const char *)&off, 8);
}

static void col_free(Col *c) { buf_free(&c->data); buf_free(&c->offsets); buf_free(&c->validity); }

/* ------------------------------------------------------------ UTF-8 and chars */

/* Decode one UTF-8 character at s (s < e); 0 bytes on invalid input. */
static inline int utf8_decode(const unsigned char *s, const unsigned char *e, uint32_t *out) {
    unsigned char c = s[0];
    if (c < 0x80) { *out = c; return 1; }
    if (c < 0xC2) return 0;
    if (c < 0xE0) {
        if (e - s < 2 || (s[1] & 0xC0) != 0x80) return 0;
        *out = ((uint32_t)(c & 0x1F) << 6) | (s[1] & 0x3F);
        return 2;
    }
    if (c < 0xF0) {
        if (e - s < 3 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80) return 0;
        uint32_t v = ((uint32_t)(c & 0x0F) << 12) | ((uint32_t)(s[1] & 0x3F) << 6) | (s[2] & 0x3F);
        if (v < 0x800 || (v >= 0xD800 && v <= 0xDFFF)) return 0;
        *out = v;
        return 3;
    }
    if (c < 0xF5) {
        if (e - s < 4 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80 || (s[3] & 0xC0) != 0x80)
            return 0;
        uint32_t v = ((uint32_t)(c & 0x07) << 18) | ((uint32_t)(s[1] & 0x3F) << 12)
                     | ((uint32_t)(s[2] & 0x3F) << 6) | (s[3] & 0x3F);
        if (v < 0x10000 || v > 0x10FFFF) return 0;
        *out = v;
        return 4;
    }
    return 0;
}

static inline int xml_char_ok(uint32_t c) {
    return c == 0x9 || c == 0xA || c == 0xD || (c >= 0x20 && c <= 0xD7FF)
           || (c >= 0xE000 && c <= 0xFFFD) || (c >= 0x10000 && c <= 0x10FFFF);
}

/* Python's str.isspace(): the byte length of a whitespace character at s, else 0.
 * Input is valid UTF-8 (checked by the XML pass). */
static inline int py_space(const unsigned char *s, const unsigned char *e) {
    unsigned char c = s[0];
    if (c < 0x80) return (c == ' ' || (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x1F));
    if (c == 0xC2 && e - s >= 2) return (s[1] == 0x85 || s[1] == 0xA0) ? 2 : 0;
    if (c == 0xE1 && e - s >= 3) return (s[1] == 0x9A && s[2] == 0x80) ? 3 : 0;
    if (c == 0xE2 && e - s >= 3) {
        if (s[1] == 0x80 && (s[2] <= 0x8A || s[2] == 0xA8 || s[2] == 0xA9 || s[2] == 0xAF))
            return 3;
        if (s[1] == 0x81 && s[2] == 0x9F) return 3;
        return 0;
    }
    if (c == 0xE3 && e - s >= 3) return (s[1] == 0x80 && s[2] == 0x80) ? 3 : 0;
    return 0;
}

/* Length of trailing whitespace ending at e (s <= e). */
static size_t py_space_before(const unsigned char *s, const unsigned char *e) {
    const unsigned char *p = e;
    while (p > s) {
        unsigned char c = p[-1];
        if (c < 0x80) {
            if (c == ' ' || (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x1F)) { p--; continue; }
            break;
        }
        const unsigned char *q = p - 1;
        while (q > s && (*q & 0xC0) == 0x80) q--;
        if (py_space(q, p) == p - q) { p = q; continue; }
        break;
    }
    return (size_t)(e - p);
}

static inline int is_word_ascii(unsigned char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
}

static inline unsigned char lower(unsigned char c) { return (c >= 'A' && c <= 'Z') ? c + 32 : c; }

/* ------------------------------------------------------------ html_to_text */

/* Return codes of the HTML passes: 1 done, 0 out of memory, -1 hand to Python. */
#define H_OK 1
#define H_OOM 0
#define H_FALLBACK -1

/* " ".join(s.split()) */
static int h_collapse(const unsigned char *s, size_t n, Buf *out) {
    const unsigned char *p = s, *e = s + n;
    int pending = 0, any = 0;
    if (!buf_reserve(out, n)) return H_OOM;
    while (p < e) {
        int w = py_space(p, e);
        if (w) { p += w; pending = 1; continue; }
        if (pending && any) out->p[out->n++] = ' ';
        pending = 0;
        any = 1;
        /* copy a run of non-space ASCII quickly */
        out->p[out->n++] = (char)*p++;
        while (p < e && *p > ' ' && *p < 0x80) out->p[out->n++] = (char)*p++;
    }
    return H_OK;
}

/* Tag names of _BLOCK, by length (index 0: names of one letter, ...). */
static const char *const BLOCK_NAMES[][16] = {
    {"p"},
    {"h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol", "li", "tr", "dl", "dt", "dd"},
    {"div", "pre"},
    {NULL},
    {"table", "thead", "tbody", "tfoot"},
    {"header", "footer", "figure"},
    {"section", "article"},
    {NULL},
    {NULL},
    {"blockquote", "figcaption"},
};

static int name_is(const unsigned char *s, size_t n, const char *name) {
    for (size_t i = 0; i < n; i++)
        if (lower(s[i]) != (unsigned char)name[i]) return 0;
    return name[n] == 0;
}

static int is_block_name(const unsigned char *s, size_t n) {
    if (n == 0 || n > 10) return 0;
    for (int k = 0; k < 16 && BLOCK_NAMES[n - 1][k]; k++)
        if (name_is(s, n, BLOCK_NAMES[n - 1][k])) return 1;
    return 0;
}

/* The tag passes of _flow (_LI, _BR, _BLOCK, then _TAG) in one scan. Equivalent to
 * the regexes applied in turn as long as no tag span `<...>` holds another `<` and
 * every tag name is followed by an ASCII character: otherwise H_FALLBACK. */
static int h_tags(const unsigned char *s, size_t n, Buf *out) {
    const unsigned char *p = s, *e = s + n;
    if (!buf_reserve(out, n + 16)) return H_OOM;
    while (p < e) {
        const unsigned char *lt = memchr(p, '<', (size_t)(e - p));
        if (!lt) { if (!buf_put(out, (const char *)p, (size_t)(e - p))) return H_OOM; break; }
        if (!buf_put(out, (const char *)p, (size_t)(lt - p))) return H_OOM;
        const unsigned char *gt = memchr(lt + 1, '>', (size_t)(e - lt - 1));
        if (!gt) {  /* no tag can close: the rest is text */
            if (!buf_put(out, (const char *)lt, (size_t)(e - lt))) return H_OOM;
            break;
        }
        if (memchr(lt + 1, '<', (size_t)(gt - lt - 1))) return H_FALLBACK;
        const unsigned char *q = lt + 1;
        int slash = 0;
        if (*q == '/') { slash = 1; q++; }
        const unsigned char *name = q;
        while (q < gt && is_word_ascii(*q)) q++;
        if (*q >= 0x80) return H_FALLBACK;  /* Unicode word rules, case folding */
        size_t nlen = (size_t)(q - name);
        const char *rep = "";
        if (!slash && name_is(name, nlen, "li")) rep = "\n\n- ";
        else if (!slash && (name_is(name, nlen, "br") || name_is(name, nlen, "hr"))) rep = "\n";
        else if (is_block_name(name, nlen)) rep = "\n\n";
        if (!buf_put(out, rep, strlen(rep))) return H_OOM;
        p = gt + 1;
    }
    return H_OK;
}

/* The tag pass of a <pre> block: _TAG.sub("", part). */
static int h_strip_tags(const unsigned char *s, size_t n, Buf *out) {
    const unsigned char *p = s, *e = s + n;
    if (!buf_reserve(out, n)) return H_OOM;
    while (p < e) {
        const unsigned char *lt = memchr(p, '<', (size_t)(e - p));
        if (!lt) { buf_put(out, (const char *)p, (size_t)(e - p)); break; }
        buf_put(out, (const char *)p, (size_t)(lt - p));
        const unsigned char *gt = memchr(lt + 1, '>', (size_t)(e - lt - 1));
        if (!gt) { buf_put(out, (const char *)lt, (size_t)(e - lt)); break; }
        p = gt + 1;
    }
    return out->oom ? H_OOM : H_OK;
}

/* html.unescape for the common cases; anything else is H_FALLBACK. */
static int h_unescape(const unsigned char *s, size_t n, Buf *out) {
    const unsigned char *p = s, *e = s + n;
    if (!buf_reserve(out, n)) return H_OOM;
    while (p < e) {
        const unsigned char *amp = memchr(p, '&', (size_t)(e - p));
        if (!amp) { buf_put(out, (const char *)p, (size_t)(e - p)); break; }
        buf_put(out, (const char *)p, (size_t)(amp - p));
        const unsigned char *q = amp + 1;
        if (q >= e) { buf_putc(out, '&'); p = q; continue; }
        unsigned char c = *q;
        if (c == '#') {
            q++;
            int hex = 0;
            if (q < e && (*q == 'x' || *q == 'X')) { hex = 1; q++; }
            uint32_t v = 0;
            int digits = 0;
            while (q < e && digits <= 8) {
                unsigned char d = *q;
                int x;
                if (d >= '0' && d <= '9') x = d - '0';
                else if (hex && lower(d) >= 'a' && lower(d) <= 'f') x = lower(d) - 'a' + 10;
                else break;
                v = v * (hex ? 16 : 10) + (uint32_t)x;
                digits++;
                q++;
            }
            if (digits == 0 || digits > 8 || q >= e || *q != ';') return H_FALLBACK;
            int ok = v == 0x9 || v == 0xA || v == 0xC || v == 0xD || (v >= 0x20 && v <= 0x7E)
                     || (v >= 0xA0 && v <= 0xD7FF) || (v >= 0xE000 && v <= 0xFDCF)
                     || (v >= 0xFDF0 && v <= 0xFFFD)
                     || (v >= 0x10000 && v <= 0x10FFFF && (v & 0xFFFE) != 0xFFFE);
            if (!ok) return H_FALLBACK;
            put_utf8(out, v);
            p = q + 1;
            continue;
        }
        if (c == '\t' || c == '\n' || c == '\f' || c == ' ' || c == '<' || c == '&' || c == ';') {
            buf_putc(out, '&');  /* not a reference */
            p = q;
            continue;
        }
        const unsigned char *name = q;
        while (q < e && q - name < 8 && ((*q >= 'a' && *q <= 'z') || (*q >= 'A' && *q <= 'Z')))
            q++;
        size_t k = (size_t)(q - name);
        if (q >= e || *q != ';') return H_FALLBACK;
        const char *rep = NULL;
        if (k == 3 && !memcmp(name, "amp", 3)) rep = "&";
        else if (k == 2 && !memcmp(name, "lt", 2)) rep = "<";
        else if (k == 2 && !memcmp(name, "gt", 2)) rep = ">";
        else if (k == 4 && !memcmp(name, "quot", 4)) rep = "\"";
        else if (k == 4 && !memcmp(name, "apos", 4)) rep = "'";
        else if (k == 4 && !memcmp(name, "nbsp", 4)) rep = "\xc2\xa0";
        if (!rep) return H_FALLBACK;
        buf_put(out, rep, strlen(rep));
        p = q + 1;
    }
    return out->oom ? H_OOM : H_OK;
}

/* Strip Python whitespace from both ends: [*a, *b). */
static void py_strip(const unsigned char **a, const unsigned char **b) {
    const unsigned char *s = *a, *e = *b;
    int w;
    while (s < e && (w = py_space(s, e))) s += w;
    e -= py_space_before(s, e);
    *a = s;
    *b = e;
}

/* Paragraph list: appends each to `out` joined by "\n\n"; *count tracks how many. */
static int emit_par(Buf *out, int *count, const unsigned char *s, size_t n) {
    if (*count && !buf_put(out, "\n\n", 2)) return 0;
    (*count)++;
    return buf_put(out, (const char *)s, n);
}

/* _paragraphs(s, out) */
static int h_paragraphs(const unsigned char *s, size_t n, Buf *out, int *count) {
    const unsigned char *p = s, *e = s + n;
    while (1) {
        const unsigned char *sep = p;
        while (sep < e) {
            sep = memchr(sep, '\n', (size_t)(e - sep));
            if (!sep) { sep = e; break; }
            if (sep + 1 < e && sep[1] == '\n') break;
            sep++;
        }
        if (sep > e) sep = e;
        /* paragraph [p, sep) */
        if (memchr(p, '\n', (size_t)(sep - p))) {
            int first = 1;
            const unsigned char *l = p;
            while (l <= sep) {
                const unsigned char *le = memchr(l, '\n', (size_t)(sep - l));
                if (!le) le = sep;
                const unsigned char *a = l, *b = le;
                py_strip(&a, &b);
                if (a < b) {
                    if (first) {
                        if (*count && !buf_put(out, "\n\n", 2)) return H_OOM;
                        (*count)++;
                        first = 0;
                    } else if (!buf_putc(out, '\n')) return H_OOM;
                    if (!buf_put(out, (const char *)a, (size_t)(b - a))) return H_OOM;
                }
                if (le == sep) break;
                l = le + 1;
            }
        } else {
            const unsigned char *a = p, *b = sep;
            py_strip(&a, &b);
            if (a < b && !emit_par(out, count, a, (size_t)(b - a))) return H_OOM;
        }
        if (sep >= e) break;
        p = sep + 2;
        if (p > e) break;
    }
    return H_OK;
}

typedef struct {
    Buf t1, t2, t3;
} Scratch;

/* _flow(s) then _paragraphs */
static int h_flow(Scratch *w, const unsigned char *s, size_t n, Buf *out, int *count) {
    int r;
    w->t1.n = w->t2.n = w->t3.n = 0;
    if ((r = h_collapse(s, n, &w->t1)) != H_OK) return r;
    const Buf *cur = &w->t1;
    if (memchr(cur->p, '<', cur->n)) {
        if ((r = h_tags((unsigned char *)cur->p, cur->n, &w->t2)) != H_OK) return r;
        cur = &w->t2;
    }
    if (memchr(cur->p, '&', cur->n)) {
        if ((r = h_unescape((unsigned char *)cur->p, cur->n, &w->t3)) != H_OK) return r;
        cur = &w->t3;
    }
    return h_paragraphs((unsigned char *)cur->p, cur->n, out, count);
}

/* A <pre> block's text. */
static int h_pre(Scratch *w, const unsigned char *s, size_t n, Buf *out, int *count) {
    int r;
    w->t2.n = w->t3.n = 0;
    const unsigned char *a = s, *b = s + n;
    if (memchr(a, '<', n)) {
        if ((r = h_strip_tags(a, n, &w->t2)) != H_OK) return r;
        a = (unsigned char *)w->t2.p;
        b = a + w->t2.n;
    }
    if (memchr(a, '&', (size_t)(b - a))) {
        if ((r = h_unescape(a, (size_t)(b - a), &w->t3)) != H_OK) return r;
        a = (unsigned char *)w->t3.p;
        b = a + w->t3.n;
    }
    while (a < b && (*a == '\r' || *a == '\n')) a++;          /* strip("\r\n") */
    while (b > a && (b[-1] == '\r' || b[-1] == '\n')) b--;
    b -= py_space_before(a, b);                                 /* rstrip() */
    const unsigned char *x = a, *y = b;
    py_strip(&x, &y);
    if (x < y && !emit_par(out, count, a, (size_t)(b - a))) return H_OOM;
    return H_OK;
}

static const unsigned char *find_ci(const unsigned char *s, const unsigned char *e, const char *pat) {
    size_t k = strlen(pat);
    for (const unsigned char *p = s; p + k <= e; p++) {
        p = memchr(p, '<', (size_t)(e - p));
        if (!p || p + k > e) return NULL;
        size_t i = 1;
        while (i < k && lower(p[i]) == (unsigned char)pat[i]) i++;
        if (i == k) return p;
    }
    return NULL;
}

/* html_to_text(body) into out; H_FALLBACK where Python must decide. */
static int html_to_text(Scratch *w, const unsigned char *s, size_t n, Buf *out) {
    int count = 0, r;
    const unsigned char *e = s + n;
    int has_pre = 0;
    for (const unsigned char *p = s; (p = memchr(p, '<', (size_t)(e - p))) && p + 4 <= e; p++)
        if ((p[1] == 'p' && p[2] == 'r' && p[3] == 'e') || (p[1] == 'P' && p[2] == 'R' && p[3] == 'E')) {
            has_pre = 1;
            break;
        }
    if (!has_pre) return h_flow(w, s, n, out, &count);
    /* _PRE.split: <pre\b[^>]*>(.*?)</pre\s*>, case-insensitive, dot matches all */
    const unsigned char *p = s, *text = s;
    while (p < e) {
        const unsigned char *open = find_ci(p, e, "<pre");
        if (!open) break;
        const unsigned char *q = open + 4;
        if (q < e && *q >= 0x80) return H_FALLBACK;
        if (q < e && is_word_ascii(*q)) { p = open + 1; continue; }
        const unsigned char *gt = q < e ? memchr(q, '>', (size_t)(e - q)) : NULL;
        if (!gt) break;
        const unsigned char *c = gt + 1, *close = NULL, *close_end = NULL;
        while ((c = find_ci(c, e, "</pre"))) {
            const unsigned char *t = c + 5;
            while (t < e) {
                int sp = py_space(t, e);
                if (!sp) break;
                t += sp;
            }
            if (t < e && *t >= 0x80) return H_FALLBACK;
            if (t < e && *t == '>') { close = c; close_end = t + 1; break; }
            c = c + 1;
        }
        if (!close) break;  /* no later <pre> can close either */
        if ((r = h_flow(w, text, (size_t)(open - text), out, &count)) != H_OK) return r;
        if ((r = h_pre(w, gt + 1, (size_t)(close - gt - 1), out, &count)) != H_OK) return r;
        text = p = close_end;
    }
    return h_flow(w, text, (size_t)(e - text), out, &count);
}

/* ------------------------------------------------------------ tags */

/* parse_tags(t) as list<large_string> buffers: list offsets (int32), child col. */
static int tags_row(const unsigned char *s, size_t n, Col *child, Buf *list_off, int32_t *nchild) {
    const unsigned char *a = s, *b = s + n;
    py_strip(&a, &b);
    if (a < b) {
        unsigned char sep;
        if (*a == '<') {  /* t[1:-1].split("><") */
            a++;
            b = b > a ? b - 1 : a;
            sep = 0;
        }
        else {
            while (a < b && *a == '|') a++;
            while (b > a && b[-1] == '|') b--;
            sep = '|';
        }
        const unsigned char *p = a;
        while (p <= b) {
            const unsigned char *q;
            size_t skip;
            if (sep) { q = memchr(p, '|', (size_t)(b - p)); skip = 1; }
            else {
                q = p;
                while (q + 1 < b && !(q[0] == '>' && q[1] == '<')) q++;
                if (q + 1 >= b) q = NULL;
                skip = 2;
            }
            if (!q) q = b;
            if (q > p) {
                if (!buf_put(&child->data, (const char *)p, (size_t)(q - p))) return 0;
                if (!col_end_row(child, *nchild, 1)) return 0;
                (*nchild)++;
            }
            if (q >= b) break;
            p = q + skip;
        }
    }
    return buf_put(list_off, (const char *)nchild, 4);
}

/* ------------------------------------------------------------ the row parser */

typedef struct {
    const char *msg;   /* static message, or NULL */
    char text[200];    /* formatted message */
    int64_t line;
} Err;

typedef struct {
    const unsigned char *s, *e;
    int64_t line;
    Err err;
} Scan;

static int fail(Scan *sc, int64_t line, const char *fmt, const char *arg) {
    snprintf(sc->err.text, sizeof sc->err.text, fmt, arg ? arg : "");
    sc->err.msg = sc->err.text;
    sc->err.line = line;
    return 0;
}

static inline int is_name_start(unsigned char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':';
}
static inline int is_name_char(unsigned char c) {
    return is_name_start(c) || (c >= '0' && c <= '9') || c == '-' || c == '.';
}

/* Skip XML whitespace, counting lines. */
static inline void skip_ws(Scan *sc, const unsigned char **pp) {
    const unsigned char *p = *pp;
    while (p < sc->e && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) {
        if (*p == '\n') sc->line++;
        p++;
    }
    *pp = p;
}

/* Decode an attribute value [p, e) (quote excluded) into out: entities, character
 * references, attribute-value normalisation, UTF-8 and XML-character checks. */
static int attr_value(Scan *sc, const unsigned char *p, const unsigned char *e, Buf *out) {
    if (!buf_reserve(out, (size_t)(e - p))) return fail(sc, sc->line, "out of memory", NULL);
    while (p < e) {
        /* fast run of plain printable ASCII */
        const unsigned char *r = p;
        while (r < e && *r >= 0x20 && *r < 0x80 && *r != '&' && *r != '<') r++;
        if (r > p) { memcpy(out->p + out->n, p, (size_t)(r - p)); out->n += (size_t)(r - p); p = r; }
        if (p >= e) break;
        unsigned char c = *p;
        if (c == '<') return fail(sc, sc->line, "'<' in an attribute value", NULL);
        if (c == '&') {
            const unsigned char *q = p + 1;
            const unsigned char *semi = memchr(q, ';', (size_t)(e - q) < 40 ? (size_t)(e - q) : 40);
            if (!semi) return fail(sc, sc->line, "'&' that starts no entity or character reference", NULL);
            size_t k = (size_t)(semi - q);
            if (k > 0 && q[0] == '#') {
                uint32_t v = 0;
                int hex = k > 1 && q[1] == 'x', digits = 0;
                for (const unsigned char *d = q + 1 + hex; d < semi; d++) {
                    int x;
                    if (*d >= '0' && *d <= '9') x = *d - '0';
                    else if (hex && lower(*d) >= 'a' && lower(*d) <= 'f') x = lower(*d) - 'a' + 10;
                    else return fail(sc, sc->line, "malformed character reference", NULL);
                    if (++digits > 8) return fail(sc, sc->line, "character reference out of range", NULL);
                    v = v * (hex ? 16 : 10) + (uint32_t)x;
                }
                if (!digits) return fail(sc, sc->line, "malformed character reference", NULL);
                if (!xml_char_ok(v)) {
                    char num[16];
                    snprintf(num, sizeof num, "%u", v);
                    return fail(sc, sc->line, "character reference &#%s; is not a valid XML character", num);
                }
                if (!put_utf8(out, v)) return fail(sc, sc->line, "out of memory", NULL);
            } else {
                const char *rep = NULL;
                if (k == 2 && !memcmp(q, "lt", 2)) rep = "<";
                else if (k == 2 && !memcmp(q, "gt", 2)) rep = ">";
                else if (k == 3 && !memcmp(q, "amp", 3)) rep = "&";
                else if (k == 4 && !memcmp(q, "quot", 4)) rep = "\"";
                else if (k == 4 && !memcmp(q, "apos", 4)) rep = "'";
                if (!rep) {
                    char name[48];
                    size_t m = k < 40 ? k : 40;
                    memcpy(name, q, m);
                    name[m] = 0;
                    for (size_t i = 0; i < m; i++)
                        if (!is_name_char((unsigned char)name[i])) name[i] = '?';
                    return fail(sc, sc->line, "undefined entity &%s; (XML defines only &lt; &gt; &amp; &quot; &apos;)", name);
                }
                out->p[out->n++] = rep[0];
            }
            p = semi + 1;
            continue;
        }
        if (c < 0x20) {
            if (c == '\n') { sc->line++; out->p[out->n++] = ' '; p++; continue; }
            if (c == '\t') { out->p[out->n++] = ' '; p++; continue; }
            if (c == '\r') {  /* \r\n and \r are one line end: one space */
                out->p[out->n++] = ' ';
                p++;
                if (p < e && *p == '\n') { sc->line++; p++; }
                continue;
            }
            char hex[8];
            snprintf(hex, sizeof hex, "%02X", c);
            return fail(sc, sc->line, "control character U+00%s in an attribute value", hex);
        }
        uint32_t v;
        int len = utf8_decode(p, e, &v);
        if (!len) {
            char hex[8];
            snprintf(hex, sizeof hex, "%02X", c);
            return fail(sc, sc->line, "not valid UTF-8 (byte 0x%s)", hex);
        }
        if (v == 0xFFFE || v == 0xFFFF)
            return fail(sc, sc->line, "character U+FFFE/U+FFFF is not allowed in XML", NULL);
        memcpy(out->p + out->n, p, (size_t)len);
        out->n += (size_t)len;
        p += len;
    }
    return 1;
}

typedef struct {
    PyObject *name;      /* str */
    const char *utf8;
    Py_ssize_t len;
} Attr;

/* Unknown attributes of one row: appended to a Python list as (row, [(k, v), ...]).
 * Rare; done with the GIL. */
typedef struct {
    int64_t row;
    Buf kv;        /* k\0v\0k\0v\0 */
    int count;
} Unknown;

typedef struct {
    Unknown *items;
    size_t n, cap;
} Unknowns;

static Unknown *unknown_for(Unknowns *u, int64_t row) {
    if (u->n && u->items[u->n - 1].row == row) return &u->items[u->n - 1];
    if (u->n == u->cap) {
        size_t cap = u->cap ? u->cap * 2 : 16;
        Unknown *it = realloc(u->items, cap * sizeof *it);
        if (!it) return NULL;
        u->items = it;
        u->cap = cap;
    }
    Unknown *x = &u->items[u->n++];
    memset(x, 0, sizeof *x);
    x->row = row;
    return x;
}

/* Find the attribute index of a name; the last hit first (attributes come in a
 * fixed order in a dump, so the next one is usually the one after the last). */
static int find_attr(const Attr *attrs, int nattrs, const unsigned char *s, size_t n, int hint) {
    for (int k = 0; k < nattrs; k++) {
        int i = (hint + k) % nattrs;
        if ((size_t)attrs[i].len == n && !memcmp(attrs[i].utf8, s, n)) return i;
    }
    return -1;
}

typedef struct {
    Col *cols;
    int nattrs;
    const Attr *attrs;
    Buf lines;          /* int32 line per row */
    Unknowns unknown;
    Buf scratch;
    int64_t rows;
} Rows;

/* Parse one <row .../> starting at p ('<' of the tag). Returns the byte after it. */
static const unsigned char *parse_row(Scan *sc, Rows *R, const unsigned char *p) {
    const unsigned char *e = sc->e;
    int64_t row = R->rows, row_line = sc->line;
    int32_t line32 = (int32_t)sc->line;
    if (!buf_put(&R->lines, (const char *)&line32, 4)) { fail(sc, sc->line, "out of memory", NULL); return NULL; }
    uint64_t seen_lo = 0;  /* which known attributes this row set (up to 64) */
    unsigned char seen_hi[256] = {0};
    int hint = 0;
    p += 4;  /* "<row" */
    for (;;) {
        const unsigned char *before = p;
        skip_ws(sc, &p);
        if (p >= e) { fail(sc, row_line, "the <row> element is not closed", NULL); return NULL; }
        if (*p == '/') {
            if (p + 1 < e && p[1] == '>') { p += 2; break; }
            fail(sc, sc->line, "malformed <row> element: '/' not followed by '>'", NULL);
            return NULL;
        }
        if (*p == '>') {  /* <row ...></row>: only whitespace may come between */
            p++;
            skip_ws(sc, &p);
            if (e - p >= 6 && !memcmp(p, "</row", 5)) {
                p += 5;
                skip_ws(sc, &p);
                if (p < e && *p == '>') { p++; break; }
            }
            fail(sc, row_line, "a <row> element that is not closed (expected '/>' or </row>)", NULL);
            return NULL;
        }
        if (p == before) { fail(sc, sc->line, "malformed <row> element: no space before an attribute", NULL); return NULL; }
        if (!is_name_start(*p)) {
            char ch[8];
            snprintf(ch, sizeof ch, (*p >= 0x20 && *p < 0x7F) ? "%c" : "\\x%02x", *p);
            fail(sc, sc->line, "malformed <row> element: unexpected '%s'", ch);
            return NULL;
        }
        const unsigned char *name = p;
        while (p < e && is_name_char(*p)) p++;
        size_t nlen = (size_t)(p - name);
        skip_ws(sc, &p);
        if (p >= e || *p != '=') { fail(sc, sc->line, "malformed <row> element: attribute without '='", NULL); return NULL; }
        p++;
        skip_ws(sc, &p);
        if (p >= e || (*p != '"' && *p != '\'')) { fail(sc, sc->line, "malformed <row> element: attribute value without quotes", NULL); return NULL; }
        unsigned char quote = *p++;
        const unsigned char *vend = memchr(p, quote, (size_t)(e - p));
        if (!vend) { fail(sc, sc->line, "unterminated attribute value", NULL); return NULL; }
        int k = find_attr(R->attrs, R->nattrs, name, nlen, hint);
        if (k >= 0) {
            int dup = k < 64 ? (int)((seen_lo >> k) & 1) : seen_hi[k & 255];
            if (dup) {
                char nm[64];
                snprintf(nm, sizeof nm, "%.*s", (int)(nlen < 60 ? nlen : 60), name);
                fail(sc, sc->line, "attribute %s appears twice in one <row>", nm);
                return NULL;
            }
            if (k < 64) seen_lo |= (uint64_t)1 << k; else seen_hi[k & 255] = 1;
            hint = k + 1;
            Col *c = &R->cols[k];
            if (!attr_value(sc, p, vend, &c->data)) return NULL;
        } else {
            R->scratch.n = 0;
            if (!attr_value(sc, p, vend, &R->scratch)) return NULL;
            Unknown *u = unknown_for(&R->unknown, row);
            if (!u || !buf_put(&u->kv, (const char *)name, nlen) || !buf_putc(&u->kv, 0)
                || !buf_put(&u->kv, R->scratch.p, R->scratch.n) || !buf_putc(&u->kv, 0)) {
                fail(sc, sc->line, "out of memory", NULL);
                return NULL;
            }
            u->count++;
        }
        p = vend + 1;
    }
    for (int k = 0; k < R->nattrs; k++) {
        int set = k < 64 ? (int)((seen_lo >> k) & 1) : seen_hi[k & 255];
        if (!col_end_row(&R->cols[k], row, set)) { fail(sc, sc->line, "out of memory", NULL); return NULL; }
    }
    R->rows++;
    return p;
}

/* Whole-chunk UTF-8 check of the bytes between rows is folded into the scan: only
 * whitespace, comments and rows may appear there. */
static int parse_chunk(Scan *sc, Rows *R) {
    const unsigned char *p = sc->s, *e = sc->e;
    for (;;) {
        skip_ws(sc, &p);
        if (p >= e) return 1;
        if (*p != '<') {
            return fail(sc, sc->line, "text outside a <row> element", NULL);
        }
        if (e - p >= 4 && !memcmp(p, "<!--", 4)) {
            const unsigned char *q = p + 4;
            for (;;) {
                const unsigned char *d = memchr(q, '-', (size_t)(e - q));
                if (!d || e - d < 3) return fail(sc, sc->line, "unterminated comment", NULL);
                if (d[1] == '-') {
                    if (d[2] != '>') return fail(sc, sc->line, "'--' inside a comment", NULL);
                    for (const unsigned char *x = p; x < d; x++) if (*x == '\n') sc->line++;
                    p = d + 3;
                    break;
                }
                q = d + 1;
            }
            continue;
        }
        if (e - p >= 5 && !memcmp(p, "<row", 4)
            && (p[4] == ' ' || p[4] == '\t' || p[4] == '\n' || p[4] == '\r' || p[4] == '/' || p[4] == '>')) {
            p = parse_row(sc, R, p);
            if (!p) return 0;
            continue;
        }
        if (e - p >= 2 && p[1] == '?') {  /* processing instruction: dropped, as lxml does */
            const unsigned char *q = p + 2;
            while (q + 1 < e && !(q[0] == '?' && q[1] == '>')) { if (*q == '\n') sc->line++; q++; }
            if (q + 1 >= e) return fail(sc, sc->line, "unterminated processing instruction", NULL);
            p = q + 2;
            continue;
        }
        const unsigned char *q = p + 1;
        if (q < e && *q == '/') q++;
        const unsigned char *nm = q;
        while (q < e && is_name_char(*q)) q++;
        char name[64];
        snprintf(name, sizeof name, "%.*s", (int)((q - nm) < 60 ? (q - nm) : 60), nm);
        if (p[1] == '/') return fail(sc, sc->line, "unexpected closing tag </%s>", name);
        if (!name[0]) return fail(sc, sc->line, "not well-formed: '<' that starts no element", NULL);
        return fail(sc, sc->line, "unexpected element <%s> (expected <row>)", name);
    }
}

/* ------------------------------------------------------------ Python glue */

/* The memory of one finished Buf, owned by a Python object and exposed read-only
 * through the buffer protocol: pa.py_buffer wraps it without a copy, and it is freed
 * when the last Arrow array using it goes. Copying each column into a bytes object
 * instead cost a memmove of every value and the page faults of fresh memory. */
typedef struct {
    PyObject_HEAD
    char *p;
    Py_ssize_t n;
} Owned;

static void owned_dealloc(Owned *o) {
    free(o->p);
    Py_TYPE(o)->tp_free((PyObject *)o);
}

static int owned_getbuffer(Owned *o, Py_buffer *view, int flags) {
    static char empty[1];
    return PyBuffer_FillInfo(view, (PyObject *)o, o->p ? o->p : empty, o->n, 1, flags);
}

static PyBufferProcs owned_as_buffer = {(getbufferproc)owned_getbuffer, NULL};

static PyTypeObject OwnedType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "ingest._sefast.Buffer",
    .tp_basicsize = sizeof(Owned),
    .tp_dealloc = (destructor)owned_dealloc,
    .tp_as_buffer = &owned_as_buffer,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Bytes made by parse_rows (read-only buffer protocol, no copy).",
};

/* A Python Buffer taking over b's memory (b is left empty). */
static PyObject *buf_to_py(Buf *b) {
    Owned *o = PyObject_New(Owned, &OwnedType);
    if (!o) return NULL;
    if (b->p && b->cap > b->n + (64 << 10)) {  /* give back the doubling's slack */
        char *q = realloc(b->p, b->n ? b->n : 1);
        if (q) b->p = q;
    }
    o->p = b->p;
    o->n = (Py_ssize_t)b->n;
    b->p = NULL;
    b->n = b->cap = 0;
    return (PyObject *)o;
}

static PyObject *col_to_py(Col *c) {
    return Py_BuildValue("(NNNL)", buf_to_py(&c->validity), buf_to_py(&c->offsets),
                         buf_to_py(&c->data), (long long)c->nulls);
}

static PyObject *py_parse_rows(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"data", "attrs", "body", "tags", "html_fallback", NULL};
    Py_buffer data;
    PyObject *attrs_obj, *fallback = Py_None;
    int body = -1, tags = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "y*O|iiO", kwlist, &data, &attrs_obj, &body, &tags, &fallback))
        return NULL;
    PyObject *result = NULL, *attrs_seq = NULL;
    Attr *attrs = NULL;
    Rows R;
    memset(&R, 0, sizeof R);
    Col body_text, tag_child;
    Buf tag_offsets = {0};
    Scratch w;
    memset(&w, 0, sizeof w);
    memset(&body_text, 0, sizeof body_text);
    memset(&tag_child, 0, sizeof tag_child);
    int have_body_text = 0, have_tags = 0;

    attrs_seq = PySequence_Fast(attrs_obj, "attrs must be a sequence of str");
    if (!attrs_seq) goto done;
    int nattrs = (int)PySequence_Fast_GET_SIZE(attrs_seq);
    if (nattrs > 256) { PyErr_SetString(PyExc_ValueError, "at most 256 attributes"); goto done; }
    if (body >= nattrs || tags >= nattrs) { PyErr_SetString(PyExc_ValueError, "body/tags index out of range"); goto done; }
    attrs = calloc((size_t)nattrs + 1, sizeof *attrs);
    R.cols = calloc((size_t)nattrs + 1, sizeof *R.cols);
    if (!attrs || !R.cols) { PyErr_NoMemory(); goto done; }
    for (int i = 0; i < nattrs; i++) {
        PyObject *s = PySequence_Fast_GET_ITEM(attrs_seq, i);
        attrs[i].name = s;
        attrs[i].utf8 = PyUnicode_AsUTF8AndSize(s, &attrs[i].len);
        if (!attrs[i].utf8) goto done;
    }
    R.attrs = attrs;
    R.nattrs = nattrs;
    size_t hint = (size_t)data.len / 512 + 16;
    for (int i = 0; i < nattrs; i++) col_init(&R.cols[i], hint);

    Scan sc = {(const unsigned char *)data.buf, (const unsigned char *)data.buf + data.len, 0, {NULL, {0}, 0}};
    int ok;
    Py_BEGIN_ALLOW_THREADS
    ok = parse_chunk(&sc, &R);
    Py_END_ALLOW_THREADS
    if (!ok) {
        PyObject *exc_args = Py_BuildValue("(sL)", sc.err.msg ? sc.err.msg : "parse error", (long long)sc.err.line);
        if (exc_args) { PyErr_SetObject(ParseError, exc_args); Py_DECREF(exc_args); }
        goto done;
    }
    for (int i = 0; i < nattrs; i++)
        if (R.cols[i].data.oom || R.cols[i].offsets.oom || R.cols[i].validity.oom) { PyErr_NoMemory(); goto done; }

    int64_t n = R.rows;
    if (body >= 0) {
        /* body_text of every row, from the decoded Body column */
        have_body_text = 1;
        col_init(&body_text, (size_t)n);
        Col *bc = &R.cols[body];
        const int64_t *off = (const int64_t *)bc->offsets.p;
        int failed = 0;
        Py_BEGIN_ALLOW_THREADS
        for (int64_t i = 0; i < n && !failed; i++) {
            int valid = (bc->validity.p[i >> 3] >> (i & 7)) & 1;
            if (valid) {
                size_t mark = body_text.data.n;
                const unsigned char *s = (const unsigned char *)bc->data.p + off[i];
                size_t len = (size_t)(off[i + 1] - off[i]);
                int r = html_to_text(&w, s, len, &body_text.data);
                if (r == H_OOM) { failed = 1; break; }
                if (r == H_FALLBACK) {
                    body_text.data.n = mark;
                    Py_BLOCK_THREADS
                    PyObject *arg = PyUnicode_DecodeUTF8((const char *)s, (Py_ssize_t)len, "strict");
                    PyObject *res = arg && fallback != Py_None ? PyObject_CallOneArg(fallback, arg) : NULL;
                    Py_XDECREF(arg);
                    Py_ssize_t rlen = 0;
                    const char *u = res && PyUnicode_Check(res) ? PyUnicode_AsUTF8AndSize(res, &rlen) : NULL;
                    if (!u) {
                        failed = 2;
                        if (!PyErr_Occurred()) PyErr_SetString(PyExc_RuntimeError, "html_fallback gave no str");
                    } else if (!buf_put(&body_text.data, u, (size_t)rlen)) failed = 1;
                    Py_XDECREF(res);
                    Py_UNBLOCK_THREADS
                    if (failed) break;
                }
            }
            if (!col_end_row(&body_text, i, valid)) { failed = 1; break; }
        }
        Py_END_ALLOW_THREADS
        if (failed == 1) { PyErr_NoMemory(); goto done; }
        if (failed == 2) goto done;
    }
    if (tags >= 0) {
        have_tags = 1;
        col_init(&tag_child, (size_t)n * 3);
        int32_t nchild = 0;
        buf_put(&tag_offsets, (const char *)&nchild, 4);
        Col *tc = &R.cols[tags];
        const int64_t *off = (const int64_t *)tc->offsets.p;
        for (int64_t i = 0; i < n; i++) {
            int valid = (tc->validity.p[i >> 3] >> (i & 7)) & 1;
            int okr = valid ? tags_row((const unsigned char *)tc->data.p + off[i], (size_t)(off[i + 1] - off[i]),
                                       &tag_child, &tag_offsets, &nchild)
                            : buf_put(&tag_offsets, (const char *)&nchild, 4);
            if (!okr) { PyErr_NoMemory(); goto done; }
        }
    }

    PyObject *cols = PyList_New(nattrs);
    if (!cols) goto done;
    for (int i = 0; i < nattrs; i++) {
        PyObject *t = col_to_py(&R.cols[i]);
        if (!t) { Py_DECREF(cols); goto done; }
        PyList_SET_ITEM(cols, i, t);
    }
    PyObject *unknown = PyList_New(0);
    for (size_t j = 0; unknown && j < R.unknown.n; j++) {
        Unknown *u = &R.unknown.items[j];
        PyObject *pairs = PyList_New(0);
        const char *q = u->kv.p;
        for (int k = 0; pairs && k < u->count; k++) {
            const char *v = q + strlen(q) + 1;
            PyObject *pair = Py_BuildValue("(s s)", q, v);
            if (!pair || PyList_Append(pairs, pair) < 0) { Py_XDECREF(pair); Py_CLEAR(pairs); break; }
            Py_DECREF(pair);
            q = v + strlen(v) + 1;
        }
        PyObject *item = pairs ? Py_BuildValue("(LN)", (long long)u->row, pairs) : NULL;
        if (!item || PyList_Append(unknown, item) < 0) { Py_XDECREF(item); Py_CLEAR(unknown); break; }
        Py_DECREF(item);
    }
    if (!unknown) { Py_DECREF(cols); goto done; }
    PyObject *bt = have_body_text ? col_to_py(&body_text) : (Py_INCREF(Py_None), Py_None);
    PyObject *tg = have_tags ? Py_BuildValue("(NN)", buf_to_py(&tag_offsets), col_to_py(&tag_child))
                             : (Py_INCREF(Py_None), Py_None);
    PyObject *lines = buf_to_py(&R.lines);
    if (!bt || !tg || !lines) {
        Py_DECREF(cols); Py_DECREF(unknown); Py_XDECREF(bt); Py_XDECREF(tg); Py_XDECREF(lines);
        goto done;
    }
    result = Py_BuildValue("{s:L,s:N,s:N,s:N,s:N,s:N}", "rows", (long long)n, "columns", cols,
                           "body_text", bt, "tags", tg, "lines", lines, "unknown", unknown);

done:
    PyBuffer_Release(&data);
    Py_XDECREF(attrs_seq);
    if (R.cols) for (int i = 0; i < R.nattrs; i++) col_free(&R.cols[i]);
    free(R.cols);
    free(attrs);
    buf_free(&R.lines);
    buf_free(&R.scratch);
    for (size_t j = 0; j < R.unknown.n; j++) buf_free(&R.unknown.items[j].kv);
    free(R.unknown.items);
    col_free(&body_text);
    col_free(&tag_child);
    buf_free(&tag_offsets);
    buf_free(&w.t1); buf_free(&w.t2); buf_free(&w.t3);
    return result;
}

/* html_to_text(body) for one str: the C rules, or None where Python must decide. */
static PyObject *py_html_to_text(PyObject *self, PyObject *arg) {
    Py_ssize_t n;
    const char *s = PyUnicode_AsUTF8AndSize(arg, &n);
    if (!s) return NULL;
    Scratch w;
    memset(&w, 0, sizeof w);
    Buf out = {0};
    int r = html_to_text(&w, (const unsigned char *)s, (size_t)n, &out);
    PyObject *res;
    if (r == H_OOM) res = PyErr_NoMemory();
    else if (r == H_FALLBACK) { Py_INCREF(Py_None); res = Py_None; }
    else res = PyUnicode_DecodeUTF8(out.p ? out.p : "", (Py_ssize_t)out.n, "strict");
    buf_free(&out);
    buf_free(&w.t1); buf_free(&w.t2); buf_free(&w.t3);
    return res;
}

/* Helpers of se_parse.RowSplitter, which scans every byte of a file once more
 * than the parser: bytes.count and bytes.find (two-way for a 7-byte needle) run
 * at a fraction of these loops' speed. Both release the GIL. */

static int span(Py_buffer *b, Py_ssize_t *start, Py_ssize_t *end) {
    if (*end > b->len) *end = b->len;
    if (*start < 0 || *end < 0) {
        PyErr_SetString(PyExc_ValueError, "negative start or end");
        return 0;
    }
    return 1;
}

/* count_newlines(data, start=0, end=len(data)) -> the number of b"\n" in data[start:end] */
static PyObject *py_count_newlines(PyObject *self, PyObject *args) {
    Py_buffer b;
    Py_ssize_t start = 0, end = PY_SSIZE_T_MAX;
    if (!PyArg_ParseTuple(args, "y*|nn", &b, &start, &end)) return NULL;
    if (!span(&b, &start, &end)) { PyBuffer_Release(&b); return NULL; }
    const unsigned char *p = (const unsigned char *)b.buf;
    size_t count = 0;
    Py_BEGIN_ALLOW_THREADS
    Py_ssize_t i = start;
    while (i < end) {  /* byte counters in blocks of 255: the loop vectorises */
        Py_ssize_t stop = end - i > 255 ? i + 255 : end;
        unsigned char c = 0;
        for (; i < stop; i++) c += p[i] == '\n';
        count += c;
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&b);
    return PyLong_FromSize_t(count);
}

/* find(data, needle, start=0) -> the first index >= start of needle in data, or -1:
 * memchr for its first byte (rare in a dump: `<` opens each row), then a compare. */
static PyObject *py_find(PyObject *self, PyObject *args) {
    Py_buffer b, nd;
    Py_ssize_t start = 0, end = PY_SSIZE_T_MAX, found = -1;
    if (!PyArg_ParseTuple(args, "y*y*|n", &b, &nd, &start)) return NULL;
    if (!span(&b, &start, &end) || nd.len == 0) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "empty needle");
        PyBuffer_Release(&b); PyBuffer_Release(&nd);
        return NULL;
    }
    const char *p = (const char *)b.buf, *n = (const char *)nd.buf;
    Py_BEGIN_ALLOW_THREADS
    Py_ssize_t i = start;
    while (end - i >= nd.len) {
        const char *q = memchr(p + i, n[0], (size_t)(end - i - nd.len + 1));
        if (!q) break;
        i = q - p;
        if (memcmp(q, n, (size_t)nd.len) == 0) { found = i; break; }
        i++;
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&b);
    PyBuffer_Release(&nd);
    return PyLong_FromSsize_t(found);
}

static PyMethodDef methods[] = {
    {"parse_rows", (PyCFunction)(void (*)(void))py_parse_rows, METH_VARARGS | METH_KEYWORDS,
     "parse_rows(data, attrs, body=-1, tags=-1, html_fallback=None) -> dict of Arrow buffers"},
    {"count_newlines", py_count_newlines, METH_VARARGS,
     "count_newlines(data, start=0, end=len(data)) -> data.count(b'\\n', start, end)"},
    {"find", py_find, METH_VARARGS, "find(data, needle, start=0) -> data.find(needle, start)"},
    {"html_to_text", py_html_to_text, METH_O,
     "html_to_text(body) -> str, or None where the Python rules must decide"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_sefast", NULL, -1, methods};

PyMODINIT_FUNC PyInit__sefast(void) {
    if (PyType_Ready(&OwnedType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    ParseError = PyErr_NewException("ingest._sefast.ParseError", PyExc_ValueError, NULL);
    if (!ParseError || PyModule_AddObject(m, "ParseError", ParseError) < 0) {
        Py_XDECREF(ParseError);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(ParseError);
    return m;
}
