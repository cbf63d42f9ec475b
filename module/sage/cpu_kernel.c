/* The fused SAGE step on CPU: every tensor of a bucket updated in one OpenMP parallel region, one pass over
 * memory, no temporaries (see module/sage/cpu_kernel.py, which compiles one variant of this file per flavour).
 *
 * The per-element math is that of module/sage/updates.py's single_* functions and of the Triton kernel in
 * module/sage/triton_kernel.py, op for op, in T (float for float32 tensors, double for float64). Flavour macros,
 * set by the compiler command line so each variant is straight-line code the compiler vectorises:
 *   T, ABS, SQRT          element type and its |x|, sqrt
 *   ALGO                  0 adamax, 1 adamw, 2 adam, 3 sgd
 *   SAGE, FORMULA         SAGE on/off; 0 reference, 1 paper, 2..6 ablation1..ablation5
 *   HAS_DECAY, HAS_MOMENTUM, NESTEROV, FIRST_STEP
 */
#include <math.h>
#include <stdint.h>
#include <omp.h>

/* Indices into the scalar array: module/sage/kernel_args.py's SCALAR_NAMES. */
enum { LR, BETA1, ONE_MINUS_BETA1, BETA2, ONE_MINUS_BETA2, BETA3, ONE_MINUS_BETA3, EPS, EPS_SQ, WEIGHT_DECAY,
       STEP_SIZE, DECAY, BIAS_CORRECTION1, BIAS_CORRECTION2_SQRT, IPT_CORRECTION, MOMENTUM, ONE_MINUS_DAMPENING,
       GRAD_FACTOR, N_SCALARS };

/* Buckets smaller than this run on one thread (a parallel region costs more than it saves). */
#define MIN_PARALLEL 32768
/* Threads split the concatenated elements at multiples of this (whole vectors and cache lines). */
#define GRAIN 64

static inline T sage_factor(T ipt, T ipt_avg, const T *s) {
    T ihat = ipt_avg * s[IPT_CORRECTION];
    T u = ABS(ipt - ihat);
#if FORMULA == 0
    return u / (ihat + s[EPS_SQ]);
#elif FORMULA == 1
    return (u + s[EPS]) / (ihat + s[EPS]);
#elif FORMULA == 2
    return (u + s[EPS]) * (ihat + s[EPS]);
#elif FORMULA == 3
    return (ihat + s[EPS]) / (u + s[EPS]);
#elif FORMULA == 4
    (void)u;
    return ihat + s[EPS];
#elif FORMULA == 5
    (void)u;
    return (T)1 / (ihat + s[EPS]);
#else
    (void)ihat;
    return u + s[EPS];
#endif
}

/* Elements [lo, hi) of one tensor. */
static void update_range(T *restrict pp, const T *restrict gp, T *restrict s0, T *restrict s1,
                         T *restrict ia, int64_t lo, int64_t hi, const T *restrict s) {
    (void)s0; (void)s1; (void)ia;
#pragma omp simd
    for (int64_t j = lo; j < hi; j++) {
        T p = pp[j];
        T g = gp[j] * s[GRAD_FACTOR]; /* AMP unscale and maximize's sign, in registers */
        T update;
#if ALGO == 3 /* sgd */
#if HAS_DECAY
        T d = g + s[WEIGHT_DECAY] * p;
#else
        T d = g;
#endif
#if HAS_MOMENTUM
#if FIRST_STEP
        T buf = d;
#else
        T buf = s0[j] * s[MOMENTUM] + s[ONE_MINUS_DAMPENING] * d;
#endif
        s0[j] = buf;
#if NESTEROV
        d = d + s[MOMENTUM] * buf;
#else
        d = buf;
#endif
#endif
        update = d;
#else /* adamax, adamw, adam */
        T m = s0[j], v = s1[j];
#if ALGO == 0 /* adamax */
        m = m * s[BETA1] + s[ONE_MINUS_BETA1] * g;
        T decayed = v * s[BETA2], floor_ = ABS(g) + s[EPS];
        v = (decayed > floor_ || decayed != decayed) ? decayed : floor_; /* torch.maximum: NaN propagates */
        update = m / (v + s[EPS]);
#if HAS_DECAY
        update = update + s[WEIGHT_DECAY] * p;
#endif
#elif ALGO == 1 /* adamw */
        m = m * s[BETA1] + s[ONE_MINUS_BETA1] * g;
        v = v * s[BETA2] + s[ONE_MINUS_BETA2] * (g * g);
        update = m / (SQRT(v) + s[EPS]);
#else /* adam: L2 decay folded into the moments' gradient */
#if HAS_DECAY
        T d = g + s[WEIGHT_DECAY] * p;
#else
        T d = g;
#endif
        m = m * s[BETA1] + s[ONE_MINUS_BETA1] * d;
        v = v * s[BETA2] + s[ONE_MINUS_BETA2] * (d * d);
        update = (m / s[BIAS_CORRECTION1]) / (SQRT(v) / s[BIAS_CORRECTION2_SQRT] + s[EPS]);
#endif
        s0[j] = m;
        s1[j] = v;
#endif
#if SAGE
        T ipt = ABS(p * g);
        T avg = ia[j] * s[BETA3] + s[ONE_MINUS_BETA3] * ipt;
        ia[j] = avg;
        update = update * sage_factor(ipt, avg, s);
#endif
#if ALGO == 1
        p = p - update * s[STEP_SIZE];
#if HAS_DECAY
        p = p - p * s[DECAY];
#endif
#else
        p = p - update * s[LR];
#endif
        pp[j] = p;
    }
}

/* One step of n tensors. Column arrays hold each tensor's address (NULL where the flavour has no such
 * buffer); scalars are float64, rounded once to T as torch rounds a Python float for a T tensor. Each thread
 * takes one contiguous slice of the tensors' concatenated elements, so there is one parallel region and one
 * barrier per bucket, whatever the number of tensors. */
void sage_step(int64_t n, T **params, T **grads, T **state0, T **state1, T **ipt_avgs, const int64_t *numels,
               const double *scalars, int nthreads) {
    T s[N_SCALARS];
    for (int k = 0; k < N_SCALARS; k++)
        s[k] = (T)scalars[k];
    int64_t total = 0;
    for (int64_t k = 0; k < n; k++)
        total += numels[k];
#pragma omp parallel num_threads(nthreads) if (total >= MIN_PARALLEL)
    {
        int64_t threads = omp_get_num_threads(), t = omp_get_thread_num();
        int64_t share = (total + threads - 1) / threads;
        share = (share + GRAIN - 1) / GRAIN * GRAIN;
        int64_t lo = share * t, hi = lo + share < total ? lo + share : total, base = 0;
        for (int64_t k = 0; k < n && base < hi; base += numels[k], k++) {
            int64_t first = lo > base ? lo - base : 0, last = hi - base < numels[k] ? hi - base : numels[k];
            if (first < last)
                update_range(params[k], grads[k], state0[k], state1[k], ipt_avgs[k], first, last, s);
        }
    }
}
