// Krylov methods for the top of a spectrum:
//  * block Golub-Kahan-Lanczos for the top-k singular triplets of a dense matrix,
//  * block Lanczos for the extreme eigenpairs of a symmetric operator (matvecs),
//  * stochastic Lanczos quadrature (SLQ) for spectral densities.
//
// All three run the one thick-restart block Lanczos engine with full (CGS2)
// reorthogonalization (specdyn/krylov/engine.hpp), here on the CPU backend;
// the Krylov basis and the small projected problems are kept in double
// whatever the matrix dtype.
//
// Singular triplets: the Krylov space of Golub-Kahan-Lanczos with start block
// V1 is K(A^T A, V1), so the solver runs block Lanczos on the Gram operator
// A^T A (or A A^T, whichever can be applied in ONE sweep over the stored
// matrix: row panels of a row-major M give M^T (M X) with each panel read once).
// A block step therefore reads A once instead of twice. The answer is then
// certified by an explicit pass: every returned triplet satisfies
// ||A v - s u|| <= tol ||A|| and ||A^T u - s v|| <= tol ||A|| (computed, not
// estimated), else Info::converged is false.
//
// Thread-count invariance: every reduction the solvers make (the panel sweep,
// the orthogonalization, norms) is split into a fixed number of parts and
// summed in a fixed order, so the same inputs give the same bits at any
// OpenMP/BLAS thread count. Operators passed in (MatMat) must do the same for
// the results to be invariant.
#pragma once
#include <cstdint>
#include <functional>
#include <vector>

