/* One compiled step of a recurrent language model: every layer, then the output layer, in one call.

Why it exists: the NumPy engine (cpu_engine.py) crosses from Python into NumPy a dozen times per
character, and each crossing costs more than the arithmetic it starts. Here one call runs the whole
step on the engine's threads, with the weights kept small enough to stay in the cores' caches.

The Python side (fast_engine.py) lays the weights out and owns them; this file only reads them:
  * each layer is one matrix of S "slots" per hidden unit, rows unit-major (row = unit * S + slot),
    columns [x ; h_previous] padded to a multiple of 64 (int12: 128). A thread owns a block of units, so it
    computes their slots and updates their state with no barrier in between; the layers are
    separated by one barrier each. LSTM: S = 4 (i, f, g, o). GRU: S = 4 (r, z, and n's input and
    recurrent terms apart, since the reset gate multiplies only the latter). tanh-RNN: S = 1.
  * the first layer's input term (its weights times the token's input vector, biases included) is
    a (V, S*H) table, so its matrix has the h columns only;
  * each layer's weights are int8 (one scale per row and one per column, the column scale folded
    into the input, which is then rounded to int8 per stream), int12 (the same scales, 2047 levels
    instead of 127, stored as a high byte and a low nibble, against inputs rounded to int16: for
    checkpoints where int8 strays, at 3/4 of fp16's bytes) or fp16; the output layer stays fp32.
Kernels: AVX-512, AVX2 (x86-64, chosen at run time) and portable C for every other CPU (ARM
included), the same arithmetic in each; tests compare all of them with the model's own step.
Dimension legend: B = streams, V = vocabulary, H = hidden units, S = slots per unit, L = layers. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#ifdef _OPENMP
#include <omp.h>
#include <pthread.h>
#endif
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define HAVE_X86 1
#define TARGET(isa) __attribute__((target(isa)))
#else
#define HAVE_X86 0
#define TARGET(isa)
#endif
#define INLINE static inline __attribute__((always_inline))

enum { CELL_LSTM, CELL_GRU, CELL_RNN };
enum { WEIGHTS_INT8, WEIGHTS_FP16, WEIGHTS_INT12 };
#define QUANTIZED(weights) ((weights) != WEIGHTS_FP16)
enum { ISA_GENERIC, ISA_AVX2, ISA_AVX512, ISA_AVX512_VNNI, ISA_AMX };
#define ISAS 5
static const char *ISA_NAMES[ISAS] = {"generic", "avx2", "avx512", "avx512vnni", "amx"};
/* AMX tiles (Sapphire Rapids and later): 16 streams x 16 rows x 64 columns per instruction. They
   pay off only for many streams; below this many, the "amx" kernel set steps with the VNNI kernels. */
#define AMX_STREAMS 8
/* From this many streams on, AVX-512 VNNI without AMX multiplies int8/int12 layers from the tiles' layout
   too (rows_packed_vnni): below it, the row-by-row kernels (tile_i8_vnni_n) read fewer bytes. */
#define PACKED_STREAMS 8
#if HAVE_X86 && defined(__linux__) && (__GNUC__ >= 11 || (defined(__clang__) && __clang_major__ >= 12))
#define HAVE_AMX 1
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#else
#define HAVE_AMX 0
#endif
#define MAX_LAYERS 16
#define COLUMN_BLOCK 64
#define PROFILE_PARTS 4 /* input rounding, products, gate math, output layer (seconds, summed) */

typedef struct {
    int cell, isa, layers, hidden, vocab, slots, rows, head_cols;
    int weights[MAX_LAYERS];           /* each layer's: WEIGHTS_INT8 or WEIGHTS_FP16 */
    int cols[MAX_LAYERS];              /* padded columns of each layer's matrix */
    const void *w[MAX_LAYERS];         /* (rows, cols[k]) int8 (int12: its high 8 bits) or fp16 */
    const uint8_t *nibbles[MAX_LAYERS];/* int12: (rows, cols[k] / 2), the low 4 bits (see tile_i12_generic) */
    const float *row_scale[MAX_LAYERS];/* int8, int12: (rows,) */
    const float *col_scale[MAX_LAYERS];/* int8, int12: (cols[k],), 0 on padding */
    int32_t *row_sum[MAX_LAYERS];      /* int8, int12: each row's sum of (high) weights (for VNNI's unsigned inputs) */
    const float *bias[MAX_LAYERS];     /* (S, H), slot-major; unused for layer 0 */
    /* AMX: each int8/int12 layer's weights (int12: its high bytes, then its low bits as bytes) again, in
       the tiles' layout (see amx_layout), made at the first step of AMX_STREAMS streams or more */
    uint8_t *amx_w[MAX_LAYERS], *amx_lo[MAX_LAYERS];
    int32_t *row_sum_lo[MAX_LAYERS];   /* int12: each row's sum of low bits */
    int amx_ready;
    const float *table;                /* (V, S, H): the first layer's input term per token */
    const float *head_w, *head_b;      /* (ceil4(V), head_cols) fp32, (V,) */
    Py_buffer views[5 * MAX_LAYERS + 4];
    int nviews;
    double profile[PROFILE_PARTS];
    int profiling;
} Engine;

/* --- gate math: exp with a degree-6 polynomial, vectorizable, relative error ~1e-7 ------------- */

INLINE float exp_approx(float x) {
    x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    float t = x * 1.44269504f;
    float n = (t + 12582912.0f) - 12582912.0f; /* round to nearest (|t| < 2^22) */
    float r = x - n * 0.693145752f - n * 1.42860677e-6f;
    float p = 1.0f + r * (1.0f + r * (0.5f + r * (0.166666672f + r * (0.0416666679f + r * (0.00833333377f +
                                                                                            r * 0.00138888892f)))));
    union { int32_t i; float f; } scale;
    scale.i = ((int32_t)n + 127) << 23;
    return p * scale.f;
}
INLINE float sigmoid_approx(float x) { return 1.0f / (1.0f + exp_approx(-x)); }
INLINE float tanh_approx(float x) { return 1.0f - 2.0f / (1.0f + exp_approx(2.0f * x)); }

/* pre: (S, H) of one stream; units [u0, u1) of its state updated from h/c (previous) into h2/c2 */
INLINE void gates_body(int cell, int hidden, const float *restrict pre, const float *restrict h,
                       const float *restrict c, float *restrict h2, float *restrict c2,
                       int u0, int u1) {
    const float *s0 = pre, *s1 = pre + hidden, *s2 = pre + 2 * hidden, *s3 = pre + 3 * hidden;
    if (cell == CELL_LSTM) {
        for (int j = u0; j < u1; j++)
            c2[j] = sigmoid_approx(s1[j]) * c[j] + sigmoid_approx(s0[j]) * tanh_approx(s2[j]);
        for (int j = u0; j < u1; j++) h2[j] = sigmoid_approx(s3[j]) * tanh_approx(c2[j]);
    } else if (cell == CELL_GRU) {
        for (int j = u0; j < u1; j++) {
            float r = sigmoid_approx(s0[j]), z = sigmoid_approx(s1[j]);
            float n = tanh_approx(s2[j] + r * s3[j]);
            h2[j] = n + z * (h[j] - n);
        }
    } else {
        for (int j = u0; j < u1; j++) h2[j] = tanh_approx(s0[j]);
    }
}

/* --- tile kernels: out[s * 4 + r] = w[r] . x[s] for 4 rows and ns <= 4 streams ----------------- */

INLINE void tile_i8_generic(const int8_t *w, long cols, const int8_t *x, long xs, int ns, const int32_t *row_sum,
                            float *out) {
    for (int s = 0; s < ns; s++)
        for (int r = 0; r < 4; r++) {
            int32_t acc = 0; /* exact: |sum| <= cols * 127 * 127 */
            for (long c = 0; c < cols; c++) acc += (int16_t)w[r * cols + c] * (int16_t)x[s * xs + c];
            out[s * 4 + r] = (float)acc;
        }
}
/* int12 weights q = 16 * hi + lo (hi: int8, lo: 0..15) against int16 inputs v = 256 * vh + vl (vh: int8,
   vl: 0..255), the input's two bytes stored one after the other: [vh (cols) ; vl (cols)]. Each 128
   columns' low nibbles are 64 bytes, byte j holding column j's (low half) and column j + 64's (high
   half). The sum is exact (int64), so every kernel set rounds the same integer to float. */
