// The training loop with live spectral tracking.
// Everything between two calls of run() stays native: (S)GD steps, minibatch
// and online sampling from counter-based streams, and tracking on a schedule.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <numeric>
#include <stdexcept>
#include <string>

#include <omp.h>

#include "specdyn/blas.hpp"
#include "specdyn/interrupt.hpp"
#include "specdyn/lanczos.hpp"
#include "specdyn/nets.hpp"
#include "specdyn/rng.hpp"
#include "row_sums.hpp"

// Spectra of large layers by warm-started Lanczos; 0 falls back to LAPACK everywhere (debugging).
#ifndef SPECDYN_NETS_USE_LANCZOS
#define SPECDYN_NETS_USE_LANCZOS 1
#endif

extern "C" void scipy_dgesdd_(const char*, const int*, const int*, double*, const int*, double*, double*, const int*,
                              double*, const int*, double*, const int*, int*, int*, size_t);

namespace specdyn::nets {

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
// Below this smallest dimension (or when k is a large share of it) a dense SVD is cheaper than Lanczos.
constexpr int64_t kDenseMinDim = 32;
// NTK Grams up to this size use a full symmetric eigensolver.
constexpr int64_t kDenseGram = 512;

// Singular values only of a column-major m x n double matrix (overwritten), descending.
std::vector<double> singular_values_only(int m, int n, double* A) {
  const int mn = std::min(m, n);
  std::vector<double> s(mn);
  int info = 0, lwork = -1, one = 1;
  double wq = 0, dummy = 0;
  std::vector<int> iwork(8 * mn + 1);
  scipy_dgesdd_("N", &m, &n, A, &m, s.data(), &dummy, &one, &dummy, &one, &wq, &lwork, iwork.data(), &info, 1);
  lwork = std::max(1, static_cast<int>(wq));
  std::vector<double> work(lwork);
  scipy_dgesdd_("N", &m, &n, A, &m, s.data(), &dummy, &one, &dummy, &one, work.data(), &lwork, iwork.data(), &info, 1);
  if (info != 0) std::fill(s.begin(), s.end(), kNaN);
  return s;
}

// One read of a row-major fo x fi layer W: returns the sum of its squared
// entries (the Frobenius norm squared) and, when b (fo values) is given, sets nb
// (fi values) to W^T b (the next factor of the linear net's beta_f). The rows are
// cut into a fixed number of ranges, each read as one contiguous stream with its
// own per-column partial sums, which are added in range order: the same bits at
// any thread count. Within a range every column adds its terms in row order, eight
// rows per sweep, so a partial is loaded and stored once per eight rows. (A single
// running sum of squares is bound by the add's latency: ~1 float per cycle, 3 ms
// of a 100 ms tracked N = 2048 step.)
template <class T>
double layer_read(const T* W, int64_t fo, int64_t fi, const double* b, double* nb) {
  // A large matrix (a tracked layer, read at every tracked step) spreads its
  // ranges over the threads; small ones stay on the calling thread (see the note
  // on elementwise passes in nets.cpp).
  constexpr int64_t kRanges = 16;
  const int64_t nr = std::max<int64_t>(1, std::min(kRanges, fo)), len = (fo + nr - 1) / nr;
  std::vector<double> sq(static_cast<size_t>(nr * fi), 0.0), part(b ? static_cast<size_t>(nr * fi) : 0, 0.0);
#pragma omp parallel for schedule(dynamic, 1) if (fo * fi >= (int64_t(1) << 20) && !omp_in_parallel())
  for (int64_t c = 0; c < nr; ++c) {
    const int64_t r0 = std::min(fo, c * len), r1 = std::min(fo, r0 + len);
    specdyn::detail::add_row_sums(W, r0, r1, fi, b, sq.data() + c * fi, b ? part.data() + c * fi : nullptr);
  }
  double acc = 0;
  if (b) std::fill(nb, nb + fi, 0.0);
  for (int64_t c = 0; c < nr; ++c)
    specdyn::detail::fold_row_sums(sq.data() + c * fi, b ? part.data() + c * fi : nullptr, fi, acc, nb);
  return acc;
}

int64_t index_of(const std::vector<int64_t>& v, int64_t x) {
  auto it = std::lower_bound(v.begin(), v.end(), x);
  return it != v.end() && *it == x ? static_cast<int64_t>(it - v.begin()) : -1;
}

}  // namespace

