// Average-linkage agglomerative clustering stopped at two clusters (SignGuard, clipped
// clustering), CPU.
#pragma once
#include <cstdint>

namespace flagcore {

// dist: a symmetric p x p matrix of finite distances (row-major; the diagonal is ignored).
// Merges, p - 2 times, the closest pair of clusters (i < j, ties to the lowest (i, j) in
// lexicographic order), the merged cluster keeping index i and its distance to every other
// cluster k the size-weighted average (size_i d_ik + size_j d_jk) / (size_i + size_j) (Lance-
// Williams, one rounding per operation, never fused), and writes labels[k] = 1 where row k
// ended in another cluster than row 0, else 0. The same decisions as the O(p^3) greedy search
// over the whole matrix at every merge, found in O(p^2) typical time: each row keeps its nearest
// neighbour among the higher rows, and a merge re-scans only the rows whose neighbour it removed
// (an average is never below the smaller of the two distances it replaces; a rounded one that
// is, or that ties at a lower index, is taken directly). Ctrl-C is checked every 64 merges.
void two_clusters_average(const double* dist, int64_t p, int64_t* labels);
// The same on `work`, which it overwrites (no p x p copy).
void two_clusters_average_in_place(double* work, int64_t p, int64_t* labels);

}  // namespace flagcore
