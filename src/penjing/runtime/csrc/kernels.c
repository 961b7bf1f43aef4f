/* penjing runtime kernels: compressed layers executed from their stored form.
 *
 * This one file is compiled three times (generic, -mavx2, -mavx512*) and linked into one
 * shared library; SUFFIX names each copy's symbols (pj_spmv_avx512, ...) so that Python picks
 * the variant the running CPU supports. No torch headers: the kernels take data pointers.
 *
 * Sparse layout (every sparse format): rows are output features; each row is cut into column
 * panels of 2^(16 - code_bits) columns, and each nonzero is one uint16 entry
 * (column_in_panel << code_bits | code). segptr[r * panels + p] .. segptr[r * panels + p + 1]
 * are the entries of row r in panel p. The value of an entry is
 *   kind 0: values_f32[i]             (fp32 values)
 *   kind 1: values_i8[i] * scales[r]  (int8 values, one scale per output channel)
 *   kind 2: centroids[code]           (shared weights: Deep Compression's codebook)
 * Every output is (sum * scale) + bias, rounded twice, never fused (and the file is built with
 * -ffp-contract=off): with int8 values and integer inputs the sums are exact, and so the
 * outputs are bit for bit those of fbgemm's int8 GEMM, which requantizes the same way.
 * Ternary / binary layout: one bit per weight in uint16 words, row-major, rows padded to
 * whole 64-column blocks: ternary has a plus plane and a minus plane, binary one sign plane.
 */
#include <stdint.h>
#include <string.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#ifndef SUFFIX
#define SUFFIX generic
#endif
#define CAT2(a, b) a##_##b
#define CAT(a, b) CAT2(a, b)
#define NAME(x) CAT(x, SUFFIX)
#define INLINE static inline __attribute__((always_inline))

typedef struct {
    int64_t rows, cols, panels;
    int32_t kind, code_bits;
    const int64_t *segptr;
    const uint16_t *entries;
    const void *values;
    const float *scales;
    const float *centroids;
} pj_sparse;

typedef struct {
    int64_t rows, cols, words;  /* words: uint16 words per row (cols padded to 64) */
    int32_t ternary;
    const uint16_t *plus;       /* ternary: +1 bits; binary: sign bits (1 = +1) */
    const uint16_t *minus;      /* ternary: -1 bits; binary: unused */
    const float *scale_plus;    /* per row */
    const float *scale_minus;   /* per row (ternary) */
} pj_bits;

/* ---------------------------------------------------------------- vector shim */
#if defined(__AVX512F__)
#define VW 16
typedef __m512 vf;
typedef __mmask16 vm;
#define VZERO() _mm512_setzero_ps()
#define VSET1(a) _mm512_set1_ps(a)
#define VLOADM(m, p) _mm512_maskz_loadu_ps((m), (p))
#define VSTOREM(p, m, v) _mm512_mask_storeu_ps((p), (m), (v))
#define VFMA(a, b, c) _mm512_fmadd_ps((a), (b), (c))
#define VADD(a, b) _mm512_add_ps((a), (b))
#define VSUB(a, b) _mm512_sub_ps((a), (b))
#define VMUL(a, b) _mm512_mul_ps((a), (b))
INLINE vm vmask(int64_t n) { return n >= 16 ? (vm)0xFFFF : (vm)((1u << n) - 1u); }
#elif defined(__AVX2__)
#define VW 8
typedef __m256 vf;
typedef __m256i vm;
#define VZERO() _mm256_setzero_ps()
#define VSET1(a) _mm256_set1_ps(a)
#define VLOADM(m, p) _mm256_maskload_ps((p), (m))
#define VSTOREM(p, m, v) _mm256_maskstore_ps((p), (m), (v))
#define VFMA(a, b, c) _mm256_fmadd_ps((a), (b), (c))
#define VADD(a, b) _mm256_add_ps((a), (b))
#define VSUB(a, b) _mm256_sub_ps((a), (b))
#define VMUL(a, b) _mm256_mul_ps((a), (b))
INLINE vm vmask(int64_t n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(n > 8 ? 8 : n)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
#else
#define VW 1
typedef float vf;
typedef int vm;
#define VZERO() 0.0f
#define VSET1(a) (a)
#define VLOADM(m, p) ((m) ? *(p) : 0.0f)
#define VSTOREM(p, m, v) do { if (m) *(p) = (v); } while (0)
#define VFMA(a, b, c) ((a) * (b) + (c))
#define VADD(a, b) ((a) + (b))
#define VSUB(a, b) ((a) - (b))
#define VMUL(a, b) ((a) * (b))
INLINE vm vmask(int64_t n) { return n > 0; }
#endif
#define NV_MAX 4
#define TILE (NV_MAX * VW)
/* the sparse batched kernel takes up to 8 vectors per tile: a conv's 196 output positions
 * are then 2 passes over each row's nonzeros (128 + 68), not 4 (64 + 64 + 64 + 4) */
#define SP_NV_MAX 8
#define SP_TILE (SP_NV_MAX * VW)

/* ---------------------------------------------------------------- thread pool */
/* A claim-as-you-go pool instead of OpenMP: the caller runs chunks itself and waits only for
 * chunks another thread has *claimed*, never for a worker that has not woken up yet. On a
 * loaded machine an OpenMP region's closing barrier waits for its late worker (measured: 16 ms
 * per call for a 20 us layer at 2 threads on a busy 2-core machine); here a late worker finds
 * no chunks left and goes back to sleep. (It also avoids a second OpenMP runtime next to
 * torch's.) Static per compiled variant: only one variant runs in a process at a time. */
typedef void (*pj_task)(void *ctx, int64_t lo, int64_t hi);
#define POOL_MAX 64
static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int workers;               /* started so far */
    int want;                  /* workers this job may use */
    uint32_t gen;              /* job number, under mu */
    _Atomic uint64_t claim;    /* gen << 32 | next chunk */
    _Atomic int64_t done;      /* chunks finished in this job */
    pj_task fn;
    void *ctx;
    int64_t n, chunk, nchunks;
} pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};