void squared_overlaps(const double* V, int64_t dim, int64_t k, const double* d, double* out) {
  double dd = 0;
  for (int64_t i = 0; i < dim; ++i) dd += d[i] * d[i];
  for (int64_t r = 0; r < k; ++r) {
    const double* v = V + r * dim;
    double dv = 0;
    for (int64_t i = 0; i < dim; ++i) dv += v[i] * d[i];
    out[r] = dd > 0 ? dv * dv / dd : kNaN;  // v is a unit vector
  }
}

void Record::init(const TrainSpec& s) {
  T = static_cast<int64_t>(s.tracked_steps.size());
  Lw = s.arch.layers();
  k = s.top_k;
  D = s.arch.input_dim;
  nb = static_cast<int64_t>(s.bulk_steps.size());
  bins = s.bulk_bins;
  loss.assign(T, kNaN);
  sharpness.assign(T, kNaN);
  hessian.assign(T, kNaN);
  sv.assign(T * Lw * k, kNaN);
  dsv.assign(sv.size(), kNaN);
  ov_in.assign(sv.size(), kNaN);
  ov_bw.assign(sv.size(), kNaN);
  wnorm.assign(T * Lw, kNaN);
  beta_f.assign(T * D, kNaN);
  bulk_counts.assign(nb * Lw * bins, kNaN);
  bulk_edges.assign(nb * Lw * (bins + 1), kNaN);
}

template <class T>
Trainer<T>::Trainer(const TrainSpec& spec, const T* X, const T* Y) : spec_(spec) {
  const Arch& a = spec_.arch;
  a.check();
  const int nl = a.layers();
  if (static_cast<int>(spec_.init_stds.size()) != nl || static_cast<int>(spec_.normalizers.size()) != nl)
    throw std::invalid_argument("nets: need one init std and one normalizer per weight matrix");
  if (spec_.samples < 1 || spec_.batch < 1 || (!spec_.online && spec_.batch > spec_.samples))
    throw std::invalid_argument("nets: need 1 <= batch <= samples");
  if (!(spec_.output_normalizer >= 1.0 && std::isfinite(spec_.output_normalizer)))
    throw std::invalid_argument("nets: output_normalizer must be finite and >= 1");
  if (spec_.top_k < 1) throw std::invalid_argument("nets: top_k must be >= 1");
  if (spec_.bulk_bins < 1) throw std::invalid_argument("nets: bulk_bins must be >= 1");
  std::sort(spec_.tracked_steps.begin(), spec_.tracked_steps.end());
  std::sort(spec_.bulk_steps.begin(), spec_.bulk_steps.end());
  resolvable_ = spec_.svd_tol <= 0;
  if (resolvable_) spec_.svd_tol = sizeof(T) == 8 ? 1e-8 : 1e-4;
  X_.assign(X, X + spec_.samples * a.input_dim);
  Y_.assign(Y, Y + spec_.samples * a.output_dim);
  W_.resize(nl);
  W0_.resize(nl);
  warm_.resize(nl);
  warm_delta_.resize(nl);
  for (int l = 0; l < nl; ++l) {
    W_[l].resize(static_cast<size_t>(a.size(l)));
    rng::normal_fill(W_[l].data(), W_[l].size(), spec_.seed, rng::kWeights + static_cast<uint64_t>(l),
                     spec_.init_stds[l]);
    if (spec_.track_delta) W0_[l] = W_[l];
  }
  const bool gd = !spec_.online && spec_.batch == spec_.samples;
  pass_.resize(a, spec_.batch);
  if (!gd) {
    eval_.resize(a, spec_.samples);
    Xb_.resize(static_cast<size_t>(spec_.batch * a.input_dim));
    Yb_.resize(static_cast<size_t>(spec_.batch * a.output_dim));
  }
  rec_.init(spec_);
}