INLINE int nibble(const uint8_t *nib, long c) {
    uint8_t byte = nib[(c >> 7) * 64 + (c & 63)];
    return (c & 64) ? byte >> 4 : byte & 15;
}
INLINE void tile_i12_generic(const int8_t *w, const uint8_t *nib, long cols, const int8_t *x, long xs, int ns,
                             float *out) {
    for (int s = 0; s < ns; s++)
        for (int r = 0; r < 4; r++) {
            const int8_t *wr = w + r * cols, *vh = x + s * xs;
            const uint8_t *nr = nib + r * (cols / 2), *vl = (const uint8_t *)vh + cols;
            /* the four byte products' sums, as the VNNI kernel takes them (each exact in int32) */
            int32_t hh = 0, lh = 0, hl = 0, ll = 0;
            for (long block = 0; block < cols; block += 128)
                for (int half = 0; half < 2; half++) { /* (two loops without a branch: they vectorize) */
                    long c0 = block + 64 * half;
                    for (int j = 0; j < 64; j++) {
                        int32_t hi = wr[c0 + j], lo = half ? nr[block / 2 + j] >> 4 : nr[block / 2 + j] & 15;
                        hh += hi * vh[c0 + j], lh += lo * vh[c0 + j], hl += hi * vl[c0 + j], ll += lo * vl[c0 + j];
                    }
                }
            out[s * 4 + r] = (float)(4096 * (int64_t)hh + 256 * (int64_t)lh + 16 * (int64_t)hl + (int64_t)ll);
        }
}
INLINE float half_to_float(uint16_t h) {
#if defined(__aarch64__)
    __fp16 half;
    memcpy(&half, &h, sizeof(half));
    return (float)half; /* one instruction on ARM */
#else
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exponent = (h >> 10) & 0x1f, mantissa = h & 0x3ff;
    union { uint32_t u; float f; } v;
    if (exponent == 0) { /* zero or subnormal */
        v.f = (float)mantissa * 5.96046448e-8f;
        v.u |= sign;
        return v.f;
    }
    v.u = sign | ((exponent == 31 ? 255 : exponent + 112) << 23) | (mantissa << 13);
    return v.f;
#endif
}
INLINE void tile_f16_generic(const uint16_t *w, long cols, const float *x, long xs, int ns, float *out) {
    for (int s = 0; s < ns; s++)
        for (int r = 0; r < 4; r++) {
            float acc = 0.0f;
            for (long c = 0; c < cols; c++) acc += half_to_float(w[r * cols + c]) * x[s * xs + c];
            out[s * 4 + r] = acc;
        }
}
INLINE void tile_f32_generic(const float *w, long cols, const float *x, long xs, int ns, float *out) {
    for (int s = 0; s < ns; s++)
        for (int r = 0; r < 4; r++) {
            float acc = 0.0f;
            for (long c = 0; c < cols; c++) acc += w[r * cols + c] * x[s * xs + c];
            out[s * 4 + r] = acc;
        }
}

#if HAVE_X86
#define AVX512 "avx512f,avx512bw,avx512dq,avx512vl,fma,avx2,f16c"
#define AVX2 "avx2,fma,f16c"
#define VNNI AVX512 ",avx512vnni"

/* NS streams at a time (a constant after inlining): each weight vector loaded once serves all */
#define TILE_LOOP(NS, LOAD_W, LOAD_X, STEP, ACC_T, ZERO, MAC, REDUCE)                                   \
    ACC_T acc[4][4];                                                                                         \
    for (int r = 0; r < 4; r++)                                                                              \
        for (int s = 0; s < NS; s++) acc[r][s] = ZERO;                                                       \
    for (long c = 0; c < cols; c += STEP) {                                                                  \
        ACC_T wv[4], xv[4];                                                                                  \
        for (int r = 0; r < 4; r++) wv[r] = LOAD_W(r);                                                       \
        for (int s = 0; s < NS; s++) xv[s] = LOAD_X(s);                                                      \
        for (int r = 0; r < 4; r++)                                                                          \
            for (int s = 0; s < NS; s++) acc[r][s] = MAC(acc[r][s], wv[r], xv[s]);                           \
    }                                                                                                        \
    for (int s = 0; s < NS; s++)                                                                             \
        for (int r = 0; r < 4; r++) out[s * 4 + r] = REDUCE(acc[r][s]);

TARGET(AVX512) INLINE __m512i madd16_512(__m512i acc, __m512i w, __m512i x) {
    return _mm512_add_epi32(acc, _mm512_madd_epi16(w, x));
}
TARGET(AVX512) INLINE __m512 fma_512(__m512 acc, __m512 w, __m512 x) { return _mm512_fmadd_ps(w, x, acc); }
/* int8 sums are reduced as integers, so every kernel set rounds the same exact integer to float */
TARGET(AVX512) INLINE float sum_i32_512(__m512i acc) { return (float)_mm512_reduce_add_epi32(acc); }
TARGET(AVX512) INLINE void tile_i8_512_n(const int8_t *w, long cols, const int8_t *x, long xs, const int NS,
                                         float *out) {
#define LW(r) _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(w + (r) * cols + c)))
#define LX(s) _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(x + (s) * xs + c)))
    TILE_LOOP(NS, LW, LX, 32, __m512i, _mm512_setzero_si512(), madd16_512, sum_i32_512)
#undef LW
#undef LX
}
/* VNNI multiplies unsigned by signed bytes, 64 products per instruction: the inputs are shifted to
   x + 128 on load and 128 * (the row's sum of weights) is taken back after, in exact integers. */
TARGET(VNNI) INLINE void tile_i8_vnni_n(const int8_t *w, long cols, const int8_t *x, long xs, const int NS,
                                       const int32_t *row_sum, float *out) {
    const __m512i shift = _mm512_set1_epi8((char)0x80);
    __m512i acc[4][4];
    for (int r = 0; r < 4; r++)
        for (int s = 0; s < NS; s++) acc[r][s] = _mm512_setzero_si512();
    for (long c = 0; c < cols; c += 64) {
        __m512i wv[4], xv[4];
        for (int r = 0; r < 4; r++) wv[r] = _mm512_loadu_si512((const void *)(w + r * cols + c));
        for (int s = 0; s < NS; s++) xv[s] = _mm512_xor_si512(_mm512_loadu_si512((const void *)(x + s * xs + c)), shift);
        for (int r = 0; r < 4; r++)
            for (int s = 0; s < NS; s++) acc[r][s] = _mm512_dpbusd_epi32(acc[r][s], xv[s], wv[r]);
    }
    for (int s = 0; s < NS; s++)
        for (int r = 0; r < 4; r++) out[s * 4 + r] = (float)(_mm512_reduce_add_epi32(acc[r][s]) - 128 * row_sum[r]);
}
/* int12 on VNNI: the product of two-part weights and two-part inputs is four byte products,
   4096 (hi . vh) + 256 (lo . vh) + 16 (hi . vl) + (lo . vl), each an exact int32 sum (vh shifted to
   unsigned as in tile_i8_vnni_n; lo and vl are unsigned already), combined in int64. One stream at a
   time: its 16 accumulators and the 4 rows' weights fill the 32 registers. */
TARGET(VNNI) INLINE void tile_i12_vnni_1(const int8_t *w, const uint8_t *nib, long cols, const int8_t *x,
                                         const int32_t *row_sum, float *out) {
    const __m512i shift = _mm512_set1_epi8((char)0x80), low4 = _mm512_set1_epi8(0x0f);
    __m512i a[4], b[4], c_[4], d[4];
    for (int r = 0; r < 4; r++) a[r] = b[r] = c_[r] = d[r] = _mm512_setzero_si512();
    for (long c = 0; c < cols; c += 128) {
        __m512i vh0 = _mm512_loadu_si512((const void *)(x + c)), vh1 = _mm512_loadu_si512((const void *)(x + c + 64));
        __m512i vu0 = _mm512_xor_si512(vh0, shift), vu1 = _mm512_xor_si512(vh1, shift);
        __m512i vl0 = _mm512_loadu_si512((const void *)(x + cols + c));
        __m512i vl1 = _mm512_loadu_si512((const void *)(x + cols + c + 64));
        for (int r = 0; r < 4; r++) {
            __m512i h0 = _mm512_loadu_si512((const void *)(w + r * cols + c));
            __m512i h1 = _mm512_loadu_si512((const void *)(w + r * cols + c + 64));
            __m512i n = _mm512_loadu_si512((const void *)(nib + r * (cols / 2) + c / 2));
            __m512i l0 = _mm512_and_si512(n, low4), l1 = _mm512_and_si512(_mm512_srli_epi16(n, 4), low4);
            a[r] = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(a[r], vu0, h0), vu1, h1);
            b[r] = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(b[r], l0, vh0), l1, vh1);
            c_[r] = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(c_[r], vl0, h0), vl1, h1);
            d[r] = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(d[r], vl0, l0), vl1, l1);
        }
    }
    for (int r = 0; r < 4; r++) {
        int64_t hi_vh = (int64_t)_mm512_reduce_add_epi32(a[r]) - 128 * (int64_t)row_sum[r];
        out[r] = (float)(4096 * hi_vh + 256 * (int64_t)_mm512_reduce_add_epi32(b[r]) +
                         16 * (int64_t)_mm512_reduce_add_epi32(c_[r]) + (int64_t)_mm512_reduce_add_epi32(d[r]));
    }
}
TARGET(AVX512) INLINE void tile_f16_512_n(const uint16_t *w, long cols, const float *x, long xs, const int NS,
                                          float *out) {
#define LW(r) _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(w + (r) * cols + c)))
#define LX(s) _mm512_loadu_ps(x + (s) * xs + c)
    TILE_LOOP(NS, LW, LX, 16, __m512, _mm512_setzero_ps(), fma_512, _mm512_reduce_add_ps)
#undef LW
#undef LX
}
TARGET(AVX512) INLINE void tile_f32_512_n(const float *w, long cols, const float *x, long xs, const int NS,
                                          float *out) {
#define LW(r) _mm512_loadu_ps(w + (r) * cols + c)
#define LX(s) _mm512_loadu_ps(x + (s) * xs + c)
    TILE_LOOP(NS, LW, LX, 16, __m512, _mm512_setzero_ps(), fma_512, _mm512_reduce_add_ps)
#undef LW
#undef LX
}