static void pool_run(uint32_t gen, pj_task fn, void *ctx, int64_t n, int64_t chunk, int64_t nchunks) {
    for (;;) {
        uint64_t c = atomic_load(&pool.claim);
        if ((uint32_t)(c >> 32) != gen || (int64_t)(uint32_t)c >= nchunks) return;
        if (!atomic_compare_exchange_weak(&pool.claim, &c, c + 1)) continue;
        int64_t lo = (int64_t)(uint32_t)c * chunk, hi = lo + chunk < n ? lo + chunk : n;
        fn(ctx, lo, hi);
        atomic_fetch_add(&pool.done, 1);
    }
}

static void *pool_worker(void *arg) {
    int id = (int)(intptr_t)arg;
    uint32_t seen = 0;
    for (;;) {
        pthread_mutex_lock(&pool.mu);
        while (pool.gen == seen || id >= pool.want) {
            if (pool.gen != seen) seen = pool.gen; /* a job not meant for this worker */
            pthread_cond_wait(&pool.cv, &pool.mu);
        }
        seen = pool.gen;
        pj_task fn = pool.fn;
        void *ctx = pool.ctx;
        int64_t n = pool.n, chunk = pool.chunk, nchunks = pool.nchunks;
        pthread_mutex_unlock(&pool.mu);
        pool_run(seen, fn, ctx, n, chunk, nchunks);
    }
    return NULL;
}

/* One job at a time owns the pool: ctypes releases the GIL, so two Python threads may call
 * kernels at once; the second then runs its call on its own thread. */
static pthread_mutex_t pool_job = PTHREAD_MUTEX_INITIALIZER;

#ifdef _OPENMP
#include <omp.h>
/* torch's own OpenMP team, where this library shares torch's OpenMP runtime (Python checks
 * that only one is mapped and sets this). After each of its ops torch's workers spin for a
 * few ms; a thread of the pool above then finds its core taken and the caller does nearly all
 * the work (measured: 32 rows x 4096 at 90% after an F.linear, 2 threads, 3.1 ms with the pool
 * vs 2.1 ms when torch's workers sleep at once). A region of the same runtime is picked up by
 * those spinning workers. Inside it, chunks are still claimed as they go. */
static int use_openmp = 0;

void NAME(pj_set_openmp)(int on) { use_openmp = on; }

/* The OpenMP runtime this library is bound to (Python compares it with torch's). */
void *NAME(pj_openmp_symbol)(void) { return (void *)&omp_get_max_threads; }

static void openmp_for(pj_task fn, void *ctx, int64_t n, int64_t chunk, int64_t nchunks, int nthreads) {
    _Atomic int64_t next = 0;
#pragma omp parallel num_threads(nthreads)
    for (;;) {
        int64_t k = atomic_fetch_add(&next, 1);
        if (k >= nchunks) break;
        int64_t lo = k * chunk, hi = lo + chunk < n ? lo + chunk : n;
        fn(ctx, lo, hi);
    }
}
#endif

/* Run fn over [0, n) in chunks of `chunk`, on up to nthreads threads (the caller included). */
static void parallel_for(pj_task fn, void *ctx, int64_t n, int64_t chunk, int nthreads) {
    if (chunk < 1) chunk = 1;
    int64_t nchunks = (n + chunk - 1) / chunk;
    if (nthreads > POOL_MAX) nthreads = POOL_MAX;
#ifdef _OPENMP
    if (use_openmp && nthreads > 1 && nchunks > 1) {
        openmp_for(fn, ctx, n, chunk, nchunks, nthreads);
        return;
    }
#endif
    if (nthreads <= 1 || nchunks <= 1 || pthread_mutex_trylock(&pool_job) != 0) {
        if (n > 0) fn(ctx, 0, n);
        return;
    }
    if (nchunks > 0xFFFFFFF) { chunk = (n + 0xFFFFFFE) / 0xFFFFFFF; nchunks = (n + chunk - 1) / chunk; }
    pthread_mutex_lock(&pool.mu);
    while (pool.workers < nthreads - 1) {
        pthread_t t;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        int bad = pthread_create(&t, &attr, pool_worker, (void *)(intptr_t)pool.workers);
        pthread_attr_destroy(&attr);
        if (bad) break; /* fewer threads than asked: the caller still does all the work */
        pool.workers++;
    }
    uint32_t gen = ++pool.gen;
    pool.want = nthreads - 1;
    pool.fn = fn;
    pool.ctx = ctx;
    pool.n = n;
    pool.chunk = chunk;
    pool.nchunks = nchunks;
    atomic_store(&pool.done, 0);
    atomic_store(&pool.claim, (uint64_t)gen << 32);
    pthread_cond_broadcast(&pool.cv);
    pthread_mutex_unlock(&pool.mu);
    pool_run(gen, fn, ctx, n, chunk, nchunks);
    for (int spins = 0; atomic_load(&pool.done) < nchunks; spins++)
        if (spins > 64) sched_yield(); /* a claimed chunk is running elsewhere: let it have the core */
    pthread_mutex_unlock(&pool_job);
}

/* chunk of rows so that each thread gets several (load balance) */
static int64_t chunk_for(int64_t n, int nt) {
    int64_t c = n / (8 * (nt > 0 ? nt : 1));
    return c < 1 ? 1 : c;
}

INLINE float entry_value(const pj_sparse *W, const int kind, int64_t i, uint16_t e) {
    if (kind == 0) return ((const float *)W->values)[i];
    if (kind == 1) return (float)((const int8_t *)W->values)[i];
    return W->centroids[e & ((1u << W->code_bits) - 1u)];
}

/* ---------------------------------------------------------------- batch 1: y = W x + b */
/* x values of 16 (8) entries by scalar loads and inserts: on Zen 4 this beats vgatherdps by
 * 1.5x (0.26 vs 0.39 ns per nonzero at 4096x4096, 90% sparse); AMD's AVX2 gathers are slower still. */