namespace specdyn::lanczos {

struct Options {
  double tol = 1e-10;   // stop when every residual <= tol * (estimate of ||A||)
  int block = 0;        // block size; 0 = measured defaults: top_singular 1 (k <= 2) or 2, then
                        // k + 2 if a repeated value might hide copies; a warm start first tries
                        // one step with the whole previous block. top_eigs max(4, min(k, 16)).
  int max_passes = 0;   // cap on passes over the matrix (A and A^T products); 0 = automatic
  int max_basis = 0;    // cap on Krylov basis columns before a restart; 0 = automatic
  uint64_t seed = 0;    // random start (counter-based stream rng::kProbes)
  // top_singular: the tracking certificate. Values separated from their neighbours
  // by more than a few residuals are certified to tol as usual; a value inside a
  // cluster (the edge of a random bulk, where a finite matrix's values fluctuate far
  // more than tol) is certified to the cluster's resolution: its residual bound, a
  // distance within which a true singular value lies, is at most a tenth of the
  // spacing to its nearest neighbour (a cluster: neighbours closer than 1% of ||A||).
  // Info::spacing says which values were certified which way.
  bool resolvable = false;
  int warm_extra = 0;   // top_singular, row-major A: also return this many (unconverged) Ritz
                        // vectors of the next values in Triplets::warm, to warm-start the solve
                        // of a nearby matrix (the last value's spacing needs the next one)
};

// How a solve ended: certified; not certified within the pass budget; or a
// NaN or infinity in the answer (never certified).
enum class Status { converged, not_converged, numerical_issue };

struct Info {
  int iterations = 0;          // block steps
  int restarts = 0;
  int64_t matrix_passes = 0;   // reads of the whole matrix (a fused A^T(A X) sweep counts once)
  bool converged = false;      // status == Status::converged
  Status status = Status::not_converged;
  std::vector<double> residuals;  // final residual norm of each returned triplet / eigenpair
  double norm_estimate = 0;    // ||A|| (or max |eigenvalue|) estimate the tolerance is relative to
  double tol_used = 0;         // the tolerance applied (float32 matrices floor it, see top_singular)
  int block = 0;               // block size used
  // Options::resolvable: per returned value, 0 when certified to tol, else the distance
  // to its nearest neighbouring value (its residual is at most a tenth of it).
  std::vector<double> spacing;
  bool dense = false;          // true when the problem was small enough for a direct LAPACK solve
};

// Top-k singular triplets of the dense n x m matrix A (row-major when
// row_major, else column-major; no copy). s descending; U is n x k and V is
// m x k, both column-major. v0 (m x k0, column-major) warm-starts the right block.
// Runs OpenBLAS single-threaded for its duration (restoring the count after) and
// parallelizes its sweeps with OpenMP; call it from one thread at a time.
// For float matrices the tolerance is floored at 1e-4 (products accumulate in float,
// and the Gram operator squares their rounding error).
// Throws std::invalid_argument on k outside [1, min(n, m)].
template <class T>
struct Triplets {
  std::vector<double> s;
  std::vector<T> U, V;
  Info info;
  // Warm start for the next solve (m x warm_cols, column-major): V followed by
  // up to Options::warm_extra Ritz vectors of the next values (row-major A only)
  // and, when this solve was warm-started with them, the starting vectors of its
  // isolated values and of its largest value (a chain of solves then spans their
  // extrapolation from the last two steps).
  std::vector<T> warm;
  int warm_cols = 0;
};

// Sums over a row-major A taken along the first sweep of a solve, as each panel
// of rows sits in cache after its product: the caller's separate read of A for
// them (a training step's weight norms, a linear net's beta_f) is saved. The
// same bits at any thread count (per-column partials per panel group, added in
// group order); they depend on the panel plan, so they may differ in the last
// bits from another read's order.
struct RowSums {
  const double* row_weights = nullptr;  // n values, one per row of A, or null
  bool done = false;                    // set by a solve whose sweeps computed them
  double squares = 0;                   // sum of A_ij^2
  std::vector<double> weighted;         // m values: A^T row_weights (with row_weights)
};

// sums, when given and A is row-major, receives RowSums from the solve's first
// sweep (left not done when the solve needed no sweep: a small matrix solved
// directly).
template <class T>
Triplets<T> top_singular(const T* A, int64_t n, int64_t m, bool row_major, int k, const Options& opt,
                         const T* v0 = nullptr, int k0 = 0, RowSums* sums = nullptr);

// Y (n x b, column-major) = Op X for a symmetric operator.
using MatMat = std::function<void(const double* X, double* Y, int b)>;

enum class Which { Largest, Both };

struct Eigs {
  // Largest: the k largest (algebraic) eigenvalues, descending.
  // Both: the k largest descending, then the k smallest ascending (2k values).
  std::vector<double> values;
  std::vector<double> vectors;  // n x (#values), column-major, same order as values
  Info info;
};

// Extreme eigenpairs of a symmetric operator. Residuals ||Op x - lambda x|| of
// the returned pairs are computed explicitly (one extra application of Op to
// the returned block) and certified <= tol * max|lambda|.
Eigs top_eigs(const MatMat& op, int64_t n, int k, Which which, const Options& opt,
              const double* v0 = nullptr, int k0 = 0);

// Stochastic Lanczos quadrature of a symmetric operator: for each probe the
// Ritz values (nodes) and squared first components (weights, summing to 1).
// The probes run as independent Lanczos recurrences in lockstep, so the
// operator is applied to a block of `probes` vectors per step (one pass).
// A probe whose recurrence terminates early (invariant subspace) pads its row
// with zero weights.
struct Quadrature {
  std::vector<double> nodes, weights;  // probes x degree, row per probe
  int probes = 0, degree = 0;
};

Quadrature slq(const MatMat& op, int64_t n, int probes, int degree, uint64_t seed);

// The Gram operator of a dense n x m matrix on its smaller side: A^T A (m x m)
// when m <= n, else A A^T (n x n); dimension via gram_dim. Applied in one fused
// sweep over A where the layout allows it, else in two BLAS-3 passes.
// The returned callable keeps a pointer to A: A must outlive it.
template <class T>
MatMat gram_operator(const T* A, int64_t n, int64_t m, bool row_major);
inline int64_t gram_dim(int64_t n, int64_t m) { return m <= n ? m : n; }

// The operator X -> A X of a dense symmetric n x n matrix (column-major, used
// in place). Rows are split into fixed chunks, each multiplied on one BLAS
// thread (a threaded gemv/gemm splits its sums by thread count), so the result
// has the same bits at any thread count. A must outlive the callable.
MatMat dense_operator(const double* A, int64_t n);

// Y = M X (r x b) and Z = M^T Y (c x b) for a row-major r x c matrix M (leading
// dimension ld), in one sweep over row panels of M (threads over fixed panel
// groups: the same bits at any thread count). Y may be null when only Z is
// wanted. X is c x b, all column-major. sums, when given, also receives RowSums
// of M (ld == c), its row weights indexed by M's rows.
template <class T>
void gram_sweep(const T* M, int64_t r, int64_t c, int64_t ld, const T* X, int b, T* Y, T* Z,
                RowSums* sums = nullptr);
// How gram_sweep has run each kind of sweep (element size, block width, matrix
// size to a power of two) in this process: it times its two kernels, which give
// the same bits, on the first sweeps of a kind and keeps the faster.
struct SweepKernelChoice {
  int element_bytes = 8, block = 1, size_log2 = 0;
  int chosen = -1;  // -1 still timing, 0 panel by panel, 1 pipelined
  double best_s[2] = {0, 0};  // the fastest sweep of each kernel so far
  int trials[2] = {0, 0};
};
std::vector<SweepKernelChoice> sweep_kernel_choices();

// Z = M^T Y (c x b) for a given Y (r x b), by the same panels and threads.
template <class T>
void transpose_sweep(const T* M, int64_t r, int64_t c, int64_t ld, const T* Y, int b, T* Z);

}  // namespace specdyn::lanczos