template <class T>
void Trainer<T>::draw_batch(int64_t t) {
  const Arch& a = spec_.arch;
  const int64_t B = spec_.batch, P = spec_.samples, D = a.input_dim, C = a.output_dim;
  if (spec_.online) {
    // Fresh teacher samples; indices 0..P-1 are the evaluation set.
    teacher<T>(P + t * B, B, D, C, spec_.data_seed, spec_.teacher_kind, spec_.teacher_scale, spec_.noise, Xb_.data(),
               Yb_.data());
    return;
  }
  // B distinct samples by a partial Fisher-Yates shuffle driven by the counter
  // stream (seed, kMinibatch, step), then sorted, so that B = P is plain GD.
  perm_.resize(static_cast<size_t>(P));
  std::iota(perm_.begin(), perm_.end(), int64_t(0));
  const uint64_t stream = rng::kMinibatch;
  for (int64_t i = 0; i < B; ++i) {
    const auto r = rng::philox4x32_10(static_cast<uint32_t>(i), static_cast<uint32_t>(i >> 32),
                                      static_cast<uint32_t>(t), static_cast<uint32_t>(stream >> 32) ^
                                                                    (static_cast<uint32_t>(static_cast<uint64_t>(t) >> 32) << 8),
                                      static_cast<uint32_t>(spec_.seed), static_cast<uint32_t>(spec_.seed >> 32));
    const uint64_t u = (static_cast<uint64_t>(r.v[0]) << 32) | r.v[1];
    const int64_t j = i + static_cast<int64_t>(u % static_cast<uint64_t>(P - i));
    std::swap(perm_[i], perm_[j]);
  }
  std::sort(perm_.begin(), perm_.begin() + B);
  for (int64_t b = 0; b < B; ++b) {
    std::copy_n(X_.data() + perm_[b] * D, D, Xb_.data() + b * D);
    std::copy_n(Y_.data() + perm_[b] * C, C, Yb_.data() + b * C);
  }
}

template <class T>
int64_t Trainer<T>::run(int64_t until, const std::function<void(int64_t, double)>& progress, double interval) {
  // A position outside [0, steps] would never reach `finished`: refuse it instead of returning without progress.
  if (spec_.steps < 0 || step_ < 0 || step_ > spec_.steps)
    throw std::logic_error("nets: trainer at step " + std::to_string(step_) + " outside [0, " +
                           std::to_string(spec_.steps) + "]");
  until = std::min(until, spec_.steps);
  // One OpenBLAS thread throughout: the products are fixed-block gemms on OpenMP
  // threads (blas::gemm_fixed) and LAPACK runs serially, so the same seed gives
  // the same bits at any thread count (threaded OpenBLAS does not).
  blas::ThreadScope serial(1);
  using clock = std::chrono::steady_clock;
  auto last = clock::now();
  while (!finished_ && diverged_ < 0 && (step_ < until || (step_ == spec_.steps && until == spec_.steps))) {
    if (!body()) break;
    interrupt::check();  // between whole steps: an interrupt leaves the state of step `step_`
    if (progress) {
      const auto now = clock::now();
      if (std::chrono::duration<double>(now - last).count() >= interval) {
        last = now;
        progress(step_, last_loss_);
      }
    }
  }
  if (progress) progress(step_, last_loss_);
  return step_;
}

template <class T>
void Trainer<T>::measure(int64_t t) {
  const int64_t ti = index_of(spec_.tracked_steps, t), bi_ = index_of(spec_.bulk_steps, t);
  if (ti < 0 && bi_ < 0) throw std::invalid_argument("measure: step " + std::to_string(t) + " is neither tracked nor a bulk step");
  blas::ThreadScope serial(1);  // as in run()
  if (bi_ >= 0) bulk(bi_);
  if (ti < 0 || !(spec_.track_sharpness || spec_.track_hessian || spec_.track_beta)) return;
  const Arch& a = spec_.arch;
  ConstWeights<T> cw(a.layers());
  for (int l = 0; l < a.layers(); ++l) cw[l] = W_[l].data();
  // the NTK and Hessian read the activations and the error signal of this step's forward pass
  const bool gd = !spec_.online && spec_.batch == spec_.samples;
  Pass<T>& ev = gd ? pass_ : eval_;
  forward(a, cw, X_.data(), spec_.samples, ev);
  residual(a, Y_.data(), static_cast<double>(spec_.samples) * spec_.output_normalizer, ev);
  track_function(ti, ev);
}