#if defined(__AVX512F__)
INLINE __m512 xgather16(const float *xp, const uint16_t *e, int cb) {
    __m128 q0 = _mm_setr_ps(xp[e[0] >> cb], xp[e[1] >> cb], xp[e[2] >> cb], xp[e[3] >> cb]);
    __m128 q1 = _mm_setr_ps(xp[e[4] >> cb], xp[e[5] >> cb], xp[e[6] >> cb], xp[e[7] >> cb]);
    __m128 q2 = _mm_setr_ps(xp[e[8] >> cb], xp[e[9] >> cb], xp[e[10] >> cb], xp[e[11] >> cb]);
    __m128 q3 = _mm_setr_ps(xp[e[12] >> cb], xp[e[13] >> cb], xp[e[14] >> cb], xp[e[15] >> cb]);
    return _mm512_insertf32x4(_mm512_insertf32x4(_mm512_insertf32x4(_mm512_castps128_ps512(q0), q1, 1), q2, 2), q3, 3);
}

INLINE __m512 vector_values(const pj_sparse *W, const int kind, int64_t i, __m512 c0, __m512 c1) {
    if (kind == 0) return _mm512_loadu_ps((const float *)W->values + i);
    if (kind == 1)
        return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)((const int8_t *)W->values + i))));
    __m512i e = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(W->entries + i)));
    __m512i code = _mm512_and_si512(e, _mm512_set1_epi32((1 << W->code_bits) - 1));
    if (W->code_bits <= 4) return _mm512_permutexvar_ps(code, c0);
    if (W->code_bits == 5) return _mm512_permutex2var_ps(c0, code, c1);
    return _mm512_i32gather_ps(code, W->centroids, 4);
}

INLINE float row_dot(const pj_sparse *W, const int kind, int64_t r, const float *x) {
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    __m512 c0 = _mm512_setzero_ps(), c1 = _mm512_setzero_ps();
    if (kind == 2 && W->code_bits <= 5) {
        int n = 1 << W->code_bits;
        c0 = _mm512_maskz_loadu_ps(vmask(n), W->centroids);
        if (n > 16) c1 = _mm512_maskz_loadu_ps(vmask(n - 16), W->centroids + 16);
    }
    const int cb = kind == 2 ? W->code_bits : 0; /* a constant 0 for value kinds: no shifts */
    const int64_t pw = (int64_t)1 << (16 - cb);
    float tail = 0.0f;
    for (int64_t p = 0; p < W->panels; p++) {
        const int64_t a = W->segptr[r * W->panels + p], b = W->segptr[r * W->panels + p + 1];
        const float *xp = x + p * pw;
        int64_t i = a;
        for (; i + 32 <= b; i += 32) {
            acc0 = _mm512_fmadd_ps(vector_values(W, kind, i, c0, c1), xgather16(xp, W->entries + i, cb), acc0);
            acc1 = _mm512_fmadd_ps(vector_values(W, kind, i + 16, c0, c1), xgather16(xp, W->entries + i + 16, cb), acc1);
        }
        for (; i + 16 <= b; i += 16)
            acc0 = _mm512_fmadd_ps(vector_values(W, kind, i, c0, c1), xgather16(xp, W->entries + i, cb), acc0);
        for (; i < b; i++) {
            uint16_t e = W->entries[i];
            tail += entry_value(W, kind, i, e) * xp[e >> cb];
        }
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1)) + tail;
}
#elif defined(__AVX2__)
INLINE __m256 xgather8(const float *xp, const uint16_t *e, int cb) {
    return _mm256_setr_ps(xp[e[0] >> cb], xp[e[1] >> cb], xp[e[2] >> cb], xp[e[3] >> cb], xp[e[4] >> cb],
                          xp[e[5] >> cb], xp[e[6] >> cb], xp[e[7] >> cb]);
}

INLINE __m256 vector_values(const pj_sparse *W, const int kind, int64_t i) {
    if (kind == 0) return _mm256_loadu_ps((const float *)W->values + i);
    if (kind == 1)
        return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)((const int8_t *)W->values + i))));
    __m256i e = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(W->entries + i)));
    __m256i code = _mm256_and_si256(e, _mm256_set1_epi32((1 << W->code_bits) - 1));
    if (W->code_bits <= 3) return _mm256_permutevar8x32_ps(_mm256_loadu_ps(W->centroids), code);
    return _mm256_i32gather_ps(W->centroids, code, 4);
}

INLINE float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}

INLINE float row_dot(const pj_sparse *W, const int kind, int64_t r, const float *x) {
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    const int cb = kind == 2 ? W->code_bits : 0; /* a constant 0 for value kinds: no shifts */
    const int64_t pw = (int64_t)1 << (16 - cb);
    float tail = 0.0f;
    for (int64_t p = 0; p < W->panels; p++) {
        const int64_t a = W->segptr[r * W->panels + p], b = W->segptr[r * W->panels + p + 1];
        const float *xp = x + p * pw;
        int64_t i = a;
        for (; i + 16 <= b; i += 16) {
            acc0 = _mm256_fmadd_ps(vector_values(W, kind, i), xgather8(xp, W->entries + i, cb), acc0);
            acc1 = _mm256_fmadd_ps(vector_values(W, kind, i + 8), xgather8(xp, W->entries + i + 8, cb), acc1);
        }
        for (; i < b; i++) {
            uint16_t e = W->entries[i];
            tail += entry_value(W, kind, i, e) * xp[e >> cb];
        }
    }
    return hsum8(_mm256_add_ps(acc0, acc1)) + tail;
}
#else
INLINE float row_dot(const pj_sparse *W, const int kind, int64_t r, const float *x) {
    const int cb = kind == 2 ? W->code_bits : 0; /* a constant 0 for value kinds: no shifts */
    const int64_t pw = (int64_t)1 << (16 - cb);
    float s0 = 0.0f, s1 = 0.0f;
    for (int64_t p = 0; p < W->panels; p++) {
        const int64_t a = W->segptr[r * W->panels + p], b = W->segptr[r * W->panels + p + 1];
        const float *xp = x + p * pw;
        int64_t i = a;
        for (; i + 2 <= b; i += 2) {
            s0 += entry_value(W, kind, i, W->entries[i]) * xp[W->entries[i] >> cb];
            s1 += entry_value(W, kind, i + 1, W->entries[i + 1]) * xp[W->entries[i + 1] >> cb];
        }
        if (i < b) s0 += entry_value(W, kind, i, W->entries[i]) * xp[W->entries[i] >> cb];
    }
    return s0 + s1;
}
#endif