TARGET(AVX2) INLINE __m256i madd16_256(__m256i acc, __m256i w, __m256i x) {
    return _mm256_add_epi32(acc, _mm256_madd_epi16(w, x));
}
TARGET(AVX2) INLINE __m256 fma_256(__m256 acc, __m256 w, __m256 x) { return _mm256_fmadd_ps(w, x, acc); }
TARGET(AVX2) INLINE float sum_f32_256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}
TARGET(AVX2) INLINE float sum_i32_256(__m256i acc) {
    __m128i v = _mm_add_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256(acc, 1));
    v = _mm_add_epi32(v, _mm_shuffle_epi32(v, _MM_SHUFFLE(1, 0, 3, 2)));
    v = _mm_add_epi32(v, _mm_shuffle_epi32(v, _MM_SHUFFLE(2, 3, 0, 1)));
    return (float)_mm_cvtsi128_si32(v);
}
/* AVX2 has 16 registers: tiles of 4 rows by at most 2 streams */
TARGET(AVX2) INLINE void tile_i8_256_n(const int8_t *w, long cols, const int8_t *x, long xs, const int NS,
                                       float *out) {
#define LW(r) _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(w + (r) * cols + c)))
#define LX(s) _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(x + (s) * xs + c)))
    TILE_LOOP(NS, LW, LX, 16, __m256i, _mm256_setzero_si256(), madd16_256, sum_i32_256)
#undef LW
#undef LX
}
TARGET(AVX2) INLINE void tile_f16_256_n(const uint16_t *w, long cols, const float *x, long xs, const int NS,
                                        float *out) {
#define LW(r) _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(w + (r) * cols + c)))
#define LX(s) _mm256_loadu_ps(x + (s) * xs + c)
    TILE_LOOP(NS, LW, LX, 8, __m256, _mm256_setzero_ps(), fma_256, sum_f32_256)
#undef LW
#undef LX
}
TARGET(AVX2) INLINE void tile_f32_256_n(const float *w, long cols, const float *x, long xs, const int NS,
                                        float *out) {
#define LW(r) _mm256_loadu_ps(w + (r) * cols + c)
#define LX(s) _mm256_loadu_ps(x + (s) * xs + c)
    TILE_LOOP(NS, LW, LX, 8, __m256, _mm256_setzero_ps(), fma_256, sum_f32_256)
#undef LW
#undef LX
}
#endif

/* --- one layer's (or the output layer's) rows for a block of streams ---------------------------- */

typedef struct {
    const Engine *e;
    int k;                 /* layer, or -1 for the output layer */
    const void *w;         /* rows of this product */
    long cols;
    const void *x;         /* (B, xs) inputs: int8 for int8 weights, else fp32 */
    long xs;
    const float *x_scale;  /* int8: per stream */
    const int64_t *tokens;
    float *pre;            /* layers: (B, S, H); output layer: logits (B, V) */
    int batch;
} Product;

/* the value of row `row` for stream b, given its raw dot product */
INLINE void store(const Product *p, int b, int row, float dot) {
    const Engine *e = p->e;
    if (p->k < 0) {
        if (row < e->vocab) p->pre[(long)b * e->vocab + row] = dot + e->head_b[row];
        return;
    }
    int four = e->slots == 4; /* (S is 4 or 1: shifts, not a division per value) */
    int unit = four ? row >> 2 : row, slot = four ? row & 3 : 0;
    long at = (long)slot * e->hidden + unit;
    if (QUANTIZED(e->weights[p->k])) dot *= e->row_scale[p->k][row] * p->x_scale[b];
    float add = p->k == 0 ? e->table[p->tokens[b] * (long)e->rows + at] : e->bias[p->k][at];
    p->pre[(long)b * e->rows + at] = dot + add;
}

/* store() for a tile of rows [block, block + nrows) and streams [b, b + ns) of one layer, its per-row
   work (where the row goes, its scale) done once per tile: the same arithmetic as store() */
INLINE void store_tile(const Product *p, int b, int ns, int block, int nrows, float dots[][16]) {
    const Engine *e = p->e;
    long at[16];
    float row_scale[16];
    int quantized = QUANTIZED(e->weights[p->k]);
    for (int n = 0; n < nrows; n++) {
        int row = block + n, four = e->slots == 4;
        at[n] = (long)(four ? row & 3 : 0) * e->hidden + (four ? row >> 2 : row);
        row_scale[n] = quantized ? e->row_scale[p->k][row] : 1.0f;
    }
    for (int s = 0; s < ns; s++) {
        float x_scale = quantized ? p->x_scale[b + s] : 1.0f, *pre = p->pre + (long)(b + s) * e->rows;
        const float *add = p->k == 0 ? e->table + p->tokens[b + s] * (long)e->rows : e->bias[p->k];
        if (quantized)
            for (int n = 0; n < nrows; n++) {
                float dot = dots[s][n] * (row_scale[n] * x_scale); /* (two statements: never fused into an FMA) */
                pre[at[n]] = dot + add[at[n]];
            }
        else
            for (int n = 0; n < nrows; n++) pre[at[n]] = dots[s][n] + add[at[n]];
    }
}

/* Rows in blocks of ROW_BLOCK, each block's weights (16 KB of int8 at 1024 columns) kept in L1 while
   every group of streams passes over them: many streams then read their inputs from L2 a quarter
   as often as they would row tile by row tile. */
#define ROW_BLOCK 16
#define ROWS_BODY(TILE_I8, TILE_I12, TILE_F16, TILE_F32, MAX_NS)                                          \
    float out[16];                                                                                          \
    const Engine *e = p->e;                                                                                 \
    for (int block = r0; block < r1; block += ROW_BLOCK)                                                    \
        for (int b = 0; b < p->batch; b += MAX_NS)                                                          \
            for (int row = block; row < r1 && row < block + ROW_BLOCK; row += 4) {                          \
            int ns = p->batch - b < MAX_NS ? p->batch - b : MAX_NS;                                         \
            if (p->k < 0)                                                                                   \
                TILE_F32((const float *)p->w + (long)row * p->cols, p->cols, (const float *)p->x + b * p->xs, \
                         p->xs, ns, out);                                                                   \
            else if (e->weights[p->k] == WEIGHTS_INT8)                                                      \
                TILE_I8((const int8_t *)p->w + (long)row * p->cols, p->cols,                                \
                        (const int8_t *)p->x + b * p->xs, p->xs, ns, e->row_sum[p->k] + row, out);          \
            else if (e->weights[p->k] == WEIGHTS_INT12)                                                     \
                TILE_I12((const int8_t *)p->w + (long)row * p->cols, e->nibbles[p->k] + (long)row * (p->cols / 2), \
                         p->cols, (const int8_t *)p->x + b * p->xs, p->xs, ns, e->row_sum[p->k] + row, out);  \
            else                                                                                            \
                TILE_F16((const uint16_t *)p->w + (long)row * p->cols, p->cols,                             \
                         (const float *)p->x + b * p->xs, p->xs, ns, out);                                  \
            if (p->k < 0) {                                                                                 \
                for (int s = 0; s < ns; s++)                                                                \
                    for (int r = 0; r < 4 && row + r < r1; r++) store(p, b + s, row + r, out[s * 4 + r]);   \
                continue;                                                                                   \
            }                                                                                               \
            float dots[4][16];                                                                              \
            for (int s = 0; s < ns; s++)                                                                    \
                for (int r = 0; r < 4; r++) dots[s][r] = out[s * 4 + r];                                    \
            store_tile(p, b, ns, row, r1 - row < 4 ? r1 - row : 4, dots);                                   \
        }

INLINE void tile_i12_portable(const int8_t *w, const uint8_t *nib, long cols, const int8_t *x, long xs, int ns,
                              const int32_t *row_sum, float *out) {
    (void)row_sum;
    tile_i12_generic(w, nib, cols, x, xs, ns, out);
}
static void rows_generic(const Product *p, int r0, int r1) {
    ROWS_BODY(tile_i8_generic, tile_i12_portable, tile_f16_generic, tile_f32_generic, 4)
}
static void gates_generic(int cell, int hidden, const float *pre, const float *h, const float *c, float *h2,
                          float *c2, int u0, int u1) {
    gates_body(cell, hidden, pre, h, c, h2, c2, u0, u1);
}