template <class T>
bool Trainer<T>::body() {
  const Arch& a = spec_.arch;
  const int64_t t = step_;
  const int64_t ti = index_of(spec_.tracked_steps, t);
  const int64_t bi_ = index_of(spec_.bulk_steps, t);
  const bool gd = !spec_.online && spec_.batch == spec_.samples;
  ConstWeights<T> cw(a.layers());
  Weights<T> w(a.layers());
  for (int l = 0; l < a.layers(); ++l) cw[l] = w[l] = W_[l].data();
  auto diverged = [&](double loss) {
    return !std::isfinite(loss) || loss > spec_.divergence_bound;
  };
  const bool want_means = ti >= 0 && spec_.track_spectra && spec_.track_overlaps;
  std::vector<std::vector<double>> means;

  if (gd) {
    forward(a, cw, X_.data(), spec_.samples, pass_);
    const double loss = residual(a, Y_.data(), static_cast<double>(spec_.samples) * spec_.output_normalizer, pass_);
    last_loss_ = loss;
    if (ti >= 0) rec_.loss[ti] = loss;
    if (diverged(loss)) {
      diverged_ = t;
      return false;
    }
    if (ti >= 0 || bi_ >= 0) track(ti, bi_, pass_);
    if (t == spec_.steps) {
      if (want_means) {  // no update follows: a signal-only backward gives the means
        backward<T>(a, w, pass_, BackwardMode{BackwardMode::SignalOnly, 0}, nullptr, &means);
        overlaps(ti, pass_, means);
      }
      finished_ = true;
      return false;
    }
    backward<T>(a, w, pass_, BackwardMode{BackwardMode::Update, spec_.learning_rate}, nullptr,
             want_means ? &means : nullptr);
    if (want_means) overlaps(ti, pass_, means);
  } else {
    if (ti >= 0 || bi_ >= 0 || t == spec_.steps) {
      forward(a, cw, X_.data(), spec_.samples, eval_);
      const double loss = residual(a, Y_.data(), static_cast<double>(spec_.samples) * spec_.output_normalizer, eval_);
      last_loss_ = loss;
      if (ti >= 0) rec_.loss[ti] = loss;
      if (diverged(loss)) {
        diverged_ = t;
        return false;
      }
      if (ti >= 0 || bi_ >= 0) track(ti, bi_, eval_);
      if (want_means) {
        backward<T>(a, w, eval_, BackwardMode{BackwardMode::SignalOnly, 0}, nullptr, &means);
        overlaps(ti, eval_, means);
      }
    }
    if (t == spec_.steps) {
      finished_ = true;
      return false;
    }
    draw_batch(t);
    forward(a, cw, Xb_.data(), spec_.batch, pass_);
    const double loss = residual(a, Yb_.data(), static_cast<double>(spec_.batch) * spec_.output_normalizer, pass_);
    if (ti < 0) last_loss_ = loss;
    if (diverged(loss)) {
      diverged_ = t;
      return false;
    }
    backward<T>(a, w, pass_, BackwardMode{BackwardMode::Update, spec_.learning_rate});
  }
  ++step_;
  return true;
}