typedef struct { const pj_sparse *W; const float *x; float *y; const float *bias; const float *X; int64_t P; float *Y; } spctx;

INLINE void spmv_rows(const spctx *c, const int kind, int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; r++) {
        float s = row_dot(c->W, kind, r, c->x);
        if (kind == 1) s *= c->W->scales[r];
        c->y[r] = s + (c->bias ? c->bias[r] : 0.0f);
    }
}

static void spmv_task(void *ctx, int64_t lo, int64_t hi) {
    const spctx *c = ctx;
    switch (c->W->kind) {
    case 0: spmv_rows(c, 0, lo, hi); break;
    case 1: spmv_rows(c, 1, lo, hi); break;
    default: spmv_rows(c, 2, lo, hi); break;
    }
}

/* y[rows] = W x + bias (the batch-1 path). */
void NAME(pj_spmv)(const pj_sparse *W, const float *x, float *y, const float *bias, int nthreads) {
    spctx c = {W, x, y, bias, 0, 0, 0};
    parallel_for(spmv_task, &c, W->rows, chunk_for(W->rows, nthreads), nthreads);
}

/* ---------------------------------------------------------------- batched: Y[N][P] = W X[K][P] */
/* S accumulator sets, one per nonzero of a group of S: an FMA waits ~4 cycles for its
 * accumulator, so with one or two vectors per nonzero (batch <= 32) four sets keep the FMA
 * pipes busy (measured: 2 sets ran batch 8 at ~3 cycles per nonzero); wide tiles need fewer. */
#define SETS 4
INLINE void spmm_tile(const pj_sparse *W, const int kind, const int NV, const int S, int64_t r, const float *X,
                      int64_t P, int64_t j0, vm last, float *Y, const float *bias) {
    vf acc[SP_NV_MAX][SETS];
    vm m[SP_NV_MAX];
    for (int v = 0; v < NV; v++) {
        for (int u = 0; u < S; u++) acc[v][u] = VZERO();
        m[v] = (v == NV - 1) ? last : vmask(VW);
    }
    const int cb = kind == 2 ? W->code_bits : 0; /* a constant 0 for value kinds: no shifts */
    const int64_t pw = (int64_t)1 << (16 - cb);
    for (int64_t p = 0; p < W->panels; p++) {
        const int64_t a = W->segptr[r * W->panels + p], b = W->segptr[r * W->panels + p + 1];
        const float *xb = X + p * pw * P + j0;
        int64_t i = a;
        for (; i + S <= b; i += S) {
#pragma GCC unroll 4
            for (int u = 0; u < S; u++) {
                uint16_t e = W->entries[i + u];
                vf w = VSET1(entry_value(W, kind, i + u, e));
                const float *xr = xb + (int64_t)(e >> cb) * P;
#pragma GCC unroll 8
                for (int v = 0; v < NV; v++) acc[v][u] = VFMA(w, VLOADM(m[v], xr + v * VW), acc[v][u]);
            }
        }
        for (; i < b; i++) {
            uint16_t e = W->entries[i];
            vf w = VSET1(entry_value(W, kind, i, e));
            const float *xr = xb + (int64_t)(e >> cb) * P;
#pragma GCC unroll 8
            for (int v = 0; v < NV; v++) acc[v][0] = VFMA(w, VLOADM(m[v], xr + v * VW), acc[v][0]);
        }
    }
    vf s = VSET1(kind == 1 ? W->scales[r] : 1.0f), bv = VSET1(bias ? bias[r] : 0.0f);
#pragma GCC unroll 8
    for (int v = 0; v < NV; v++) {
        vf sum = acc[v][0];
        for (int u = 1; u < S; u++) sum = VADD(sum, acc[v][u]);
        VSTOREM(Y + r * P + j0 + v * VW, m[v], VADD(VMUL(sum, s), bv));
    }
}

#if defined(__AVX512F__)
/* Batch <= 8 on AVX-512: 256-bit vectors. A zmm load masked down to 8 lanes ran 1.5x slower
 * per nonzero than a full one on Zen 4 (1.27 vs 0.84 ns at batch 8 vs 16). */
INLINE void spmm_tile8(const pj_sparse *W, const int kind, int64_t r, const float *X, int64_t P, __mmask8 m,
                       float *Y, const float *bias) {
    __m256 acc[SETS];
    for (int u = 0; u < SETS; u++) acc[u] = _mm256_setzero_ps();
    const int cb = kind == 2 ? W->code_bits : 0;
    const int64_t pw = (int64_t)1 << (16 - cb);
    for (int64_t p = 0; p < W->panels; p++) {
        const int64_t a = W->segptr[r * W->panels + p], b = W->segptr[r * W->panels + p + 1];
        const float *xb = X + p * pw * P;
        int64_t i = a;
        for (; i + SETS <= b; i += SETS) {
#pragma GCC unroll 4
            for (int u = 0; u < SETS; u++) {
                uint16_t e = W->entries[i + u];
                acc[u] = _mm256_fmadd_ps(_mm256_set1_ps(entry_value(W, kind, i + u, e)),
                                         _mm256_maskz_loadu_ps(m, xb + (int64_t)(e >> cb) * P), acc[u]);
            }
        }
        for (; i < b; i++) {
            uint16_t e = W->entries[i];
            acc[0] = _mm256_fmadd_ps(_mm256_set1_ps(entry_value(W, kind, i, e)),
                                     _mm256_maskz_loadu_ps(m, xb + (int64_t)(e >> cb) * P), acc[0]);
        }
    }
    __m256 sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    __m256 s = _mm256_set1_ps(kind == 1 ? W->scales[r] : 1.0f), bv = _mm256_set1_ps(bias ? bias[r] : 0.0f);
    _mm256_mask_storeu_ps(Y + r * P, m, _mm256_add_ps(_mm256_mul_ps(sum, s), bv));
}
#endif

