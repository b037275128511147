// Host builds of the device algorithms (gpu_exec.hpp): the direct one-bulk
// recursion and the device trainer, run launch for launch by gpu::HostExec,
// and the bridge from full histories to the outlier solver's ModeSolution.
// Compiled with -ffp-contract=off (CMakeLists.txt), as cuda/dmft_direct.cu is
// compiled with --fmad=false, so that both give the same bits.
#include "specdyn/dmft_direct.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>

#include "specdyn/blas.hpp"
#include "specdyn/nets_device.hpp"

namespace specdyn::dmft {

DirectSolution solve_direct_host(const ModeProblem& pb) {
  gpu::HostExec ex;
  return solve_direct(ex, pb);
}

// (dmft.hpp) a row enters Q when it leaves the span by more than tol |row| and a few roundoffs
void compress_rows(const std::vector<double>& hist, int T1, int L, int cap, double tol, std::vector<double>& Q,
                   std::vector<double>& C, std::vector<int>& rank_at, int& rank) {
  using blas::Op;
  rank = 0;
  Q.clear();
  C.assign(size_t(T1) * cap, 0.0);
  rank_at.assign(T1, 0);
  std::vector<double> w(L), c2(cap), coef(cap);
  const double floor = 64.0 * std::numeric_limits<double>::epsilon();
  for (int n = 0; n < T1; ++n) {
    const double* x = hist.data() + size_t(n) * L;
    std::copy(x, x + L, w.begin());
    std::fill(coef.begin(), coef.end(), 0.0);
    if (rank > 0)
      for (int pass = 0; pass < 2; ++pass) {
        blas::gemv(Op::T, L, rank, 1.0, Q.data(), L, w.data(), 0.0, c2.data());
        blas::gemv(Op::N, L, rank, -1.0, Q.data(), L, c2.data(), 1.0, w.data());
        for (int i = 0; i < rank; ++i) coef[i] += c2[i];
      }
    const double xn = blas::nrm2(L, x), rn = blas::nrm2(L, w.data());
    if (rank < cap && rn > std::max(tol, floor) * xn) {
      Q.resize(size_t(rank + 1) * L);
      for (int l = 0; l < L; ++l) Q[size_t(rank) * L + l] = w[l] / rn;
      coef[rank] = rn;
      ++rank;
    }
    std::copy(coef.begin(), coef.begin() + rank, C.begin() + size_t(n) * cap);
    rank_at[n] = rank;
  }
}


ModeSolution solution_from_histories(const DirectSolution& d, const std::vector<double>& sharpness,
                                     double history_tol) {
  const int T1 = d.steps + 1, L = d.nodes * d.coef;
  if (static_cast<int>(sharpness.size()) != T1) throw std::invalid_argument("sharpness: need steps + 1 values");
  if (d.hist_a.size() != size_t(T1) * L || d.hist_q.size() != size_t(T1) * L)
    throw std::invalid_argument("histories: need (steps + 1, nodes * coef) rows");
  ModeSolution s;
  s.steps = d.steps;
  s.nodes = d.nodes;
  s.coef = d.coef;
  s.input_dim = d.input_dim;
  s.loss = d.loss;
  s.beta_f = d.beta_f;
  s.Cw = d.Cw;
  s.Cq = d.Cq;
  s.Cqm = d.Cqm;
  s.sharpness = sharpness;
  s.s_row = d.s_row;
  s.cap = std::min(T1, L);
  compress_rows(d.hist_a, T1, L, s.cap, history_tol, s.Qa, s.Ca, s.rank_a_at, s.rank_a);
  compress_rows(d.hist_q, T1, L, s.cap, history_tol, s.Qq, s.Cqc, s.rank_q_at, s.rank_q);
  return s;
}

}  // namespace specdyn::dmft

namespace specdyn::nets {

std::unique_ptr<DeviceTrainer> make_emulated_trainer(const DeviceTrainSpec& spec, const void* X, const void* Y,
                                                     bool single) {
  if (single)
    return std::make_unique<DeviceTrainerImpl<gpu::HostExec, float>>(spec, static_cast<const float*>(X),
                                                                     static_cast<const float*>(Y));
  return std::make_unique<DeviceTrainerImpl<gpu::HostExec, double>>(spec, static_cast<const double*>(X),
                                                                    static_cast<const double*>(Y));
}

}  // namespace specdyn::nets
