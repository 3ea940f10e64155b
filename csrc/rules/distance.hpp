// Distance-based robust aggregation rules, computed in p-space from Gram matrices (CPU).
//
// Every function here works on one problem: G is the p x p float64 Gram matrix of the p
// gradients (row-major, G[i*p+j] = <x_i, x_j>; flagcore::gram_cpu computes it in one read of
// the data). Nothing here touches the gradients: each rule returns coefficients c (the
// aggregate is sum_i c_i x_i, one weighted-sum pass) or a selection of workers.
//
// Squared distances are D_ij = G_ii + G_jj - 2 G_ij, clamped at 0. They lose precision when
// gradients are nearly equal: the absolute error is about 1e-16 * (G_ii + G_jj) (float64
// Gram), so distances below ~1e-8 times the gradient norms are noise. Rules only compare
// distances, so this can only swap workers that are that close.
//
// Excluded workers: `excluded` (p bytes) is in/out. On entry 1 marks a worker to leave out; a
// worker whose G_ii is not finite (a NaN/Inf value, or a squared norm that overflows float64)
// is added. Excluded workers get coefficient 0 and never enter a distance; with e of them
// the rule runs on pe = p - e workers with f_eff = max(f - e, 0) (an excluded worker counts
// as one of the f Byzantine ones). With pe = 0 every coefficient is 0.
#pragma once
#include <cstdint>

namespace flagcore {

// Marks workers with a non-finite G_ii in `excluded`; returns the number of active workers.
int64_t mark_nonfinite(const double* G, int64_t p, uint8_t* excluded);

// A power of two s with s * max G_ii over the active workers in [0.5, 1) (1 when that maximum is
// 0; at most 2^1000). Krum, Bulyan and NNM compare the distances of s G, exactly s times those
// of G (a power of two changes no rounding), which neither overflow nor underflow: with finite
// workers of norm ~1e154, G_ii + G_jj overflowed, a sum of two such distances gave inf - inf =
// NaN in Krum's exact sum, and the NaN score won the selection.
double distance_scale(const double* G, int64_t p, const uint8_t* excluded);

// D[i*p+j] = max(s G_ii + s G_jj - 2 s G_ij, 0); 0 on the diagonal.
void squared_distances(const double* G, int64_t p, double s, double* D);

// Krum / Multi-Krum (Blanchard et al. 2017), textbook form: score_i = sum of the squared
// distances from i to its max(pe - f_eff - 2, 0) nearest other active workers; the m workers
// with the lowest scores (ties: lower index) are selected and averaged (m = 1: Krum).
// m is clamped to pe. scores: p doubles in the units of G (inf past float64's range, NaN for
// excluded workers), ranked on the scaled distances (distance_scale); selected: p bytes.
void krum_cpu(const double* G, int64_t p, int64_t f, int64_t m, double* coef, double* scores,
              uint8_t* selected, uint8_t* excluded);

// Bulyan's selection (El Mhamdi et al. 2018): theta = pe - 2 f_eff workers chosen one by one,
// each the Krum choice (with f_eff, neighbour count clamped at 0) among the workers not yet
// chosen. selected: p bytes. Returns theta; the caller then takes, per coordinate, the mean of
// the beta = theta - 2 f_eff selected values closest to their median.
int64_t bulyan_select_cpu(const double* G, int64_t p, int64_t f, uint8_t* selected, uint8_t* excluded);

// Geometric median by smoothed Weiszfeld iterations (Weiszfeld 1937; the smoothing of
// Pillutla et al. 2022): z = sum_i a_i x_i, starting from one Weiszfeld step from the medoid
// (the active worker of least F) with the medoid's own term left out (Vardi and Zhang), or the
// mean when every other worker coincides with the medoid; a <- w / sum(w),
// w_i = 1 / max(||z - x_i||, nu). Stops when the objective
// F(z) = sum_i ||z - x_i|| decreases by at most tol * F (converged) or after max_iter steps.
// Before iterating, each worker is tested exactly for being a minimiser (the unit vectors to
// the other points sum to a norm at most its multiplicity); if one is, it is returned with 0
// iterations (Weiszfeld only creeps towards a data point that is the minimiser); when several
// are (a minimiser that is not unique, e.g. two workers), the lowest index, as every tie.
// objective: F at the returned z.
void geometric_median_cpu(const double* G, int64_t p, double nu, double tol, int64_t max_iter, double* coef,
                          uint8_t* excluded, int64_t* iterations, uint8_t* converged, double* objective);

// Centered clipping (Karimireddy et al. 2021): G is (p + 1) x (p + 1), its last row the
// reference point v0. iterations times: v <- v + (1/pe) sum_i (x_i - v) min(1, tau / ||x_i - v||).
// coef: p + 1 doubles, v = sum_i coef_i x_i + coef_p v0. excluded: p bytes (workers only;
// the reference must be finite, which the caller checks).
void centered_clipping_cpu(const double* G, int64_t p, double tau, int64_t iterations, double* coef,
                           uint8_t* excluded);

// Nearest-neighbour mixing (Allouah et al. 2023): row i of M (p x p) averages the
// pe - f_eff active workers nearest to worker i (itself included; ties: lower index). Rows of
// excluded workers are 0.
void nnm_matrix_cpu(const double* G, int64_t p, int64_t f, double* M, uint8_t* excluded);

// Mixed rows of a linear pre-aggregation step (NNM, bucketing): out[i] = (sum_j A[i, j]
// x_j) / div[i] for i < p_out, over the m = p_in rows xs (the caller leaves excluded workers
// out, so a NaN row is never multiplied by 0). A is p_out x m, row-major, in the data type
// (NNM and bucketing pass 0/1 membership, so the products are exact and each mixed row is a
// sum divided by its count). Accumulated in T, each out[i, k] summed over j in order by one
// thread: the result does not depend on the thread count. Column blocks are sized to keep the
// m row segments in L2; parallel over column blocks.                    // out: [P_OUT] -> [N]
template <typename T>
void mix_rows_cpu(const T* const* xs, int64_t m, const T* A, const T* div, int64_t p_out, int64_t n,
                  T* const* out);

}  // namespace flagcore