INLINE void spmm_items(const spctx *c, const int kind, int64_t lo, int64_t hi) {
    const int64_t P = c->P;
    const int64_t rows = c->W->rows;
    for (int64_t it = lo; it < hi; it++) {
        /* item = tile * rows + row: tile-major, so that the X columns of one tile (a conv's
         * 64 output positions: 590 KB of im2col at 256 x 3 x 3 inputs) stay in L2 while every
         * row passes over them (row-major items fetched each nonzero's whole X row from L3) */
        int64_t t = it / rows, r = it % rows;
        int64_t j0 = t * SP_TILE, w = P - j0 < SP_TILE ? P - j0 : SP_TILE;
        int nv = (int)((w + VW - 1) / VW);
        vm last = vmask(w - (int64_t)(nv - 1) * VW);
#if defined(__AVX512F__)
        if (P <= 8) {
            spmm_tile8(c->W, kind, r, c->X, P, (__mmask8)((1u << P) - 1u), c->Y, c->bias);
            continue;
        }
#endif
        switch (nv) {
        case 1: spmm_tile(c->W, kind, 1, 4, r, c->X, P, j0, last, c->Y, c->bias); break;
        case 2: spmm_tile(c->W, kind, 2, 4, r, c->X, P, j0, last, c->Y, c->bias); break;
        case 3: spmm_tile(c->W, kind, 3, 2, r, c->X, P, j0, last, c->Y, c->bias); break;
        case 4: spmm_tile(c->W, kind, 4, 2, r, c->X, P, j0, last, c->Y, c->bias); break;
        case 5: spmm_tile(c->W, kind, 5, 1, r, c->X, P, j0, last, c->Y, c->bias); break;
        case 6: spmm_tile(c->W, kind, 6, 1, r, c->X, P, j0, last, c->Y, c->bias); break;
        case 7: spmm_tile(c->W, kind, 7, 1, r, c->X, P, j0, last, c->Y, c->bias); break;
        default: spmm_tile(c->W, kind, 8, 1, r, c->X, P, j0, last, c->Y, c->bias); break;
        }
    }
}

static void spmm_task(void *ctx, int64_t lo, int64_t hi) {
    const spctx *c = ctx;
    switch (c->W->kind) {
    case 0: spmm_items(c, 0, lo, hi); break;
    case 1: spmm_items(c, 1, lo, hi); break;
    default: spmm_items(c, 2, lo, hi); break;
    }
}

void NAME(pj_spmm)(const pj_sparse *W, const float *X, int64_t P, float *Y, const float *bias, int nthreads) {
    spctx c = {W, 0, 0, bias, X, P, Y};
    int64_t items = W->rows * ((P + SP_TILE - 1) / SP_TILE);
    parallel_for(spmm_task, &c, items, chunk_for(items, nthreads), nthreads);
}

/* ---------------------------------------------------------------- direct sparse conv (AVX-512) */
/* Stride 1, output planes of at most 16 x 16: each nonzero (co, ci, kh, kw) adds v times the
 * shifted input window to 16 accumulators, one zmm per output row, reading the zero-padded
 * input xp[ci][rows][ld] (an L2-sized 256 x 18 x 18 floats at 256 channels, 14 x 14) instead
 * of a 9x larger im2col matrix, and skipping the im2col pass. off[c]: the window's offset for
 * column c = ci * kh * kw + kh * k + kw. Lanes past the output width and rows past its
 * height are computed from padding and not stored. */
#if defined(__AVX512F__)
typedef struct { const pj_sparse *W; const float *xp; const int32_t *off; int64_t ld, oh, ow; float *out;
                 const float *bias; } convctx;

INLINE void conv_rows(const convctx *c, const int kind, int64_t lo, int64_t hi) {
    const pj_sparse *W = c->W;
    const int64_t ld = c->ld, oh = c->oh;
    const __mmask16 m = vmask(c->ow);
    for (int64_t r = lo; r < hi; r++) {
        __m512 acc[16];
        for (int i = 0; i < 16; i++) acc[i] = _mm512_setzero_ps();
        for (int64_t p = 0; p < W->panels; p++) {
            const int cb = kind == 2 ? W->code_bits : 0;
            const int64_t pw = (int64_t)1 << (16 - cb);
            const int64_t sa = W->segptr[r * W->panels + p], sb = W->segptr[r * W->panels + p + 1];
            for (int64_t i = sa; i < sb; i++) {
                uint16_t e = W->entries[i];
                __m512 v = _mm512_set1_ps(entry_value(W, kind, i, e));
                const float *base = c->xp + c->off[p * pw + (e >> cb)];
#pragma GCC unroll 16
                for (int q = 0; q < 16; q++) acc[q] = _mm512_fmadd_ps(v, _mm512_maskz_loadu_ps(m, base + q * ld), acc[q]);
            }
        }
        __m512 s = _mm512_set1_ps(kind == 1 ? W->scales[r] : 1.0f), bv = _mm512_set1_ps(c->bias ? c->bias[r] : 0.0f);
        float *o = c->out + r * oh * c->ow;
        for (int q = 0; q < oh; q++) _mm512_mask_storeu_ps(o + q * c->ow, m, _mm512_add_ps(_mm512_mul_ps(acc[q], s), bv));
    }
}

static void conv_task(void *ctx, int64_t lo, int64_t hi) {
    const convctx *c = ctx;
    switch (c->W->kind) {
    case 0: conv_rows(c, 0, lo, hi); break;
    case 1: conv_rows(c, 1, lo, hi); break;
    default: conv_rows(c, 2, lo, hi); break;
    }
}
#endif