#if HAVE_X86
#define DISPATCH_NS(NAME, MAX)                                                                               \
    switch (ns) {                                                                                            \
    case 1: NAME(w, cols, x, xs, 1, out); break;                                                             \
    case 2: NAME(w, cols, x, xs, 2, out); break;                                                             \
    case 3: if (MAX > 2) { NAME(w, cols, x, xs, 3, out); } break;                                            \
    default: if (MAX > 2) { NAME(w, cols, x, xs, 4, out); } break;                                           \
    }
TARGET(AVX512) INLINE void tile_i8_512(const int8_t *w, long cols, const int8_t *x, long xs, int ns,
                                       const int32_t *row_sum, float *out) {
    DISPATCH_NS(tile_i8_512_n, 4)
}
TARGET(AVX512) INLINE void tile_f16_512(const uint16_t *w, long cols, const float *x, long xs, int ns, float *out) {
    DISPATCH_NS(tile_f16_512_n, 4)
}
TARGET(AVX512) INLINE void tile_f32_512(const float *w, long cols, const float *x, long xs, int ns, float *out) {
    DISPATCH_NS(tile_f32_512_n, 4)
}
TARGET(VNNI) INLINE void tile_i8_vnni(const int8_t *w, long cols, const int8_t *x, long xs, int ns,
                                      const int32_t *row_sum, float *out) {
    switch (ns) {
    case 1: tile_i8_vnni_n(w, cols, x, xs, 1, row_sum, out); break;
    case 2: tile_i8_vnni_n(w, cols, x, xs, 2, row_sum, out); break;
    case 3: tile_i8_vnni_n(w, cols, x, xs, 3, row_sum, out); break;
    default: tile_i8_vnni_n(w, cols, x, xs, 4, row_sum, out); break;
    }
}
TARGET(VNNI) INLINE void tile_i12_vnni(const int8_t *w, const uint8_t *nib, long cols, const int8_t *x, long xs,
                                       int ns, const int32_t *row_sum, float *out) {
    float one[4];
    for (int s = 0; s < ns; s++) {
        tile_i12_vnni_1(w, nib, cols, x + s * xs, row_sum, one);
        for (int r = 0; r < 4; r++) out[s * 4 + r] = one[r];
    }
}
TARGET(AVX2) INLINE void tile_i8_256(const int8_t *w, long cols, const int8_t *x, long xs, int ns,
                                     const int32_t *row_sum, float *out) {
    DISPATCH_NS(tile_i8_256_n, 2)
}
TARGET(AVX2) INLINE void tile_f16_256(const uint16_t *w, long cols, const float *x, long xs, int ns, float *out) {
    DISPATCH_NS(tile_f16_256_n, 2)
}
TARGET(AVX2) INLINE void tile_f32_256(const float *w, long cols, const float *x, long xs, int ns, float *out) {
    DISPATCH_NS(tile_f32_256_n, 2)
}
TARGET(AVX512) static void rows_avx512(const Product *p, int r0, int r1) {
    ROWS_BODY(tile_i8_512, tile_i12_portable, tile_f16_512, tile_f32_512, 4)
}
TARGET(VNNI) static void rows_vnni(const Product *p, int r0, int r1) {
    ROWS_BODY(tile_i8_vnni, tile_i12_vnni, tile_f16_512, tile_f32_512, 4)
}
TARGET(AVX2) static void rows_avx2(const Product *p, int r0, int r1) {
    ROWS_BODY(tile_i8_256, tile_i12_portable, tile_f16_256, tile_f32_256, 2)
}
TARGET(AVX512) static void gates_avx512(int cell, int hidden, const float *pre, const float *h, const float *c,
                                        float *h2, float *c2, int u0, int u1) {
    gates_body(cell, hidden, pre, h, c, h2, c2, u0, u1);
}
TARGET(AVX2) static void gates_avx2(int cell, int hidden, const float *pre, const float *h, const float *c,
                                    float *h2, float *c2, int u0, int u1) {
    gates_body(cell, hidden, pre, h, c, h2, c2, u0, u1);
}
#endif

#if HAVE_AMX
#define AMX VNNI ",amx-tile,amx-int8"
typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} TileConfig;

/* Every thread that uses the tiles configures them (8 tiles of 16 rows x 64 bytes) and releases them. */
TARGET(AMX) static void amx_begin(void) {
    TileConfig config;
    memset(&config, 0, sizeof(config));
    config.palette = 1;
    for (int t = 0; t < 8; t++) config.colsb[t] = 64, config.rows[t] = 16;
    /* (GCC 12 does not see ldtilecfg read the struct and drops the stores above without this) */
    __asm__ __volatile__("" : : "r"(&config) : "memory");
    _tile_loadconfig(&config);
}
TARGET(AMX) static void amx_end(void) { _tile_release(); }

/* Rows [r0, r1) (r0 a multiple of 16) of an int8 or int12 layer for every stream, 16 streams by 16 rows
   a tile, the same exact integers as tile_i8_vnni_n and tile_i12_vnni_1. int8: tile 6 holds 16 rows x 64
   columns of weights (in the tiles' layout), loaded once for up to 4 tiles of 16 streams' inputs (tile
   4, shifted to unsigned: v + 128) whose products gather in tiles 0-3. int12: one tile of streams at a
   time, its inputs' high bytes (+ 128) in tile 4 and low bytes in tile 5, the weights' high bytes in
   tile 6 and low bits in tile 7, the four products in tiles 0-3. */
TARGET(AMX) static void rows_amx(const Product *p, int r0, int r1) {
    const Engine *e = p->e;
    int k = p->k, int12 = e->weights[k] == WEIGHTS_INT12, group = int12 ? 16 : 64;
    long cols = p->cols, blocks = cols / 64, xs = p->xs;
    int32_t c[4][16][16];
    for (int block = r0; block < r1; block += 16) {
        const uint8_t *w = e->amx_w[k] + (long)(block / 16) * blocks * 1024;
        const uint8_t *lo = int12 ? e->amx_lo[k] + (long)(block / 16) * blocks * 1024 : NULL;
        for (int b = 0; b < p->batch; b += group) {
            const uint8_t *x = (const uint8_t *)p->x + (long)b * xs;
            int tiles = int12 ? 4 : (p->batch - b + 15) / 16 > 4 ? 4 : (p->batch - b + 15) / 16;
            _tile_zero(0);
            if (tiles > 1) _tile_zero(1);
            if (tiles > 2) _tile_zero(2);
            if (tiles > 3) _tile_zero(3);
            for (long kb = 0; kb < blocks; kb++) {
                _tile_loadd(6, w + kb * 1024, 64);
                _tile_loadd(4, x + kb * 64, xs);
                _tile_dpbusd(0, 4, 6);
                if (int12) {
                    _tile_loadd(5, x + cols + kb * 64, xs);
                    _tile_loadd(7, lo + kb * 1024, 64);
                    _tile_dpbusd(1, 5, 6); /* low input bytes . high weights */
                    _tile_dpbusd(2, 4, 7); /* (high input bytes + 128) . low weights */
                    _tile_dpbusd(3, 5, 7); /* low input bytes . low weights */
                    continue;
                }
                if (tiles > 1) { _tile_loadd(4, x + 16 * xs + kb * 64, xs); _tile_dpbusd(1, 4, 6); }
                if (tiles > 2) { _tile_loadd(4, x + 32 * xs + kb * 64, xs); _tile_dpbusd(2, 4, 6); }
                if (tiles > 3) { _tile_loadd(4, x + 48 * xs + kb * 64, xs); _tile_dpbusd(3, 4, 6); }
            }
            _tile_stored(0, c[0], 64);
            if (tiles > 1) _tile_stored(1, c[1], 64);
            if (tiles > 2) _tile_stored(2, c[2], 64);
            if (tiles > 3) _tile_stored(3, c[3], 64);
            __asm__ __volatile__("" : : "r"(c) : "memory"); /* (GCC 12 does not see tilestored write c) */
            int ns = p->batch - b < group ? p->batch - b : group, nrows = r1 - block < 16 ? r1 - block : 16;
            float dots[64][16];
            for (int s = 0; s < ns; s++)
                for (int n = 0; n < nrows; n++) {
                    int row = block + n;
                    if (!int12) {
                        dots[s][n] = (float)(c[s / 16][s % 16][n] - 128 * e->row_sum[k][row]); /* (in int32) */
                        continue;
                    }
                    int64_t high = (int64_t)c[0][s][n] - 128 * (int64_t)e->row_sum[k][row];
                    dots[s][n] = (float)(4096 * high + 16 * (int64_t)c[1][s][n] +
                                         256 * ((int64_t)c[2][s][n] - 128 * (int64_t)e->row_sum_lo[k][row]) +
                                         (int64_t)c[3][s][n]);
                }
            store_tile(p, b, ns, block, nrows, dots);
        }
    }
}
#endif