template <class T>
void Trainer<T>::top_singular(int l, const T* A, bool delta, int64_t ti, lanczos::RowSums* sums) {
  const Arch& a = spec_.arch;
  const int64_t fo = a.fan_out(l), fi = a.fan_in(l), mn = std::min(fo, fi);
  const int64_t K = rec_.k, k = std::min<int64_t>(K, mn);
  const double norm = spec_.normalizers[l];
  double* out = (delta ? rec_.dsv.data() : rec_.sv.data()) + (ti * rec_.Lw + l) * K;
  std::vector<double> s, U, V;  // U fo x k, V fi x k, column-major
  const bool dense = !SPECDYN_NETS_USE_LANCZOS || mn < kDenseMinDim || 3 * k > mn;
  if (dense) {
    // A row-major fo x fi is column-major A^T (fi x fo): A^T = U' S V'^T, so A's
    // left vectors are V' and its right vectors U'.
    std::vector<double> At(A, A + fo * fi), Up(static_cast<size_t>(fi * mn)), VTp(static_cast<size_t>(mn * fo));
    s.resize(mn);
    const int info = blas::gesdd(static_cast<int>(fi), static_cast<int>(fo), At.data(), static_cast<int>(fi), s.data(),
                                 Up.data(), static_cast<int>(fi), VTp.data(), static_cast<int>(mn));
    if (info != 0) std::fill(s.begin(), s.end(), kNaN);
    s.resize(k);
    U.resize(static_cast<size_t>(fo * k));
    V.assign(Up.begin(), Up.begin() + fi * k);
    for (int64_t r = 0; r < k; ++r)
      for (int64_t i = 0; i < fo; ++i) U[r * fo + i] = VTp[i * mn + r];
  } else {
#if SPECDYN_NETS_USE_LANCZOS
    lanczos::Options opt;
    opt.tol = spec_.svd_tol;
    opt.resolvable = resolvable_;
    opt.seed = spec_.seed + 7919u * static_cast<uint64_t>(l) + (delta ? 104729u : 0u);
    auto& warm = delta ? warm_delta_[l] : warm_[l];
    // Warm-start from the previous vectors plus the Ritz vector of the next value:
    // the last wanted value is certified against its spacing to the next one,
    // which a warm block without it must resolve from scratch (N = 2048 bulk edge
    // at tol 1e-8, along GD: ~1.5 passes per step with it, ~41 without).
    opt.warm_extra = 1;
    const int k0 = warm.size() >= static_cast<size_t>(fi * k) && warm.size() % static_cast<size_t>(fi) == 0
                       ? static_cast<int>(warm.size() / static_cast<size_t>(fi))
                       : 0;
    lanczos::Triplets<T> tr;
    // All threads: the solver's reductions run in a fixed order (same bits at any thread count).
    tr = lanczos::top_singular<T>(A, fo, fi, true, static_cast<int>(k), opt, k0 ? warm.data() : nullptr, k0, sums);
    s = tr.s;
    warm.assign(tr.warm.begin(), tr.warm.end());
    if (!delta) {
      U.assign(tr.U.begin(), tr.U.end());
      V.assign(tr.V.begin(), tr.V.end());
    }
#endif
  }
  for (int64_t r = 0; r < k; ++r) out[r] = norm * s[r];
  if (!delta) {
    U_[l] = std::move(U);
    V_[l] = std::move(V);
  }
}

template <class T>
void Trainer<T>::track(int64_t ti, int64_t bi_, Pass<T>& ev) {
  const Arch& a = spec_.arch;
  const int nl = a.layers();
  if (bi_ >= 0) bulk(bi_);
  if (ti < 0) return;
  U_.resize(nl);
  V_.resize(nl);
  read_layers(ti, spec_.track_spectra, true);
  track_function(ti, ev, false);
}