/* returns 0 when this variant has no direct kernel (the caller uses im2col) */
int NAME(pj_conv_direct)(const pj_sparse *W, const float *xp, const int32_t *off, int64_t ld, int64_t oh, int64_t ow,
                         float *out, const float *bias, int nthreads) {
#if defined(__AVX512F__)
    if (oh > 16 || ow > 16) return 0;
    convctx c = {W, xp, off, ld, oh, ow, out, bias};
    parallel_for(conv_task, &c, W->rows, chunk_for(W->rows, nthreads), nthreads);
    return 1;
#else
    (void)W; (void)xp; (void)off; (void)ld; (void)oh; (void)ow; (void)out; (void)bias; (void)nthreads;
    return 0;
#endif
}

/* ---------------------------------------------------------------- ternary / binary, batch 1 */
/* x must hold words * 16 floats (zero padded past cols). */
#if defined(__AVX512F__)
/* Masked adds for one plane and masked FMAs (x * 1 + acc) for the other: the adds and the
 * FMAs issue on different FP pipes, so both planes cost about one cycle per 16 weights. */
#define PJ_ADD(acc, bits, xv) acc = _mm512_mask_add_ps(acc, _cvtu32_mask16(bits), acc, xv)
#define PJ_FMA(acc, bits, xv) acc = _mm512_mask3_fmadd_ps(xv, one, acc, _cvtu32_mask16(bits))
INLINE void bits_dot(const pj_bits *B, int64_t r, const float *x, float *sp, float *sm) {
    const __m512 one = _mm512_set1_ps(1.0f);
    __m512 p0 = _mm512_setzero_ps(), p1 = p0, p2 = p0, p3 = p0, m0 = p0, m1 = p0, m2 = p0, m3 = p0;
    const uint16_t *pb = B->plus + r * B->words, *mb = B->minus ? B->minus + r * B->words : 0;
    if (mb) {
        for (int64_t w = 0; w < B->words; w += 4) {
            __m512 x0 = _mm512_loadu_ps(x + 16 * w), x1 = _mm512_loadu_ps(x + 16 * w + 16);
            __m512 x2 = _mm512_loadu_ps(x + 16 * w + 32), x3 = _mm512_loadu_ps(x + 16 * w + 48);
            PJ_ADD(p0, pb[w], x0); PJ_ADD(p1, pb[w + 1], x1); PJ_ADD(p2, pb[w + 2], x2); PJ_ADD(p3, pb[w + 3], x3);
            PJ_FMA(m0, mb[w], x0); PJ_FMA(m1, mb[w + 1], x1); PJ_FMA(m2, mb[w + 2], x2); PJ_FMA(m3, mb[w + 3], x3);
        }
    } else {
        for (int64_t w = 0; w < B->words; w += 4) {
            PJ_ADD(p0, pb[w], _mm512_loadu_ps(x + 16 * w));
            PJ_FMA(p1, pb[w + 1], _mm512_loadu_ps(x + 16 * w + 16));
            PJ_ADD(p2, pb[w + 2], _mm512_loadu_ps(x + 16 * w + 32));
            PJ_FMA(p3, pb[w + 3], _mm512_loadu_ps(x + 16 * w + 48));
        }
    }
    *sp = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(p0, p1), _mm512_add_ps(p2, p3)));
    *sm = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(m0, m1), _mm512_add_ps(m2, m3)));
}
#undef PJ_ADD
#undef PJ_FMA
#elif defined(__AVX2__)
INLINE __m256 bits8(unsigned byte) {
    const __m256i sel = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    __m256i b = _mm256_and_si256(_mm256_set1_epi32((int)byte), sel);
    return _mm256_castsi256_ps(_mm256_cmpeq_epi32(b, sel));
}
INLINE void bits_dot(const pj_bits *B, int64_t r, const float *x, float *sp, float *sm) {
    __m256 p0 = _mm256_setzero_ps(), p1 = p0, m0 = p0, m1 = p0;
    const uint16_t *pb = B->plus + r * B->words, *mb = B->minus ? B->minus + r * B->words : 0;
    for (int64_t w = 0; w < B->words; w++) {
        __m256 x0 = _mm256_loadu_ps(x + 16 * w), x1 = _mm256_loadu_ps(x + 16 * w + 8);
        unsigned pw = pb[w];
        p0 = _mm256_add_ps(p0, _mm256_and_ps(bits8(pw & 255u), x0));
        p1 = _mm256_add_ps(p1, _mm256_and_ps(bits8(pw >> 8), x1));
        if (mb) {
            unsigned mw = mb[w];
            m0 = _mm256_add_ps(m0, _mm256_and_ps(bits8(mw & 255u), x0));
            m1 = _mm256_add_ps(m1, _mm256_and_ps(bits8(mw >> 8), x1));
        }
    }
    *sp = hsum8(_mm256_add_ps(p0, p1));
    *sm = hsum8(_mm256_add_ps(m0, m1));
}
#else
INLINE void bits_dot(const pj_bits *B, int64_t r, const float *x, float *sp, float *sm) {
    const uint16_t *pb = B->plus + r * B->words, *mb = B->minus ? B->minus + r * B->words : 0;
    float a = 0.0f, c = 0.0f;
    for (int64_t w = 0; w < B->words; w++) {
        unsigned pw = pb[w], mw = mb ? mb[w] : 0u;
        for (int j = 0; j < 16; j++) {
            float v = x[16 * w + j];
            if (pw >> j & 1u) a += v;
            if (mw >> j & 1u) c += v;
        }
    }
    *sp = a;
    *sm = c;
}
#endif

/* ternary: y = scale_plus * (P x) - scale_minus * (M x); binary: y = scale * (2 (P x) - sum x) */
typedef struct { const pj_bits *B; const float *x; float xsum; float *y; const float *bias;
                 const float *X; int64_t P; const float *colsum; float *Y; } bitsctx;