#if HAVE_X86
INLINE int32_t load32(const uint8_t *at) {
    int32_t v;
    memcpy(&v, at, 4);
    return v;
}
/* Many streams on VNNI, from the tiles' layout (see amx_layout): each 64-byte line of weights holds 4
   columns of 16 rows, and meets 4 bytes of a stream's inputs (shifted to unsigned) broadcast to its 16
   lanes, so each row's sum gathers in its own lane and no horizontal sum is left (the row-by-row kernels
   spend about as long summing lanes as multiplying at 512 columns). int8: RB row blocks of 16 rows x NS
   streams; sums[s * RB + r][n] is row n of row block r for stream s, the same integer as rows_amx's. */
TARGET(VNNI) INLINE void packed_i8_vnni_n(const uint8_t *w, long row_block_bytes, long lines, const uint8_t *x,
                                          long xs, const int RB, const int NS, int32_t (*sums)[16]) {
    __m512i acc[2][8];
    for (int r = 0; r < RB; r++)
        for (int s = 0; s < NS; s++) acc[r][s] = _mm512_setzero_si512();
    for (long line = 0; line < lines; line++) {
        __m512i wv[2];
        for (int r = 0; r < RB; r++) wv[r] = _mm512_loadu_si512((const void *)(w + r * row_block_bytes + line * 64));
        for (int s = 0; s < NS; s++) {
            __m512i xv = _mm512_set1_epi32(load32(x + s * xs + line * 4));
            for (int r = 0; r < RB; r++) acc[r][s] = _mm512_dpbusd_epi32(acc[r][s], xv, wv[r]);
        }
    }
    for (int s = 0; s < NS; s++)
        for (int r = 0; r < RB; r++) _mm512_storeu_si512((void *)sums[s * RB + r], acc[r][s]);
}
/* int12 without AMX: the weights whole, as int16 (a line holds 2 columns of 16 rows; see amx_layout),
   against each stream's int16 inputs, 2 a broadcast: 32 products per vpdpwssd, half the instructions of
   int12's four byte products. A lane's int32 sum moves to int64 every 16 lines (32 products of at most
   2047 x 32767 stay under 2^31), so the sums are every kernel set's exact integers. One row block x NS
   streams; sums[s] is the row block's 16 rows for stream s. */
TARGET(VNNI) INLINE void packed_i12_vnni_n(const int16_t *w, long lines, const int16_t *x, long xs, const int NS,
                                           int64_t (*sums)[16]) {
    __m512i part[8], low[8], high[8];
    for (int s = 0; s < NS; s++) low[s] = high[s] = _mm512_setzero_si512();
    for (long start = 0; start < lines; start += 16) {
        long end = start + 16 < lines ? start + 16 : lines;
        for (int s = 0; s < NS; s++) part[s] = _mm512_setzero_si512();
        for (long line = start; line < end; line++) {
            __m512i wv = _mm512_loadu_si512((const void *)(w + line * 32));
            for (int s = 0; s < NS; s++)
                part[s] = _mm512_dpwssd_epi32(part[s], _mm512_set1_epi32(load32((const uint8_t *)(x + s * xs + line * 2))), wv);
        }
        for (int s = 0; s < NS; s++) {
            low[s] = _mm512_add_epi64(low[s], _mm512_cvtepi32_epi64(_mm512_castsi512_si256(part[s])));
            high[s] = _mm512_add_epi64(high[s], _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(part[s], 1)));
        }
    }
    for (int s = 0; s < NS; s++) {
        _mm512_storeu_si512((void *)sums[s], low[s]);
        _mm512_storeu_si512((void *)(sums[s] + 8), high[s]);
    }
}
/* Rows [r0, r1) (r0 a multiple of 16) of an int8 or int12 layer for every stream (whole groups of streams:
   the inputs are padded to 16 streams, as for AMX). */
TARGET(VNNI) static void rows_packed_vnni(const Product *p, int r0, int r1) {
    const Engine *e = p->e;
    int k = p->k, int12 = e->weights[k] == WEIGHTS_INT12, group = 8;
    long cols = p->cols, lines = cols / 4, xs = p->xs, row_block_bytes = cols / 64 * 1024;
    int32_t sums[16][16];
    int64_t wide[8][16];
    float dots[8][16];
    for (int block = r0; block < r1; block += int12 ? 16 : 32) {
        int blocks = !int12 && r1 - block > 16 ? 2 : 1;
        const uint8_t *w = e->amx_w[k] + (long)(block / 16) * row_block_bytes * (int12 ? 2 : 1);
        for (int b = 0; b < p->batch; b += group) {
            const uint8_t *x = (const uint8_t *)p->x + (long)b * xs;
            int ns = p->batch - b < group ? p->batch - b : group;
            if (int12) packed_i12_vnni_n((const int16_t *)w, cols / 2, (const int16_t *)x, xs / 2, 8, wide);
            else if (blocks == 2) packed_i8_vnni_n(w, row_block_bytes, lines, x, xs, 2, 8, sums);
            else packed_i8_vnni_n(w, row_block_bytes, lines, x, xs, 1, 8, sums);
            for (int r = 0; r < blocks; r++) {
                int first = block + 16 * r, nrows = r1 - first < 16 ? r1 - first : 16;
                for (int s = 0; s < ns; s++)
                    for (int n = 0; n < nrows; n++)
                        dots[s][n] = int12 ? (float)wide[s][n] /* (int8: in int32) */
                                           : (float)(sums[s * blocks + r][n] - 128 * e->row_sum[k][first + n]);
                store_tile(p, b, ns, first, nrows, dots);
            }
        }
    }
}
#endif

/* Whether this step's int8/int12 products run on AMX tiles. */
static int amx_step(const Engine *e, int batch) { return e->isa == ISA_AMX && batch >= AMX_STREAMS; }
/* Whether they run from the tiles' layout (AMX tiles or rows_packed_vnni), with inputs padded to whole
   tiles of 16 streams and shifted to unsigned (but for int12 without AMX: whole int16 inputs). */
static int packed_step(const Engine *e, int batch) {
    return amx_step(e, batch) || (e->isa == ISA_AVX512_VNNI && batch >= PACKED_STREAMS);
}
/* int12 layers held whole as int16 (VNNI without AMX, many streams: see packed_i12_vnni_n) */
static int int12_whole(const Engine *e, int k, int batch) {
    return e->weights[k] == WEIGHTS_INT12 && e->isa == ISA_AVX512_VNNI && packed_step(e, batch);
}

static void rows(const Engine *e, const Product *p, int r0, int r1) {
#if HAVE_AMX
    if (p->k >= 0 && QUANTIZED(e->weights[p->k]) && amx_step(e, p->batch)) { rows_amx(p, r0, r1); return; }
#endif
#if HAVE_X86
    if (p->k >= 0 && QUANTIZED(e->weights[p->k]) && packed_step(e, p->batch)) { rows_packed_vnni(p, r0, r1); return; }
    if (e->isa >= ISA_AVX512_VNNI) { rows_vnni(p, r0, r1); return; }
    if (e->isa == ISA_AVX512) { rows_avx512(p, r0, r1); return; }
    if (e->isa == ISA_AVX2) { rows_avx2(p, r0, r1); return; }
#endif
    rows_generic(p, r0, r1);
}
static void gates(const Engine *e, const float *pre, const float *h, const float *c, float *h2, float *c2, int u0,
                  int u1) {
#if HAVE_X86
    if (e->isa >= ISA_AVX512) { gates_avx512(e->cell, e->hidden, pre, h, c, h2, c2, u0, u1); return; }
    if (e->isa == ISA_AVX2) { gates_avx2(e->cell, e->hidden, pre, h, c, h2, c2, u0, u1); return; }
#endif
    gates_generic(e->cell, e->hidden, pre, h, c, h2, c2, u0, u1);
}

/* --- the step -------------------------------------------------------------------------------- */