// The layers top-down: each one's solve (solve), whose first sweep also gives the
// layer's sums (RowSums); its norm into wnorm (norms); and a linear net's beta_f:
// f(x) = b . x with b^T = m_L W^L ... m_0 W^0, so W^l^T b needs the b of the layers
// above, and beta_f = b / teacher_scale. Sums no solve gave come from a read of the
// layer of their own, when they are wanted.
template <class T>
void Trainer<T>::read_layers(int64_t ti, bool solve, bool norms) {
  const Arch& a = spec_.arch;
  const int nl = a.layers();
  const bool beta = beta_tracked();
  std::vector<double> b;
  double c = 1.0;
  if (beta) {
    b.assign(W_[a.depth].begin(), W_[a.depth].end());
    c = a.multipliers[a.depth];
  }
  for (int l = nl - 1; l >= 0; --l) {
    const bool chain = beta && l < a.depth;
    lanczos::RowSums rs;
    rs.row_weights = chain ? b.data() : nullptr;
    if (solve) {
      top_singular(l, W_[l].data(), false, ti, &rs);
      if (spec_.track_delta) {
        const int64_t k = std::min<int64_t>(rec_.k, std::min(a.fan_in(l), a.fan_out(l)));
        double* out = rec_.dsv.data() + (ti * rec_.Lw + l) * rec_.k;
        if (step_ == 0) {
          for (int64_t r = 0; r < k; ++r) out[r] = 0.0;  // W(0) - W(0) = 0 exactly
        } else {
          const int64_t sz = a.size(l);
          scratch_.resize(static_cast<size_t>(sz));
          const T* w = W_[l].data();
          const T* w0 = W0_[l].data();
          T* d = scratch_.data();
          for (int64_t i = 0; i < sz; ++i) d[i] = w[i] - w0[i];
          top_singular(l, d, true, ti);
        }
      }
    }
    if (!rs.done && (norms || chain)) {
      rs.weighted.resize(chain ? static_cast<size_t>(a.fan_in(l)) : 0);
      rs.squares = layer_read(W_[l].data(), a.fan_out(l), a.fan_in(l), rs.row_weights,
                              chain ? rs.weighted.data() : nullptr);
    }
    if (norms) rec_.wnorm[ti * nl + l] = spec_.normalizers[l] * std::sqrt(rs.squares);
    if (chain) {
      b.swap(rs.weighted);
      c *= a.multipliers[l];
    }
  }
  if (beta)
    for (int64_t j = 0; j < a.input_dim; ++j) rec_.beta_f[ti * a.input_dim + j] = c * b[j] / spec_.teacher_scale;
}

template <class T>
void Trainer<T>::track_function(int64_t ti, Pass<T>& ev, bool with_beta) {
  if (spec_.track_sharpness) rec_.sharpness[ti] = spec_.learning_rate * ntk_top(ev) /
                                                 (static_cast<double>(spec_.samples) * spec_.output_normalizer);
  if (spec_.track_hessian) rec_.hessian[ti] = hessian_top(ev);
  if (with_beta && beta_tracked()) read_layers(ti, false, false);
}

template <class T>
bool Trainer<T>::beta_tracked() const {
  const Arch& a = spec_.arch;
  return spec_.track_beta && a.output_dim == 1 && a.activation == Activation::Linear;
}

template <class T>
void Trainer<T>::overlaps(int64_t ti, const Pass<T>& ev, const std::vector<std::vector<double>>& means) {
  const Arch& a = spec_.arch;
  const int nl = a.layers();
  const int64_t n = ev.n, K = rec_.k;
  for (int l = 0; l < nl; ++l) {
    if (V_.size() <= static_cast<size_t>(l) || V_[l].empty()) continue;
    const int64_t fi = a.fan_in(l), fo = a.fan_out(l), k = std::min<int64_t>(K, std::min(fi, fo));
    std::vector<double> in(static_cast<size_t>(fi), 0.0);
    const T* h = ev.input(l);
    for (int64_t j = 0; j < n; ++j)
      for (int64_t i = 0; i < fi; ++i) in[i] += h[j * fi + i];
    squared_overlaps(V_[l].data(), fi, k, in.data(), rec_.ov_in.data() + (ti * nl + l) * K);
    squared_overlaps(U_[l].data(), fo, k, means[l].data(), rec_.ov_bw.data() + (ti * nl + l) * K);
  }
}