static void bits_mv_task(void *ctx, int64_t lo, int64_t hi) {
    const bitsctx *c = ctx;
    const pj_bits *B = c->B;
    for (int64_t r = lo; r < hi; r++) {
        float sp, sm;
        bits_dot(B, r, c->x, &sp, &sm);
        float out = B->ternary ? B->scale_plus[r] * sp - B->scale_minus[r] * sm : B->scale_plus[r] * (2.0f * sp - c->xsum);
        c->y[r] = out + (c->bias ? c->bias[r] : 0.0f);
    }
}

void NAME(pj_bits_mv)(const pj_bits *B, const float *x, float xsum, float *y, const float *bias, int nthreads) {
    bitsctx c = {B, x, xsum, y, bias, 0, 0, 0, 0};
    parallel_for(bits_mv_task, &c, B->rows, chunk_for(B->rows, nthreads), nthreads);
}

/* ---------------------------------------------------------------- ternary / binary, table lookup (AVX-512) */
/* bitnet.cpp's TL idea with float activations: 3 ternary weights (27 combinations) or 5 binary
 * weights (32) form one byte code; per call, every group of input columns gets a 32-entry table
 * of its signed partial sums, and one vpermt2ps looks up 16 rows' codes in it at once: 48 (80)
 * weights per lookup, against 16 per masked add on the bit planes, where Zen 4 issues about one
 * masked op per cycle. codes: [row blocks of 16][groups][16] bytes; tables: [groups][32] floats.
 * mode 0: ternary, tables unscaled (+1/-1), y = scale_plus[r] * sum;
 * mode 1: ternary, tables carry +a / -b (one pair for the whole layer), y = sum;
 * mode 2: binary, 5 weights per code, tables +1/-1, y = scale_plus[r] * sum. */
void NAME(pj_lut_tables)(const float *x, int64_t groups, int mode, float a, float b, float *tables) {
    for (int64_t g = 0; g < groups; g++) {
        float *t = tables + 32 * g;
        if (mode == 2) {
            const float *xg = x + 5 * g;
            for (int c = 0; c < 32; c++) {
                float s = 0.0f;
                for (int j = 0; j < 5; j++) s += (c >> j & 1) ? xg[j] : -xg[j];
                t[c] = s;
            }
        } else {
            const float *xg = x + 3 * g;
            float v[3][3];
            for (int j = 0; j < 3; j++) { v[j][0] = -b * xg[j]; v[j][1] = 0.0f; v[j][2] = a * xg[j]; }
            for (int c = 0; c < 27; c++) t[c] = v[0][c % 3] + v[1][(c / 3) % 3] + v[2][c / 9];
            for (int c = 27; c < 32; c++) t[c] = 0.0f;
        }
    }
}

#if defined(__AVX512F__)
typedef struct { const uint8_t *codes; int64_t rows, groups; const float *tables; int mode; const float *scale;
                 float *y; const float *bias; } lutctx;

static void lut_task(void *ctx, int64_t qlo, int64_t qhi) {
    const lutctx *c = ctx;
    const uint8_t *codes = c->codes;
    const int64_t rows = c->rows, groups = c->groups, blocks = (rows + 15) / 16;
    const float *tables = c->tables, *scale = c->scale, *bias = c->bias;
    const int mode = c->mode;
    float *y = c->y;
    for (int64_t qd = qlo; qd < qhi; qd++) {
        const int64_t b0 = 4 * qd, nb = blocks - b0 < 4 ? blocks - b0 : 4;
        __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
        const uint8_t *cb[4];
        for (int q = 0; q < 4; q++) cb[q] = codes + ((b0 + (q < nb ? q : 0)) * groups) * 16;
        for (int64_t g = 0; g < groups; g++) {
            __m512 lo = _mm512_loadu_ps(tables + 32 * g), hi = _mm512_loadu_ps(tables + 32 * g + 16);
            for (int q = 0; q < 4; q++) {
                __m512i idx = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(cb[q] + 16 * g)));
                acc[q] = _mm512_add_ps(acc[q], _mm512_permutex2var_ps(lo, idx, hi));
            }
        }
        for (int q = 0; q < nb; q++) {
            const int64_t r0 = 16 * (b0 + q), n = rows - r0 < 16 ? rows - r0 : 16;
            __mmask16 m = vmask(n);
            __m512 out = acc[q];
            if (mode != 1) out = _mm512_mul_ps(out, _mm512_maskz_loadu_ps(m, scale + r0));
            if (bias) out = _mm512_add_ps(out, _mm512_maskz_loadu_ps(m, bias + r0));
            _mm512_mask_storeu_ps(y + r0, m, out);
        }
    }
}
#endif

int NAME(pj_lut_mv)(const uint8_t *codes, int64_t rows, int64_t groups, const float *tables, int mode,
                    const float *scale, float *y, const float *bias, int nthreads) {
#if defined(__AVX512F__)
    lutctx c = {codes, rows, groups, tables, mode, scale, y, bias};
    int64_t quads = ((rows + 15) / 16 + 3) / 4;
    parallel_for(lut_task, &c, quads, chunk_for(quads, nthreads), nthreads);
    return 1;
#else
    (void)codes; (void)rows; (void)groups; (void)tables; (void)mode; (void)scale; (void)y; (void)bias; (void)nthreads;
    return 0; /* this variant has no table kernel: the caller uses the bit planes */
#endif
}

/* ---------------------------------------------------------------- ternary / binary, batched */
/* Y[N][P] from X[K][P]: walks the set bits of each row, adding whole rows of X. xsum[P]: the
 * column sums of X (binary only). */