/* A thread's share [lo, hi) of n items, in blocks of `align` so its rows stay whole tiles. */
static void share(int n, int align, int thread, int threads, int *lo, int *hi) {
    int blocks = (n + align - 1) / align;
    int per = blocks / threads, extra = blocks % threads;
    int first = thread * per + (thread < extra ? thread : extra);
    int count = per + (thread < extra ? 1 : 0);
    *lo = first * align < n ? first * align : n;
    *hi = (first + count) * align < n ? (first + count) * align : n;
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

/* fmaxf and a clamp, inlined (GCC calls libm's fmaxf through the PLT): a NaN never wins, as with fmaxf */
INLINE float larger(float a, float b) { return b > a ? b : a; }
INLINE float clamped(float v, float bound) {
    v = v > -bound ? v : -bound;
    return v < bound ? v : bound;
}

/* layer k's inputs for stream b: [h of the layer below, new ; h of this layer, previous], padded */
INLINE void layer_input_body(const Engine *e, int k, int b, int batch, const float *h_old, const float *h_new,
                             void *x, float *scaled, float *x_scale) {
    long hsz = e->hidden, cols = e->cols[k];
    const float *below = k > 0 ? h_new + ((long)(k - 1) * batch + b) * hsz : NULL;
    const float *own = h_old + ((long)k * batch + b) * hsz;
    long own_at = k > 0 ? hsz : 0;
    if (e->weights[k] == WEIGHTS_FP16) {
        float *xf = (float *)x + (long)b * cols;
        memset(xf, 0, cols * sizeof(float));
        if (below) memcpy(xf, below, hsz * sizeof(float));
        memcpy(xf + own_at, own, hsz * sizeof(float));
        return;
    }
    const float *cs = e->col_scale[k];
    scaled += (long)b * cols;
    for (long j = 0; j < hsz; j++) scaled[own_at + j] = own[j] * cs[own_at + j];
    if (below)
        for (long j = 0; j < hsz; j++) scaled[j] = below[j] * cs[j];
    long used = below ? 2 * hsz : hsz;
    float largest = 0.0f;
    for (long j = 0; j < used; j++) largest = larger(largest, fabsf(scaled[j]));
    /* int8 inputs (-127..127): int8 x int8 products summed in int32 lanes stay exact for any width
       a model has (a lane sums at most cols/8 of them), so every kernel set gets the same integers */
    /* (a state of NaN, infinities or all but zero gets scale 1 and clamped values, never an undefined
       float-to-int conversion) */
    int int12 = e->weights[k] == WEIGHTS_INT12;
    int shift = packed_step(e, batch) ? 128 : 0; /* AMX and VNNI multiply unsigned inputs (see rows_amx) */
    float levels = int12 ? 32767.0f : 127.0f;
    float scale = largest > 1e-30f && isfinite(largest) ? largest / levels : 1.0f, inverse = 1.0f / scale;
    x_scale[b] = scale;
    if (int12_whole(e, k, batch)) { /* whole int16 inputs (see packed_i12_vnni_n) */
        int16_t *v = (int16_t *)x + (long)b * cols;
        memset(v + used, 0, (cols - used) * sizeof(int16_t));
        for (long j = 0; j < used; j++) {
            float q = clamped(scaled[j] * inverse, levels);
            v[j] = (int16_t)(int32_t)((q + 12582912.0f) - 12582912.0f);
        }
        return;
    }
    if (int12) { /* int16 inputs as their two bytes: high (signed) then low (unsigned), see tile_i12_generic */
        int8_t *vh = (int8_t *)x + 2 * (long)b * cols;
        uint8_t *vl = (uint8_t *)vh + cols;
        memset(vh + used, shift, cols - used); /* (the padding: 0, shifted as the rest) */
        memset(vl + used, 0, cols - used);
        for (long j = 0; j < used; j++) {
            float v = clamped(scaled[j] * inverse, levels);
            int32_t q = (int32_t)((v + 12582912.0f) - 12582912.0f);
            ((uint8_t *)vh)[j] = (uint8_t)((q >> 8) + shift); /* (arithmetic: the floor of q / 256) */
            vl[j] = (uint8_t)(q & 255);
        }
        return;
    }
    int8_t *xq = (int8_t *)x + (long)b * cols;
    memset(xq + used, shift, cols - used); /* (the padding: 0, shifted as the rest) */
    for (long j = 0; j < used; j++) { /* round to nearest: |value| <= 127 < 2^22 */
        float v = clamped(scaled[j] * inverse, 127.0f);
        v = (v + 12582912.0f) - 12582912.0f;
        ((uint8_t *)xq)[j] = (uint8_t)((int32_t)v + shift);
    }
}

/* Compiled for each kernel set (the same exact roundings: no step is fused into another), so that many
   streams' inputs are scaled and rounded in vectors. */
static void layer_input_generic(const Engine *e, int k, int b, int batch, const float *h_old, const float *h_new,
                                void *x, float *scaled, float *x_scale) {
    layer_input_body(e, k, b, batch, h_old, h_new, x, scaled, x_scale);
}
#if HAVE_X86
TARGET(AVX512) static void layer_input_avx512(const Engine *e, int k, int b, int batch, const float *h_old,
                                              const float *h_new, void *x, float *scaled, float *x_scale) {
    layer_input_body(e, k, b, batch, h_old, h_new, x, scaled, x_scale);
}
TARGET(AVX2) static void layer_input_avx2(const Engine *e, int k, int b, int batch, const float *h_old,
                                          const float *h_new, void *x, float *scaled, float *x_scale) {
    layer_input_body(e, k, b, batch, h_old, h_new, x, scaled, x_scale);
}
#endif
static void layer_input(const Engine *e, int k, int b, int batch, const float *h_old, const float *h_new, void *x,
                        float *scaled, float *x_scale) {
#if HAVE_X86
    if (e->isa >= ISA_AVX512) { layer_input_avx512(e, k, b, batch, h_old, h_new, x, scaled, x_scale); return; }
    if (e->isa == ISA_AVX2) { layer_input_avx2(e, k, b, batch, h_old, h_new, x, scaled, x_scale); return; }
#endif
    layer_input_generic(e, k, b, batch, h_old, h_new, x, scaled, x_scale);
}

typedef struct {
    const int64_t *tokens;
    const float *h_old, *c_old;
    float *h_new, *c_new, *logits;
    int batch, threads, profiling;
} StepArgs;

/* GNU OpenMP's thread pool does not survive fork(): a forked child that opened a parallel region
   of several threads could hang, so after a fork the child steps on one thread (as torch does). */
static volatile int forked_child = 0;
#ifdef _OPENMP
static void note_fork(void) { forked_child = 1; }
#endif

/* Up to this many streams, every thread builds its own copy of a layer's inputs (a few KB) instead
   of its share of one shared copy: that spares a barrier per layer, which costs more than the copy. */
#define PRIVATE_INPUTS 4

static int run_step(Engine *e, const StepArgs *a, double *spent) {
    int batch = a->batch, cols_max = e->head_cols, profiling = a->profiling;
    for (int k = 0; k < e->layers; k++) cols_max = e->cols[k] > cols_max ? e->cols[k] : cols_max;
    int private_inputs = batch <= PRIVATE_INPUTS, copies = private_inputs ? (a->threads > 1 ? a->threads : 1) : 1;
    int amx = amx_step(e, batch), packed = packed_step(e, batch);
    int streams = packed ? (batch + 15) / 16 * 16 : batch; /* (whole tiles of streams) */
    size_t per_copy = (size_t)streams * cols_max;
    void *x = malloc(copies * per_copy * sizeof(float)); /* int8/int16 (int8/int12 layers) or fp32 inputs */
    float *scaled = malloc(copies * per_copy * sizeof(float)); /* int8: what x is rounded from */
    float *x_scale = malloc(copies * (size_t)batch * sizeof(float));
    /* the output layer reads the top layer's h in place where no column padding is needed */
    int head_in_place = e->head_cols == e->hidden;
    float *head_x = head_in_place ? NULL : malloc((size_t)batch * e->head_cols * sizeof(float));
    float *pre = malloc((size_t)batch * e->rows * sizeof(float));
    if (!x || !scaled || (!head_in_place && !head_x) || !x_scale || !pre) {
        free(x), free(scaled), free(head_x), free(x_scale), free(pre);
        return -1;
    }
    if (packed && streams > batch) memset(x, 0, per_copy * sizeof(float)); /* (the padding streams' inputs) */
    long hsz = e->hidden;
#ifdef _OPENMP
#pragma omp parallel num_threads(forked_child ? 1 : a->threads) if (!forked_child && a->threads > 1)
#endif
    {
#ifdef _OPENMP
        int thread = omp_get_thread_num(), threads = omp_get_num_threads();
#else
        int thread = 0, threads = 1;
#endif
        int u0, u1, b0, b1;
        share(e->hidden, (packed ? 16 : 4) / e->slots, thread, threads, &u0, &u1); /* (whole tiles of rows) */
#if HAVE_AMX
        if (amx) amx_begin();
#endif
        share(batch, 1, thread, threads, &b0, &b1);
        int copy = private_inputs && thread < copies ? thread : 0;
        void *my_x = (char *)x + copy * per_copy * sizeof(float);
        float *my_scaled = scaled + copy * per_copy, *my_scale = x_scale + (size_t)copy * batch;
        int first = private_inputs ? 0 : b0, last = private_inputs ? batch : b1;
        double t0 = 0, t1 = 0;
        for (int k = 0; k < e->layers; k++) {
            if (thread == 0 && profiling) t0 = now();
            for (int b = first; b < last; b++) layer_input(e, k, b, batch, a->h_old, a->h_new, my_x, my_scaled, my_scale);
#ifdef _OPENMP
            if (!private_inputs) {
#pragma omp barrier
            }
#endif
            if (thread == 0 && profiling) t1 = now(), spent[0] += t1 - t0;
            long xs = e->weights[k] == WEIGHTS_INT12 ? 2 * e->cols[k] : e->cols[k]; /* (int16 inputs: 2 bytes) */
            Product p = {e, k, e->w[k], e->cols[k], my_x, xs, my_scale, a->tokens, pre, batch};
            rows(e, &p, u0 * e->slots, u1 * e->slots);
            if (thread == 0 && profiling) t0 = now(), spent[1] += t0 - t1;
            for (int b = 0; b < batch; b++) {
                long at = ((long)k * batch + b) * hsz;
                gates(e, pre + (long)b * e->rows, a->h_old + at, e->cell == CELL_LSTM ? a->c_old + at : NULL,
                      a->h_new + at, e->cell == CELL_LSTM ? a->c_new + at : NULL, u0, u1);
            }
            if (thread == 0 && profiling) spent[2] += now() - t0;
#ifdef _OPENMP
#pragma omp barrier
#endif
        }
        if (thread == 0 && profiling) t0 = now();
        const float *top = a->h_new + (long)(e->layers - 1) * batch * hsz;
        if (!head_in_place) {
            for (int b = b0; b < b1; b++) {
                float *hx = head_x + (long)b * e->head_cols;
                memset(hx, 0, e->head_cols * sizeof(float));
                memcpy(hx, top + (long)b * hsz, hsz * sizeof(float));
            }
#ifdef _OPENMP
#pragma omp barrier
#endif
        }
        int v0, v1;
        share(e->vocab, 4, thread, threads, &v0, &v1);
        Product head = {e, -1, e->head_w, e->head_cols, head_in_place ? top : head_x, e->head_cols, NULL,
                        a->tokens, a->logits, batch};
        rows(e, &head, v0, v1);
        if (thread == 0 && profiling) spent[3] += now() - t0;
#if HAVE_AMX
        if (amx) amx_end();
#endif
    }
    free(x), free(scaled), free(head_x), free(x_scale), free(pre);
    return 0;
}

/* --- Python ----------------------------------------------------------------------------------- */

static void engine_free(PyObject *capsule) {
    Engine *e = PyCapsule_GetPointer(capsule, "rnnlab.fast_step.Engine");
    if (!e) return;
    for (int i = 0; i < e->nviews; i++) PyBuffer_Release(&e->views[i]);
    for (int k = 0; k < e->layers; k++) free(e->row_sum[k]), free(e->amx_w[k]), free(e->amx_lo[k]), free(e->row_sum_lo[k]);
    free(e);
}

/* A read-only view of `obj`, kept by the engine, of exactly `bytes` bytes (contiguous). */
static const void *keep_view(Engine *e, PyObject *obj, Py_ssize_t bytes, const char *what) {
    Py_buffer *view = &e->views[e->nviews];
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS) < 0) return NULL;
    e->nviews++;
    if (view->len != bytes) {
        PyErr_Format(PyExc_ValueError, "%s holds %zd bytes, the engine's shapes need %zd", what, view->len, bytes);
        return NULL;
    }
    return view->buf;
}