template <class T>
double Trainer<T>::ntk_top(const Pass<T>& ev) {
  const Arch& a = spec_.arch;
  ConstWeights<T> cw(a.layers());
  for (int l = 0; l < a.layers(); ++l) cw[l] = W_[l].data();
  std::vector<double> K;
  ntk_gram(a, cw, ev, K);
  const int64_t m = ev.n * a.output_dim;
#if SPECDYN_NETS_USE_LANCZOS
  if (m > kDenseGram) {
    lanczos::Options opt;
    opt.tol = 1e-10;
    opt.seed = spec_.seed + 15485863u;
    // The solver's own reductions are in a fixed order; the operator's product is too.
    auto e = lanczos::top_eigs(lanczos::dense_operator(K.data(), m), m, 1, lanczos::Which::Largest, opt);
    return e.values.empty() ? kNaN : e.values[0];
  }
#endif
  std::vector<double> w(static_cast<size_t>(m));
  const int info = blas::syevd(static_cast<int>(m), K.data(), static_cast<int>(m), w.data());
  return info == 0 ? w.back() : kNaN;
}

template <class T>
double Trainer<T>::hessian_top(const Pass<T>& ev) {
#if SPECDYN_NETS_USE_LANCZOS
  const Arch& a = spec_.arch;
  const int nl = a.layers();
  const int64_t np = a.num_params();
  ConstWeights<T> cw(nl);
  for (int l = 0; l < nl; ++l) cw[l] = W_[l].data();
  std::vector<T> v(static_cast<size_t>(np)), hv(static_cast<size_t>(np));
  ConstWeights<T> V(nl);
  Weights<T> HV(nl);
  int64_t off = 0;
  for (int l = 0; l < nl; ++l) {
    V[l] = v.data() + off;
    HV[l] = hv.data() + off;
    off += a.size(l);
  }
  auto op = [&](const double* X, double* Y, int b) {
    for (int j = 0; j < b; ++j) {
      for (int64_t i = 0; i < np; ++i) v[i] = static_cast<T>(X[j * np + i]);
      hvp(a, cw, ev, V, HV);
      for (int64_t i = 0; i < np; ++i) Y[j * np + i] = static_cast<double>(hv[i]);
    }
  };
  lanczos::Options opt;
  // The eigenvalue error is at most the residual; 1e-6 of |lambda_max| is far below run-to-run variation.
  opt.tol = sizeof(T) == 8 ? 1e-6 : 1e-4;
  opt.seed = spec_.seed + 32452843u;
  const bool warm = hess_warm_.size() == static_cast<size_t>(np);
  auto e = lanczos::top_eigs(op, np, 1, lanczos::Which::Largest, opt, warm ? hess_warm_.data() : nullptr, warm ? 1 : 0);
  if (e.values.empty()) return kNaN;
  hess_warm_.assign(e.vectors.begin(), e.vectors.begin() + np);
  return e.values[0];
#else
  (void)ev;
  return kNaN;  // needs lanczos::top_eigs
#endif
}

template <class T>
void Trainer<T>::bulk(int64_t bi_) {
  const Arch& a = spec_.arch;
  const int nl = a.layers();
  const int64_t bins = rec_.bins;
  for (int l = 0; l < nl; ++l) {
    const int64_t fi = a.fan_in(l), fo = a.fan_out(l);
    std::vector<double> At(W_[l].begin(), W_[l].end());
    auto s = singular_values_only(static_cast<int>(fi), static_cast<int>(fo), At.data());
    for (auto& v : s) v *= spec_.normalizers[l];
    const double hi = s.empty() || !(s[0] > 0) ? 1.0 : s[0] * (1 + 1e-9);
    double* counts = rec_.bulk_counts.data() + (bi_ * nl + l) * bins;
    double* edges = rec_.bulk_edges.data() + (bi_ * nl + l) * (bins + 1);
    for (int64_t b = 0; b <= bins; ++b) edges[b] = hi * static_cast<double>(b) / static_cast<double>(bins);
    std::fill(counts, counts + bins, 0.0);
    for (double v : s) {
      if (!std::isfinite(v)) continue;
      const int64_t b = std::min<int64_t>(bins - 1, static_cast<int64_t>(v / hi * static_cast<double>(bins)));
      counts[b] += 1;
    }
  }
}

template class Trainer<float>;
template class Trainer<double>;

}  // namespace specdyn::nets