INLINE void bits_tile(const pj_bits *B, const int NV, int64_t r, const float *X, int64_t P, int64_t j0, vm last,
                      const float *xsum, float *Y, const float *bias) {
    /* One pass over the nonzero bits (plus | minus), 64 columns at a time (a mispredicted loop
     * exit per 64 columns, not per 16), each adding +scale_plus or -scale_minus times a row of
     * X; two accumulator sets alternate so that consecutive FMAs do not wait on each other. */
    vf acc[NV_MAX][2];
    vm m[NV_MAX];
    for (int v = 0; v < NV; v++) { acc[v][0] = VZERO(); acc[v][1] = VZERO(); m[v] = (v == NV - 1) ? last : vmask(VW); }
    const uint16_t *pb = B->plus + r * B->words, *mb = B->ternary ? B->minus + r * B->words : 0;
    /* indexed by the plus bit: a table lookup, not a branch on random signs */
    const float sign[2] = {B->ternary ? -B->scale_minus[r] : 0.0f, B->ternary ? B->scale_plus[r] : 1.0f};
    for (int64_t w = 0; w < B->words; w += 4) {
        uint64_t pw, mw = 0;
        memcpy(&pw, pb + w, 8);
        if (mb) memcpy(&mw, mb + w, 8);
        uint64_t nz = pw | mw;
        const float *xw = X + 16 * w * P + j0;
        while (nz) {
            int j = __builtin_ctzll(nz);
            nz &= nz - 1;
            vf s0 = VSET1(sign[pw >> j & 1u]);
            const float *x0 = xw + (int64_t)j * P;
#pragma GCC unroll 4
            for (int v = 0; v < NV; v++) acc[v][0] = VFMA(s0, VLOADM(m[v], x0 + v * VW), acc[v][0]);
            if (!nz) break;
            j = __builtin_ctzll(nz);
            nz &= nz - 1;
            vf s1 = VSET1(sign[pw >> j & 1u]);
            const float *x1 = xw + (int64_t)j * P;
#pragma GCC unroll 4
            for (int v = 0; v < NV; v++) acc[v][1] = VFMA(s1, VLOADM(m[v], x1 + v * VW), acc[v][1]);
        }
    }
    vf bv = VSET1(bias ? bias[r] : 0.0f), scale = VSET1(B->scale_plus[r]), two = VSET1(2.0f);
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++) {
        vf sum = VADD(acc[v][0], acc[v][1]), out;
        if (B->ternary) out = sum;
        else out = VMUL(scale, VSUB(VMUL(two, sum), VLOADM(m[v], xsum + j0 + v * VW)));
        VSTOREM(Y + r * P + j0 + v * VW, m[v], VADD(out, bv));
    }
}

static void bits_mm_task(void *ctx, int64_t lo, int64_t hi) {
    const bitsctx *c = ctx;
    const int64_t P = c->P, tiles = (P + TILE - 1) / TILE;
    for (int64_t it = lo; it < hi; it++) {
        int64_t r = it / tiles, t = it % tiles;
        int64_t j0 = t * TILE, w = P - j0 < TILE ? P - j0 : TILE;
        int nv = (int)((w + VW - 1) / VW);
        vm last = vmask(w - (int64_t)(nv - 1) * VW);
        switch (nv) {
        case 1: bits_tile(c->B, 1, r, c->X, P, j0, last, c->colsum, c->Y, c->bias); break;
        case 2: bits_tile(c->B, 2, r, c->X, P, j0, last, c->colsum, c->Y, c->bias); break;
        case 3: bits_tile(c->B, 3, r, c->X, P, j0, last, c->colsum, c->Y, c->bias); break;
        default: bits_tile(c->B, 4, r, c->X, P, j0, last, c->colsum, c->Y, c->bias); break;
        }
    }
}

void NAME(pj_bits_mm)(const pj_bits *B, const float *X, int64_t P, const float *xsum, float *Y, const float *bias,
                      int nthreads) {
    bitsctx c = {B, 0, 0.0f, 0, bias, X, P, xsum, Y};
    int64_t items = B->rows * ((P + TILE - 1) / TILE);
    parallel_for(bits_mm_task, &c, items, chunk_for(items, nthreads), nthreads);
}

/* ---------------------------------------------------------------- bandwidth probe */
/* STREAM-style read probe: sums n floats (each thread its share); the caller times it. */
typedef struct { const float *a; int64_t n; double *partial; } probectx;

static void probe_task(void *ctx, int64_t clo, int64_t chi) {
    const probectx *pc = ctx;
    const float *a = pc->a;
    const int64_t n = pc->n;
    double total = 0.0;
    for (int64_t c = clo; c < chi; c++) {
        int64_t lo = c * 4096, hi = lo + 4096 < n ? lo + 4096 : n;
        vf s0 = VZERO(), s1 = VZERO(), s2 = VZERO(), s3 = VZERO();
        int64_t i = lo;
        for (; i + 4 * VW <= hi; i += 4 * VW) {
            s0 = VADD(s0, VLOADM(vmask(VW), a + i));
            s1 = VADD(s1, VLOADM(vmask(VW), a + i + VW));
            s2 = VADD(s2, VLOADM(vmask(VW), a + i + 2 * VW));
            s3 = VADD(s3, VLOADM(vmask(VW), a + i + 3 * VW));
        }
        float buf[VW];
        vf s = VADD(VADD(s0, s1), VADD(s2, s3));
        memcpy(buf, &s, sizeof buf);
        for (int j = 0; j < VW; j++) total += buf[j];
        for (; i < hi; i++) total += a[i];
    }
    pc->partial[clo] = total; /* one slot per chunk start: chunks never share a start */
}

double NAME(pj_read_probe)(const float *a, int64_t n, int nthreads, double *partial) {
    /* partial: one double per 4096 floats (the caller's scratch) */
    int64_t blocks = (n + 4095) / 4096;
    int64_t chunk = (blocks + nthreads - 1) / (nthreads > 0 ? nthreads : 1);
    for (int64_t i = 0; i < blocks; i++) partial[i] = 0.0;
    probectx c = {a, n, partial};
    parallel_for(probe_task, &c, blocks, chunk, nthreads);
    double total = 0.0;
    for (int64_t i = 0; i < blocks; i++) total += partial[i];
    return total;
}