/* AMX needs the CPU's tiles and, on Linux, the kernel's leave to use them (asked once per process). */
static int amx_usable(void) {
#if HAVE_AMX
    static int usable = -1;
    if (usable < 0) {
        unsigned a, b, c, d;
        int tiles = __get_cpuid_count(7, 0, &a, &b, &c, &d) && (d >> 24 & 1) && (d >> 25 & 1); /* AMX-TILE, -INT8 */
        usable = tiles && syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XTILEDATA */) == 0;
    }
    return usable;
#else
    return 0;
#endif
}

static int cpu_isa(void) {
#if HAVE_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
        return !__builtin_cpu_supports("avx512vnni") ? ISA_AVX512 : amx_usable() ? ISA_AMX : ISA_AVX512_VNNI;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
        return ISA_AVX2;
#endif
    return ISA_GENERIC;
}

static int isa_named(const char *name) {
    for (int i = 0; i < ISAS; i++)
        if (strcmp(name, ISA_NAMES[i]) == 0) return i;
    return -1;
}

/* build(cell, isa, hidden, vocab, table, head_w, head_b, layers) -> engine
   layers: a tuple of (weights, w, nibbles, row_scale, col_scale, bias) per layer, each layer its own
   `weights`: WEIGHTS_INT8 (w int8, with both scales), WEIGHTS_INT12 (w its high bytes, nibbles its low
   4 bits, both scales; columns padded to 128) or WEIGHTS_FP16 (w as uint16; nibbles and scales None) */
static PyObject *build(PyObject *self, PyObject *args) {
    int cell, hidden, vocab;
    const char *isa_name;
    PyObject *table, *head_w, *head_b, *layers;
    if (!PyArg_ParseTuple(args, "isiiOOOO!", &cell, &isa_name, &hidden, &vocab, &table, &head_w, &head_b,
                          &PyTuple_Type, &layers))
        return NULL;
    Py_ssize_t count = PyTuple_GET_SIZE(layers);
    int isa = strcmp(isa_name, "auto") == 0 ? cpu_isa() : isa_named(isa_name);
    if (isa < 0 || isa > cpu_isa()) return PyErr_Format(PyExc_ValueError, "this CPU cannot run the %s kernels", isa_name);
    /* (bounds that keep every size below in int, and the int8 sums in int32) */
    if (cell < CELL_LSTM || cell > CELL_RNN || hidden < 1 || hidden > (1 << 14) || vocab < 1 || vocab > (1 << 28) ||
        count < 1 || count > MAX_LAYERS)
        return PyErr_Format(PyExc_ValueError, "unsupported engine shape");
    Engine *e = calloc(1, sizeof(Engine));
    if (!e) return PyErr_NoMemory();
    PyObject *capsule = PyCapsule_New(e, "rnnlab.fast_step.Engine", engine_free);
    if (!capsule) { free(e); return NULL; }
    e->cell = cell, e->isa = isa, e->layers = (int)count, e->hidden = hidden, e->vocab = vocab;
    e->slots = cell == CELL_RNN ? 1 : 4;
    e->rows = e->slots * hidden;
    e->head_cols = (hidden + COLUMN_BLOCK - 1) / COLUMN_BLOCK * COLUMN_BLOCK;
    int rows_padded = (e->rows + 3) / 4 * 4, vocab_padded = (vocab + 3) / 4 * 4;
    if (!(e->table = keep_view(e, table, (Py_ssize_t)vocab * e->rows * 4, "the input table")) ||
        !(e->head_w = keep_view(e, head_w, (Py_ssize_t)vocab_padded * e->head_cols * 4, "the output weights")) ||
        !(e->head_b = keep_view(e, head_b, (Py_ssize_t)vocab * 4, "the output bias"))) {
        Py_DECREF(capsule);
        return NULL;
    }
    for (int k = 0; k < e->layers; k++) {
        PyObject *layer = PyTuple_GET_ITEM(layers, k);
        long weights = PyTuple_Check(layer) && PyTuple_GET_SIZE(layer) == 6 ? PyLong_AsLong(PyTuple_GET_ITEM(layer, 0)) : -1;
        if (weights < WEIGHTS_INT8 || weights > WEIGHTS_INT12) {
            Py_DECREF(capsule);
            PyErr_Clear();
            return PyErr_Format(PyExc_ValueError, "layer %d: expected (weights, w, nibbles, row_scale, col_scale, bias)", k);
        }
        e->weights[k] = (int)weights;
        int width = (k > 0 ? 2 : 1) * hidden, block = weights == WEIGHTS_INT12 ? 2 * COLUMN_BLOCK : COLUMN_BLOCK;
        e->cols[k] = (width + block - 1) / block * block;
        size_t item = weights == WEIGHTS_FP16 ? 2 : 1;
        if (!(e->w[k] = keep_view(e, PyTuple_GET_ITEM(layer, 1), (Py_ssize_t)rows_padded * e->cols[k] * item,
                                  "a layer's weights")) ||
            !(e->bias[k] = keep_view(e, PyTuple_GET_ITEM(layer, 5), (Py_ssize_t)e->rows * 4, "a layer's bias"))) {
            Py_DECREF(capsule);
            return NULL;
        }
        if (weights == WEIGHTS_INT12 &&
            !(e->nibbles[k] = keep_view(e, PyTuple_GET_ITEM(layer, 2), (Py_ssize_t)rows_padded * e->cols[k] / 2,
                                        "a layer's low weight bits"))) {
            Py_DECREF(capsule);
            return NULL;
        }
        if (QUANTIZED(weights) &&
            (!(e->row_scale[k] = keep_view(e, PyTuple_GET_ITEM(layer, 3), (Py_ssize_t)rows_padded * 4, "row scales")) ||
             !(e->col_scale[k] = keep_view(e, PyTuple_GET_ITEM(layer, 4), (Py_ssize_t)e->cols[k] * 4, "column scales")))) {
            Py_DECREF(capsule);
            return NULL;
        }
        if (QUANTIZED(weights)) {
            if (!(e->row_sum[k] = malloc((size_t)rows_padded * sizeof(int32_t)))) {
                Py_DECREF(capsule);
                return PyErr_NoMemory();
            }
            const int8_t *q = e->w[k];
            for (int r = 0; r < rows_padded; r++) {
                int32_t sum = 0;
                for (int c = 0; c < e->cols[k]; c++) sum += q[(long)r * e->cols[k] + c];
                e->row_sum[k][r] = sum;
            }
        }
    }
    return capsule;
}

/* The weights again in AMX's layout: per 16 rows and 64 columns, 1 KB whose line i holds columns 4i..4i+3
   of each of the 16 rows (4 bytes per row); int12's low bits as bytes likewise. 0 or -1 (no memory). */
static int amx_layout(Engine *e) {
    int rows16 = (e->rows + 15) / 16 * 16, rows_padded = (e->rows + 3) / 4 * 4;
    for (int k = 0; k < e->layers; k++) {
        if (!QUANTIZED(e->weights[k])) continue;
        long cols = e->cols[k], blocks = cols / 64, size = (long)rows16 / 16 * blocks * 1024;
        int int12 = e->weights[k] == WEIGHTS_INT12;
        free(e->amx_w[k]), free(e->amx_lo[k]), free(e->row_sum_lo[k]); /* (what a failed try left) */
        e->amx_lo[k] = NULL, e->row_sum_lo[k] = NULL;
        if (int12 && e->isa != ISA_AMX) { /* whole int16 weights, a line = 2 columns x 16 rows (32 x 2 bytes) */
            int16_t *whole = calloc(2 * size, 1);
            e->amx_w[k] = (uint8_t *)whole;
            if (!whole) return -1;
            for (int row = 0; row < rows_padded; row++)
                for (long col = 0; col < cols; col++)
                    whole[((long)(row / 16) * (cols / 2) + col / 2) * 32 + (row % 16) * 2 + col % 2] =
                        (int16_t)(16 * ((const int8_t *)e->w[k])[row * cols + col] +
                                  nibble(e->nibbles[k] + row * (cols / 2), col));
            continue;
        }
        e->amx_w[k] = calloc(size, 1);
        if (int12) e->amx_lo[k] = calloc(size, 1), e->row_sum_lo[k] = calloc(rows_padded, sizeof(int32_t));
        if (!e->amx_w[k] || (int12 && (!e->amx_lo[k] || !e->row_sum_lo[k]))) return -1;
        const int8_t *w = e->w[k];
        for (int row = 0; row < rows_padded; row++)
            for (long col = 0; col < cols; col++) {
                long at = ((long)(row / 16) * blocks + col / 64) * 1024 + (col % 64) / 4 * 64 + (row % 16) * 4 + col % 4;
                e->amx_w[k][at] = (uint8_t)w[row * cols + col];
                if (int12) {
                    int low = nibble(e->nibbles[k] + row * (cols / 2), col);
                    e->amx_lo[k][at] = (uint8_t)low;
                    e->row_sum_lo[k][row] += low;
                }
            }
    }
    e->amx_ready = 1;
    return 0;
}

static Engine *engine_of(PyObject *capsule) {
    return PyCapsule_GetPointer(capsule, "rnnlab.fast_step.Engine");
}

/* A writable (or read-only) view of exactly `bytes` bytes; released by the caller. */
static int view_of(PyObject *obj, Py_buffer *view, Py_ssize_t bytes, int writable, const char *what) {
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS | (writable ? PyBUF_WRITABLE : 0)) < 0) return -1;
    if (view->len != bytes) {
        PyErr_Format(PyExc_ValueError, "%s holds %zd bytes, expected %zd", what, view->len, bytes);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

/* step(engine, tokens int64 (B,), h_old, c_old|None, h_new, c_new|None, logits, threads) */
static PyObject *step(PyObject *self, PyObject *args) {
    PyObject *capsule, *tokens_obj, *h_old_obj, *c_old_obj, *h_new_obj, *c_new_obj, *logits_obj;
    int threads;
    if (!PyArg_ParseTuple(args, "OOOOOOOi", &capsule, &tokens_obj, &h_old_obj, &c_old_obj, &h_new_obj, &c_new_obj,
                          &logits_obj, &threads))
        return NULL;
    Engine *e = engine_of(capsule);
    if (!e) return NULL;
    Py_buffer views[6];
    int held = 0, lstm = e->cell == CELL_LSTM;
    if (PyObject_GetBuffer(tokens_obj, &views[0], PyBUF_C_CONTIGUOUS) < 0) return NULL;
    held = 1;
    Py_ssize_t batch = views[0].len / 8;
    Py_ssize_t state = (Py_ssize_t)e->layers * batch * e->hidden * 4;
    PyObject *rest[5] = {h_old_obj, lstm ? c_old_obj : NULL, h_new_obj, lstm ? c_new_obj : NULL, logits_obj};
    Py_ssize_t sizes[5] = {state, state, state, state, batch * (Py_ssize_t)e->vocab * 4};
    static const char *names[5] = {"h", "c", "the new h", "the new c", "the logits"};
    const void *ptr[5] = {NULL};
    PyObject *result = NULL;
    if (batch < 1 || views[0].len % 8) {
        PyErr_SetString(PyExc_ValueError, "tokens must be a non-empty int64 array");
        goto done;
    }
    for (int i = 0; i < 5; i++) {
        if (!rest[i]) continue;
        if (view_of(rest[i], &views[held], sizes[i], i >= 2, names[i]) < 0) goto done;
        ptr[i] = views[held++].buf;
    }
    const int64_t *tokens = views[0].buf;
    for (Py_ssize_t b = 0; b < batch; b++)
        if (tokens[b] < 0 || tokens[b] >= e->vocab) {
            PyErr_Format(PyExc_ValueError, "token %lld is outside the vocabulary of %d", (long long)tokens[b], e->vocab);
            goto done;
        }
    /* the outputs are written while the inputs are still read (by other threads): none may overlap */
    for (int i = 2; i < 5; i++)
        for (int j = -1; j < 5; j++) {
            if (!ptr[i] || j == i || (j >= 0 && !ptr[j])) continue;
            const char *p0 = ptr[i], *q0 = j < 0 ? (const char *)tokens : ptr[j];
            Py_ssize_t qn = j < 0 ? batch * 8 : sizes[j];
            if (p0 < q0 + qn && q0 < p0 + sizes[i]) {
                PyErr_Format(PyExc_ValueError, "%s overlaps %s", names[i], j < 0 ? "the tokens" : names[j]);
                goto done;
            }
        }
    if (packed_step(e, (int)batch) && !e->amx_ready && amx_layout(e) < 0) {
        PyErr_NoMemory();
        goto done;
    }
    StepArgs a = {tokens, ptr[0], ptr[1], (float *)ptr[2], (float *)ptr[3], (float *)ptr[4], (int)batch,
                  threads < 1 ? 1 : threads, e->profiling};
    double spent[PROFILE_PARTS] = {0};
    int failed;
    Py_BEGIN_ALLOW_THREADS
    failed = run_step(e, &a, spent);
    Py_END_ALLOW_THREADS
    for (int i = 0; i < PROFILE_PARTS; i++) e->profile[i] += spent[i]; /* (with the GIL held again) */
    if (failed) {
        PyErr_NoMemory();
        goto done;
    }
    result = Py_None;
    Py_INCREF(result);
done:
    for (int i = 0; i < held; i++) PyBuffer_Release(&views[i]);
    return result;
}

static PyObject *profile(PyObject *self, PyObject *args) {
    PyObject *capsule;
    int enable;
    if (!PyArg_ParseTuple(args, "Op", &capsule, &enable)) return NULL;
    Engine *e = engine_of(capsule);
    if (!e) return NULL;
    PyObject *spent = Py_BuildValue("(dddd)", e->profile[0], e->profile[1], e->profile[2], e->profile[3]);
    memset(e->profile, 0, sizeof(e->profile));
    e->profiling = enable;
    return spent;
}

static PyObject *isa_of(PyObject *self, PyObject *args) {
    PyObject *capsule = NULL;
    if (!PyArg_ParseTuple(args, "|O", &capsule)) return NULL;
    if (!capsule || capsule == Py_None) return PyUnicode_FromString(ISA_NAMES[cpu_isa()]);
    Engine *e = engine_of(capsule);
    return e ? PyUnicode_FromString(ISA_NAMES[e->isa]) : NULL;
}

static PyObject *openmp(PyObject *self, PyObject *noargs) {
#ifdef _OPENMP
    Py_RETURN_TRUE;
#else
    Py_RETURN_FALSE;
#endif
}

static PyMethodDef methods[] = {
    {"build", build, METH_VARARGS, "An engine over laid-out weights (see fast_engine.py)."},
    {"step", step, METH_VARARGS, "One step of every stream: new state and logits written in place."},
    {"profile", profile, METH_VARARGS, "Seconds spent so far per part (and reset); enable/disable timing."},
    {"isa", isa_of, METH_VARARGS, "The kernels an engine (or, with none, this CPU) runs: avx512, avx2 or generic."},
    {"openmp", openmp, METH_NOARGS, "Whether the engine was built with OpenMP (several threads per step)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fast_step", NULL, -1, methods};

PyMODINIT_FUNC PyInit__fast_step(void) {
#ifdef _OPENMP
    pthread_atfork(NULL, NULL, note_fork);
#endif
    PyObject *m = PyModule_Create(&module);
    if (m && PyModule_AddIntConstant(m, "AMX_STREAMS", AMX_STREAMS) < 0) Py_CLEAR(m);
    if (m && PyModule_AddIntConstant(m, "PACKED_STREAMS", PACKED_STREAMS) < 0) Py_CLEAR(m);
    return m;
}
