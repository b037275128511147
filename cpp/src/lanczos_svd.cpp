// Top-k singular triplets of a dense matrix: block Lanczos on the Gram
// operator applied in one fused sweep over A, then an explicit certificate.
#include <omp.h>
#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <limits>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "fused_panel.hpp"
#include "row_sums.hpp"
#include "sweep_pool.hpp"
#include "specdyn/blas.hpp"
#include "specdyn/krylov/cpu_backend.hpp"
#include "specdyn/krylov/engine.hpp"
#include "specdyn/lanczos.hpp"

namespace specdyn::lanczos {

using blas::Op;

namespace {

// Accumulator groups of the panel sweep: a constant, so that the reduction
// order never depends on the thread count (16 keeps up to 16 threads busy; the
// extra accumulators cost 16 c b adds per sweep against r c b for the product).
constexpr int64_t kSweepGroups = 16;

inline size_t at(int64_t i, int64_t j, int64_t ld) { return static_cast<size_t>(i + j * ld); }

// Rows per panel of the fused sweep: large enough that the c x b accumulator
// traffic is small next to the panel, small enough that the panel is still in
// cache when it is read the second time (for M^T Y). SPECDYN_PANEL_ROWS overrides.
int64_t panel_rows(int64_t c, size_t elem, int b) {
  static const int64_t env = [] {
    const char* s = std::getenv("SPECDYN_PANEL_ROWS");
    return s ? std::atoll(s) : 0;
  }();
  if (env > 0) return env;
  // ~256 KiB of matrix per panel (8 rows of a 4096-wide double matrix):
  // measured fastest for b <= 4 on a 1 MiB L2 (Zen 5); 1 MiB panels were ~15% slower.
  const int64_t target = 1 << 18;
  int64_t rows = target / std::max<int64_t>(1, c * static_cast<int64_t>(elem));
  rows = std::max<int64_t>(rows, 2 * b);
  return std::clamp<int64_t>(rows, 8, 512);
}

// The size of the last-level cache that this process's first CPU shares, from
// Linux's sysfs; 32 MiB where it is not there. (glibc's sysconf can report the
// whole package's L3: 384 MiB on the test VM, whose cores share 32 MiB.)
size_t last_level_cache_bytes() {
  size_t best = 0;
  int best_level = 0;
  for (int i = 0; i < 8; ++i) {
    const std::string dir = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(i) + "/";
    std::ifstream lf(dir + "level"), sf(dir + "size");
    int level = 0;
    size_t size = 0;
    std::string unit;
    if (!(lf >> level) || !(sf >> size)) continue;
    sf >> unit;  // "32768K": the number, then its unit
    size <<= unit == "K" ? 10 : unit == "M" ? 20 : unit == "G" ? 30 : 0;
    if (level > best_level) best_level = level, best = size;
  }
  return best > 0 ? best : size_t(32) << 20;
}

// Whether the sweeps use the vectorized panel kernels (SPECDYN_NO_KERNEL: OpenBLAS
// instead, for tests).
bool use_panel_kernels() {
  static const bool on = std::getenv("SPECDYN_NO_KERNEL") == nullptr;
  return on;
}

// Wider blocks run as chunks of at most this many columns over the cached panel:
// the vectorized kernel beats OpenBLAS's packing on such skinny products.
// SPECDYN_CHUNK overrides detail::preferred_chunk_width.
int chunk_width() {
  static const int cw = [] {
    const char* e = std::getenv("SPECDYN_CHUNK");
    return e ? std::clamp(std::atoi(e), 1, 8) : detail::preferred_chunk_width();
  }();
  return cw;
}

// Whether the fused sweep over a matrix of `bytes` asks for each next panel
// during the update: when the matrix streams from memory, at least the size of
// the last-level cache. One that fits there is read at cache speed, and the early
// requests only compete with the update for L2 (measured 5-10% slower for 8-16 MiB
// matrices against a 32 MiB L3; a 32 MiB one gained up to 1.16x).
// SPECDYN_PREFETCH=1 or 0 forces it on or off (tests).
bool prefetch_panels(size_t bytes) {
  static const int forced = [] {
    const char* e = std::getenv("SPECDYN_PREFETCH");
    return e ? (std::atoi(e) != 0 ? 1 : 0) : -1;
  }();
  static const size_t llc = last_level_cache_bytes();
  return forced >= 0 ? forced == 1 : bytes >= llc;
}

// Which of two kernels runs a fused sweep; both do the same arithmetic (same
// bits). Panel by panel, the update Z += M_p^T y re-reads each panel from L2
// after its product, and the core's memory stream idles meanwhile. Pipelined
// (b <= 2), the update of one panel runs inside the product loop of the next.
// Which is faster depends on the CPU: on a Zen 5 host the pipelined loop was
// slower (0.54-0.93x); on an Intel Xeon host with 2 MiB of L2 per core, a
// 4096 x 4096 sweep ran 1.2x faster. So the first sweeps of each kind (element
// size, block width, size of the matrix to a power of two) alternate the two,
// and the faster (best of kTrials each) runs from then on.
// SPECDYN_PIPELINE=0 or 1 forces one.
class KernelChoice {
 public:
  static constexpr int kTrials = 3;
  static KernelChoice& get() {
    // (Leaked: pool threads may outlive statics.) The lock is held across a fork,
    // so that a forked child finds it free.
    static KernelChoice* c = [] {
      auto* p = new KernelChoice;
      pthread_atfork([] { get().mu_.lock(); }, [] { get().mu_.unlock(); }, [] { get().mu_.unlock(); });
      return p;
    }();
    return *c;
  }
  // The kernel for the next sweep of this kind: 1 pipelined, 0 panel by panel.
  int pick(size_t elem, int b, size_t bytes) {
    static const int forced = [] {
      const char* e = std::getenv("SPECDYN_PIPELINE");
      return e ? (std::atoi(e) != 0 ? 1 : 0) : -1;
    }();
    if (forced >= 0) return forced;
    std::lock_guard<std::mutex> lock(mu_);
    const Entry& e = entry(elem, b, bytes);
    if (e.chosen >= 0) return e.chosen;
    return e.trials[1] < e.trials[0] ? 1 : 0;
  }
  void record(size_t elem, int b, size_t bytes, int kernel, double seconds) {
    std::lock_guard<std::mutex> lock(mu_);
    Entry& e = entry(elem, b, bytes);
    if (e.chosen >= 0) return;
    ++e.trials[kernel];
    e.best[kernel] = std::min(e.best[kernel], seconds);
    if (e.trials[0] >= kTrials && e.trials[1] >= kTrials) e.chosen = e.best[1] < e.best[0] ? 1 : 0;
  }
  std::vector<SweepKernelChoice> snapshot() {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<SweepKernelChoice> out;
    for (int t = 0; t < 2; ++t)
      for (int b = 1; b <= kMaxBlock; ++b)
        for (int s = 0; s < 64; ++s) {
          const Entry& e = table_[t][b - 1][s];
          if (e.trials[0] + e.trials[1] == 0) continue;
          out.push_back({t == 0 ? 4 : 8, b, s, e.chosen, {e.best[0], e.best[1]}, {e.trials[0], e.trials[1]}});
        }
    return out;
  }
  static constexpr int kMaxBlock = 8;

 private:
  struct Entry {
    int trials[2] = {0, 0};
    double best[2] = {std::numeric_limits<double>::infinity(), std::numeric_limits<double>::infinity()};
    int chosen = -1;
  };
  Entry& entry(size_t elem, int b, size_t bytes) {
    int s = 0;
    while (s < 63 && (size_t(2) << s) <= bytes) ++s;  // floor(log2(bytes))
    return table_[elem == 4 ? 0 : 1][std::clamp(b, 1, kMaxBlock) - 1][s];
  }
  std::mutex mu_;
  Entry table_[2][kMaxBlock][64];
};

template <class T>
void to_double(const T* x, double* y, size_t n) {
  for (size_t i = 0; i < n; ++i) y[i] = static_cast<double>(x[i]);
}
template <class T>
void from_double(const double* x, T* y, size_t n) {
  for (size_t i = 0; i < n; ++i) y[i] = static_cast<T>(x[i]);
}

}  // namespace

// Elements of T in a 64-byte cache line.
template <class T>
constexpr size_t kLineElems = 64 / sizeof(T);

// The first address from p on that sits at the same place in a cache line as M
// (within kLineElems of p): the sweep's vectors X and Z_g placed there are read
// in the same whole lines as M's rows (see line_shift in panel_loops.inc), and
// no load of them touches two lines.
template <class T>
T* line_matched(T* p, const T* M) {
  const auto a = reinterpret_cast<uintptr_t>(p), m = reinterpret_cast<uintptr_t>(M);
  if (a % sizeof(T) != 0 || m % sizeof(T) != 0) return p;
  return p + (m - a) % 64 / sizeof(T);
}

// The panels of one sweep, grouped: group g's accumulator Z_g (c x b) sums its
// panels' M_p^T M_p X (or, transposed, M_p^T Y_p for a given Y) in panel order,
// and Z = Z_0 + Z_1 + ... in group order. A group is the unit of work a thread
// takes, so the bits do not depend on which thread computed what, or on how
// many there were.
template <class T>
struct SweepGroups {
  const T* M;
  int64_t r, c, ld;
  int b;
  bool transposed;  // Z = M^T Y: the input is Y (r x b), not X (c x b)
  int64_t pr, npanel, ngroup;
  bool prefetch;  // the next panel is requested during each update (see panel)
  bool pipelined = false;  // each panel's update inside the next one's product (see group)
  bool row_sums = false;   // each group also sums its rows (RowSums; needs ld == c)
  const double* row_w = nullptr;  // the rows' weights for RowSums::weighted, or null

  SweepGroups(const T* M_, int64_t r_, int64_t c_, int64_t ld_, int b_, bool transposed_ = false)
      : M(M_), r(r_), c(c_), ld(ld_), b(b_), transposed(transposed_), pr(panel_rows(c_, sizeof(T), b_)),
        npanel((r_ + pr - 1) / pr), ngroup(std::min<int64_t>(npanel, kSweepGroups)),
        prefetch(prefetch_panels(bytes())) {}
  size_t input_size() const { return static_cast<size_t>(transposed ? r : c) * b; }
  size_t bytes() const { return static_cast<size_t>(r) * static_cast<size_t>(ld) * sizeof(T); }  // of M's rows
  // Y_p's columns j0 .. j0+bc (ybuf: rows x bc, row-major) into y at row i0 - y0.
  void store_y(const T* ybuf, int64_t i0, int64_t rows, int j0, int bc, T* y, int64_t y0, int64_t ldy) const {
    for (int64_t i = 0; i < rows; ++i)
      for (int j = 0; j < bc; ++j) y[at(i0 - y0 + i, j0 + j, ldy)] = ybuf[static_cast<size_t>(i) * bc + j];
  }
  int64_t first_row(int64_t g) const { return std::min(r, g * npanel / ngroup * pr); }
  // Doubles of a group's row sums: c squares, then c weighted sums (with row_w).
  size_t sums_size() const { return row_sums ? static_cast<size_t>(c) * (row_w ? 2 : 1) : 0; }
  // Panel rows i0 .. i0 + rows into the group's row sums, re-read from cache
  // right after the panel's product.
  void add_sums(int64_t i0, int64_t rows, double* sums) const {
    if (sums) specdyn::detail::add_row_sums(M, i0, i0 + rows, c, row_w, sums, row_w ? sums + c : nullptr);
  }
  int64_t max_group_rows() const { return ((npanel + ngroup - 1) / ngroup) * pr; }

  // One panel: Y_p = M_p X, then Z += M_p^T Y_p while M_p is in cache. y, when not
  // null, receives Y_p at row offset i0 - y0 (leading dimension ldy); ybuf holds
  // at least pr * b values. Transposed: Z += M_p^T Y_p for the given Y (= in).
  // ahead: request the next panel (as many rows, this thread's next one) during
  // the update; done for b <= 4 read in one chunk (measured faster or equal
  // there, and up to 10% slower on one thread for b = 6-8 in one chunk).
  void panel(const T* in, int64_t i0, int64_t rows, T* z, T* y, int64_t y0, int64_t ldy, T* ybuf,
             bool ahead) const {
    if (use_panel_kernels()) {
      const int cw = chunk_width();
      const int nch = (b + cw - 1) / cw;
      const int w = (b + nch - 1) / nch;
      bool done = true;
      for (int j0 = 0; j0 < b && done; j0 += w) {
        const int bc = std::min(w, b - j0);
        if (transposed) {
          for (int64_t i = 0; i < rows; ++i)  // (the kernel reads y row-major)
            for (int j = 0; j < bc; ++j) ybuf[static_cast<size_t>(i) * bc + j] = in[at(i0 + i, j0 + j, r)];
          done = detail::transpose_panel(M + i0 * ld, ld, rows, c, ybuf, bc, z + at(0, j0, c));
          continue;
        }
        done = detail::fused_panel(M + i0 * ld, ld, rows, c, in + at(0, j0, c), bc, ybuf, z + at(0, j0, c),
                                   ahead && nch == 1 && b <= 4 ? M + (i0 + rows) * ld : nullptr);
        if (done && y) store_y(ybuf, i0, rows, j0, bc, y, y0, ldy);
      }
      if (done) return;  // (false only on the first chunk: no AVX2)
    }
    const T* yp = transposed ? in + i0 : (y ? y + (i0 - y0) : ybuf);
    const int ly = transposed ? static_cast<int>(r) : (y ? static_cast<int>(ldy) : static_cast<int>(rows));
    if (!transposed)
      blas::gemm(Op::T, Op::N, static_cast<int>(rows), b, static_cast<int>(c), T(1), M + i0 * ld,
                 static_cast<int>(ld), in, static_cast<int>(c), T(0), const_cast<T*>(yp), ly);
    blas::gemm(Op::N, Op::N, static_cast<int>(c), b, static_cast<int>(rows), T(1), M + i0 * ld, static_cast<int>(ld),
               yp, ly, T(1), z, static_cast<int>(c));
  }
  // Z_g into z; Y's rows of the group into y (row offset from first_row(g));
  // ybuf holds 2 pr b values; sums (sums_size() values, or null) the group's
  // row sums. Stops early, returning false, once stop() says so (checked per panel).
  template <class Stop>
  bool group(const T* in, int64_t g, T* z, T* y, int64_t ldy, T* ybuf, double* sums, Stop&& stop) const {
    std::fill(z, z + static_cast<size_t>(c) * b, T(0));
    if (sums) std::fill(sums, sums + sums_size(), 0.0);
    const int64_t p0 = g * npanel / ngroup, p1 = (g + 1) * npanel / ngroup;
    if (pipelined) {
      // Panel p's product runs with panel p-1's update; the last update after the
      // loop. ybuf holds two panels' y. A shorter last panel is not paired.
      T* ycur = ybuf;
      T* yprev = ybuf + static_cast<size_t>(pr) * b;
      const T* P = nullptr;
      int64_t rows_prev = 0;
      for (int64_t p = p0; p < p1; ++p) {
        if (stop()) return false;
        const int64_t i0 = p * pr, rows = std::min(pr, r - i0);
        if (P && rows != rows_prev) {
          detail::transpose_panel(P, ld, rows_prev, c, yprev, b, z);
          P = nullptr;
        }
        detail::pipelined_panel(M + i0 * ld, ld, rows, c, in, b, ycur, P, yprev, z);
        add_sums(i0, rows, sums);
        if (y) store_y(ycur, i0, rows, 0, b, y, p0 * pr, ldy);
        P = M + i0 * ld;
        rows_prev = rows;
        std::swap(ycur, yprev);
      }
      if (P) detail::transpose_panel(P, ld, rows_prev, c, yprev, b, z);
      return true;
    }
    for (int64_t p = p0; p < p1; ++p) {
      if (stop()) return false;
      const int64_t i0 = p * pr, rows = std::min(pr, r - i0);
      panel(in, i0, rows, z, y, p0 * pr, ldy, ybuf, prefetch && p + 1 < p1 && (p + 2) * pr <= r);
      add_sums(i0, rows, sums);
    }
    return true;
  }
};

// One sweep handed to the pool. It owns everything a pool thread reads except
// M: its own copy of the input (X, or Y when transposed), and per-attempt buffers for the group results, so a
// thread that stalls past the caller's return only ever touches them.
template <class T>
struct PooledSweep final : detail::PoolJob {
  static constexpr int kTries = 3;  // computations of one group: its own and at most two by idle threads
  SweepGroups<T> plan;
  bool keep_y = false;
  std::vector<T> in_buf;
  const T* in = nullptr;  // the input in in_buf, at M's place in a cache line (see line_matched)
  std::unique_ptr<T[]> slots;  // (uninitialized: a slot's pages are touched only when used)
  T* slot0 = nullptr;          // the first slot, at M's place in a cache line
  size_t slot_size = 0, nslot = 0, capacity = 0;
  std::vector<double> sums;  // each slot's row sums (plan.sums_size() values a slot)
  std::unique_ptr<std::atomic<T*>[]> result;  // group g's published buffer
  std::unique_ptr<std::atomic<int>[]> tries;
  std::atomic<int64_t> next_group{0};
  std::atomic<size_t> next_slot{0};

  explicit PooledSweep(const SweepGroups<T>& p)
      : plan(p), result(new std::atomic<T*>[kSweepGroups]), tries(new std::atomic<int>[kSweepGroups]) {}

  // Ready for a sweep (buffers kept from earlier sweeps when large enough: no
  // fresh pages per sweep).
  void reset(const SweepGroups<T>& p, const T* input, bool y, int workers) {
    plan = p;
    max_workers = workers;
    keep_y = y;
    in_buf.resize(plan.input_size() + kLineElems<T>);
    T* const in_at = line_matched(in_buf.data(), plan.M);
    std::copy(input, input + plan.input_size(), in_at);
    in = in_at;
    // (whole lines per slot, so that every slot keeps the first one's place)
    slot_size = (static_cast<size_t>(plan.c) * plan.b + static_cast<size_t>(plan.max_group_rows()) * plan.b +
                 2 * static_cast<size_t>(plan.pr) * plan.b + kLineElems<T> - 1) /
                kLineElems<T> * kLineElems<T>;
    nslot = static_cast<size_t>(kTries) * plan.ngroup;
    if (slot_size * nslot + kLineElems<T> > capacity) {
      capacity = slot_size * nslot + kLineElems<T>;
      slots.reset(new T[capacity]);
    }
    slot0 = line_matched(slots.get(), plan.M);
    if (sums.size() < plan.sums_size() * nslot) sums.resize(plan.sums_size() * nslot);
    for (int64_t g = 0; g < plan.ngroup; ++g) {
      result[g].store(nullptr, std::memory_order_relaxed);
      tries[g].store(0, std::memory_order_relaxed);
    }
    next_group.store(0, std::memory_order_relaxed);
    next_slot.store(0, std::memory_order_relaxed);
  }
  const T* published(int64_t g) const { return result[g].load(std::memory_order_acquire); }
  double* slot_sums(size_t s) { return plan.row_sums ? sums.data() + plan.sums_size() * s : nullptr; }
  // The row sums published with group g's result (same slot).
  const double* published_sums(int64_t g) {
    return slot_sums(static_cast<size_t>(published(g) - slot0) / slot_size);
  }
  // Computes group g into a fresh slot and publishes it unless another thread's
  // result came first (then it stops at the next panel).
  void attempt(int64_t g) {
    const size_t s = next_slot.fetch_add(1, std::memory_order_relaxed);  // (< nslot: tries are capped)
    T* z = slot0 + slot_size * s;
    T* y = z + static_cast<size_t>(plan.c) * plan.b;
    T* ybuf = y + static_cast<size_t>(plan.max_group_rows()) * plan.b;
    const bool done = plan.group(in, g, z, keep_y ? y : nullptr, plan.max_group_rows(), ybuf, slot_sums(s),
                                 [&] { return result[g].load(std::memory_order_relaxed) != nullptr; });
    T* expected = nullptr;
    if (done) result[g].compare_exchange_strong(expected, z, std::memory_order_acq_rel);
  }
  // Every participant, the caller included: take groups until none is left,
  // timing them; then a group still missing after half a group's time has a
  // stalled thread (the OS parked it), and this one computes it too.
  void work() override { run(false); }
  void run(bool caller) {
    // SPECDYN_SWEEP_STALL_US parks each pool thread that long inside its first
    // group, as the OS does when another process takes its core (for tests).
    static const std::chrono::microseconds stall([] {
      const char* e = std::getenv("SPECDYN_SWEEP_STALL_US");
      return e ? std::atoll(e) : 0LL;
    }());
    using clock = std::chrono::steady_clock;
    const auto t0 = clock::now();
    int64_t mine = 0;
    for (int64_t g; (g = next_group.fetch_add(1, std::memory_order_relaxed)) < plan.ngroup; ++mine) {
      tries[g].fetch_add(1, std::memory_order_relaxed);
      if (!caller && mine == 0 && stall.count() > 0) std::this_thread::sleep_for(stall);
      attempt(g);
    }
    const auto t1 = clock::now();
    const auto patience = mine ? (t1 - t0) / (2 * mine) : clock::duration(std::chrono::microseconds(50));
    for (int64_t g = 0; g < plan.ngroup; ++g)
      for (int i = 1; !published(g); ++i) {
        if (i % 64 == 0 && clock::now() - t1 > patience) {
          if (tries[g].fetch_add(1, std::memory_order_relaxed) < kTries) attempt(g);
          break;
        }
        detail::spin_pause();
      }
  }
};

// The row sums of the groups, added in group order, into sums.
template <class T, class GroupSums>
void fold_groups(const SweepGroups<T>& plan, GroupSums&& group_sums, RowSums& sums) {
  double total = 0;
  sums.weighted.assign(plan.row_w ? static_cast<size_t>(plan.c) : 0, 0.0);
  for (int64_t g = 0; g < plan.ngroup; ++g) {
    const double* s = group_sums(g);
    specdyn::detail::fold_row_sums(s, plan.row_w ? s + plan.c : nullptr, plan.c, total, sums.weighted.data());
  }
  sums.squares = total;
  sums.done = true;
}

// Z (and Y, when not null and not transposed) for the sweep plan over the input,
// and the plan's row sums into sums (when plan.row_sums).
template <class T>
void run_sweep(const SweepGroups<T>& plan, const T* in, T* Y, T* Z, RowSums* sums = nullptr) {
  const T* const M = plan.M;
  const int64_t r = plan.r, c = plan.c;
  const int b = plan.b;
  // Small matrices: one thread (waking another costs more than the product).
  const bool small = r * c < (int64_t(1) << 16);
  const int nt = static_cast<int>(
      std::min<int64_t>(omp_in_parallel() || small ? 1 : omp_get_max_threads(), plan.ngroup));
  const size_t zc = static_cast<size_t>(c) * b;
  blas::ThreadScope one(1);
  auto serial = [&] {
    // Z = Z_0, then Z += Z_g in group order, one group accumulator kept in cache.
    std::vector<T> ybuf(2 * static_cast<size_t>(plan.pr) * b), zg(plan.ngroup > 1 ? zc : 0);
    std::vector<double> gs(plan.sums_size() * plan.ngroup);
    auto never = [] { return false; };
    auto group_sums = [&](int64_t g) { return plan.row_sums ? gs.data() + plan.sums_size() * g : nullptr; };
    plan.group(in, 0, Z, Y, r, ybuf.data(), group_sums(0), never);
    for (int64_t g = 1; g < plan.ngroup; ++g) {
      plan.group(in, g, zg.data(), Y ? Y + plan.first_row(g) : nullptr, r, ybuf.data(), group_sums(g), never);
      for (size_t i = 0; i < zc; ++i) Z[i] += zg[i];
    }
    if (plan.row_sums) fold_groups(plan, group_sums, *sums);
  };
  if (nt <= 1) return serial();

  // (Kept per calling thread and reused while no stalled pool thread holds it.)
  thread_local std::shared_ptr<PooledSweep<T>> cached;
  if (!cached || cached.use_count() > 1) cached = std::make_shared<PooledSweep<T>>(plan);
  const std::shared_ptr<PooledSweep<T>> job = cached;
  job->reset(plan, in, Y != nullptr, nt - 1);
  detail::SweepPool& pool = detail::SweepPool::get();
  if (!pool.begin(job)) return serial();  // (another caller's sweep holds the pool)

  job->run(true);
  for (int64_t g = 0; g < plan.ngroup; ++g)  // (only when all the threads that computed g stalled)
    while (!job->published(g)) std::this_thread::yield();
  pool.end();
  if (!detail::SweepScope::covers(M))  // (nothing keeps M alive: wait for every thread to leave it)
    while (job->active.load(std::memory_order_acquire) > 0) std::this_thread::yield();

  // Z = Z_0 + Z_1 + ... in group order (the serial path's sums); Y's rows per group.
  const T* z0 = job->published(0);
  std::copy(z0, z0 + zc, Z);
  for (int64_t g = 1; g < plan.ngroup; ++g) {
    const T* zg = job->published(g);
    for (size_t i = 0; i < zc; ++i) Z[i] += zg[i];
  }
  if (plan.row_sums) fold_groups(plan, [&](int64_t g) { return job->published_sums(g); }, *sums);
  if (Y)
    for (int64_t g = 0; g < plan.ngroup; ++g) {
      const T* yg = job->published(g) + zc;
      const int64_t y0 = plan.first_row(g), y1 = g + 1 < plan.ngroup ? plan.first_row(g + 1) : r;
      for (int j = 0; j < b; ++j)
        std::copy(yg + at(0, j, plan.max_group_rows()), yg + at(y1 - y0, j, plan.max_group_rows()), Y + at(y0, j, r));
    }
}

template <class T>
void gram_sweep(const T* M, int64_t r, int64_t c, int64_t ld, const T* X, int b, T* Y, T* Z, RowSums* sums) {
  SweepGroups<T> plan(M, r, c, ld, b);
  if (sums) {
    if (ld != c) throw std::invalid_argument("gram_sweep: row sums need ld == c");
    plan.row_sums = true;
    plan.row_w = sums->row_weights;
  }
  // Both kernels serve where the panel is read in one chunk and every group has
  // at least two panels to pair.
  if (!use_panel_kernels() || b > chunk_width() || !detail::pipelined_panel_supported(b) ||
      plan.npanel < 2 * plan.ngroup)
    return run_sweep(plan, X, Y, Z, sums);
  const size_t bytes = plan.bytes();
  KernelChoice& choice = KernelChoice::get();
  const int kernel = choice.pick(sizeof(T), b, bytes);
  plan.pipelined = kernel == 1;
  const auto t0 = std::chrono::steady_clock::now();
  run_sweep(plan, X, Y, Z, sums);
  if (!sums)  // (the choice rests on plain sweeps; the row sums' re-read adds to both kernels alike)
    choice.record(sizeof(T), b, bytes, kernel,
                  std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
}

std::vector<SweepKernelChoice> sweep_kernel_choices() { return KernelChoice::get().snapshot(); }

template <class T>
void transpose_sweep(const T* M, int64_t r, int64_t c, int64_t ld, const T* Y, int b, T* Z) {
  run_sweep(SweepGroups<T>(M, r, c, ld, b, true), Y, static_cast<T*>(nullptr), Z);
}

template <class T>
MatMat gram_operator(const T* A, int64_t n, int64_t m, bool row_major) {
  // Fused when the smaller side is the column side of a row-major view.
  const bool fused = row_major ? (m <= n) : (n <= m);
  const int64_t d = gram_dim(n, m);
  return [=](const double* X, double* Z, int b) {
    const size_t xs = static_cast<size_t>(d) * b;
    std::vector<T> Xt, Zt;
    const T* xp;
    T* zp;
    if constexpr (std::is_same_v<T, double>) {
      xp = X;
      zp = Z;
    } else {
      Xt.resize(xs);
      Zt.resize(xs);
      from_double(X, Xt.data(), xs);
      xp = Xt.data();
      zp = Zt.data();
    }
    if (fused) {
      // row-major M = A (r = n, c = m) or M = A^T (r = m, c = n, from column-major A).
      const int64_t r = row_major ? n : m, c = d;
      gram_sweep<T>(A, r, c, c, xp, b, nullptr, zp);
    } else {
      const int64_t big = std::max(n, m);
      std::vector<T> W(static_cast<size_t>(big) * b);
      // The column-major view of A is (n x m, ld n) or, for row-major A, A^T (m x n, ld m).
      const int64_t rows = row_major ? m : n;  // rows of the column-major view = big side
      blas::gemm(Op::N, Op::N, static_cast<int>(rows), b, static_cast<int>(d), T(1), A, static_cast<int>(rows), xp,
                 static_cast<int>(d), T(0), W.data(), static_cast<int>(rows));
      blas::gemm(Op::T, Op::N, static_cast<int>(d), b, static_cast<int>(rows), T(1), A, static_cast<int>(rows),
                 W.data(), static_cast<int>(rows), T(0), zp, static_cast<int>(d));
    }
    if constexpr (!std::is_same_v<T, double>) to_double(zp, Z, xs);
  };
}

namespace {

// The LAPACK answer on a double copy of A (small problems).
template <class T>
krylov::SingularOut dense_svd(const T* A, int64_t n, int64_t m, bool row_major, int k) {
  krylov::SingularOut out;
  std::vector<double> B(static_cast<size_t>(n) * m), B0;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < m; ++j)
      B[at(i, j, n)] = static_cast<double>(row_major ? A[i * m + j] : A[at(i, j, n)]);
  B0 = B;
  const int64_t mn = std::min(n, m);
  std::vector<double> s(mn), U(static_cast<size_t>(n) * mn), VT(static_cast<size_t>(mn) * m);
  if (blas::gesdd(static_cast<int>(n), static_cast<int>(m), B.data(), static_cast<int>(n), s.data(), U.data(),
                  static_cast<int>(n), VT.data(), static_cast<int>(mn)) != 0)
    throw std::runtime_error("top_singular: gesdd failed");
  out.s.assign(s.begin(), s.begin() + k);
  out.U.assign(U.begin(), U.begin() + static_cast<size_t>(n) * k);
  out.V.resize(static_cast<size_t>(m) * k);
  for (int j = 0; j < k; ++j)
    for (int64_t i = 0; i < m; ++i) out.V[at(i, j, m)] = VT[at(j, i, mn)];
  // Residuals of the returned triplets, in double.
  std::vector<double> AV(static_cast<size_t>(n) * k), AtU(static_cast<size_t>(m) * k);
  blas::gemm(Op::N, Op::N, static_cast<int>(n), k, static_cast<int>(m), 1.0, B0.data(), static_cast<int>(n),
             out.V.data(), static_cast<int>(m), 0.0, AV.data(), static_cast<int>(n));
  blas::gemm(Op::T, Op::N, static_cast<int>(m), k, static_cast<int>(n), 1.0, B0.data(), static_cast<int>(n),
             out.U.data(), static_cast<int>(n), 0.0, AtU.data(), static_cast<int>(m));
  out.info.residuals.assign(k, 0.0);
  for (int j = 0; j < k; ++j) {
    // (nrm2 scales its sum: the residual of a 1e-200 matrix does not underflow to 0)
    for (int64_t i = 0; i < n; ++i) AV[at(i, j, n)] -= s[j] * out.U[at(i, j, n)];
    for (int64_t i = 0; i < m; ++i) AtU[at(i, j, m)] -= s[j] * out.V[at(i, j, m)];
    out.info.residuals[j] = std::max(blas::nrm2(static_cast<int>(n), AV.data() + at(0, j, n)),
                                     blas::nrm2(static_cast<int>(m), AtU.data() + at(0, j, m)));
  }
  out.info.norm_estimate = s.empty() ? 0.0 : s[0];
  out.info.matrix_passes = 1;
  out.info.converged = true;
  out.info.status = lanczos::Status::converged;
  out.info.dense = true;
  out.warm = out.V;
  out.warm_cols = k;
  return out;
}

// The Gram backend of the engine on a host matrix: the Krylov basis lives on
// the column side c of the row-major view M (r x c) of A, whose Gram M^T M is
// applied in one fused sweep (gram_sweep). The solve runs on scale * M, a
// power of two fixed by the first product (1 unless that product leaves the
// safe range of T, then from max |a_ij|, one extra read of A); the engine
// divides singular values and residuals by range_scale() at the end.
template <class T>
class CpuGram : public krylov::cpu::Vectors {
 public:
  static constexpr bool kSingle = std::is_same_v<T, float>;
  static constexpr bool kWideBlock = false;
  static constexpr int kMaxBlock = 64;

  // sums (row-major A only, else null): RowSums from the first sweep.
  CpuGram(const T* A, int64_t n, int64_t m, bool row_major, RowSums* sums = nullptr)
      : krylov::cpu::Vectors{row_major ? m : n}, scope_(A, static_cast<size_t>(n) * m * sizeof(T)), A_(A), n_(n), m_(m), row_major_(row_major),
        r_(row_major ? n : m), c_(row_major ? m : n), sums_(row_major ? sums : nullptr) {}

  int64_t n() const { return n_; }
  int64_t m() const { return m_; }
  int64_t other() const { return r_; }
  bool basis_right() const { return row_major_; }
  double range_scale() const { return scale_; }
  int64_t take_passes() { return std::exchange(passes_, 0); }

  void apply(const double* X, double* Z, int bb) { apply_keep(X, Z, bb, nullptr); }
  // apply, also returning the left product L = (scale M) X (r x bb) of the same sweep.
  void apply_keep(const double* X, double* Z, int bb, double* L) {
    sweep(X, Z, bb, L);
    if (scale_fixed_) return;
    scale_fixed_ = true;
    if (krylov::in_safe_range(krylov::max_abs(Z, static_cast<size_t>(c_) * bb), kRange)) return;
    fix_scale();
    if (scale_ == 1.0) return;
    sweep(X, Z, bb, L);
    ++passes_;
  }
  // W (r x b) = alpha Q C + beta W for Q (r x nq): products on the other side.
  void nn_other(const double* Q, int nq, const double* C, int ldc, int b, double alpha, double beta, double* W) {
    krylov::cpu::gemm_nn(r_, nq, b, alpha, Q, C, ldc, beta, W);
  }

  // (scale M)^T U for host U (r x k).
  void backward(const double* U, int k, double* MtU) {
    const size_t cs = static_cast<size_t>(c_), rs = static_cast<size_t>(r_);
    std::vector<T> Ut(rs * k), Wt(cs * k);
    for (size_t i = 0; i < rs * k; ++i) Ut[i] = static_cast<T>(scale_ * U[i]);
    transpose_sweep<T>(A_, r_, c_, c_, Ut.data(), k, Wt.data());
    to_double(Wt.data(), MtU, cs * k);
  }
  // The c-side warm block A v0 of a column-major A (M = A^T): its products fix
  // the scale (directions are all that matter here).
  void warm_left(const double* v0, int kw, double* warm) {
    const size_t cs = static_cast<size_t>(c_);
    std::vector<T> w(cs * kw), v0s(v0, v0 + static_cast<size_t>(r_) * kw);
    auto product = [&] {
      blas::gemm(Op::N, Op::N, static_cast<int>(c_), kw, static_cast<int>(r_), T(1), A_, static_cast<int>(c_),
                 v0s.data(), static_cast<int>(r_), T(0), w.data(), static_cast<int>(c_));
      to_double(w.data(), warm, cs * kw);
      ++passes_;
    };
    product();
    if (!krylov::in_safe_range(krylov::max_abs(warm, cs * kw), kRange)) {
      fix_scale();
      if (scale_ != 1.0) {
        for (auto& x : v0s) x = static_cast<T>(scale_ * static_cast<double>(x));
        product();
      }
    }
  }
  krylov::SingularOut dense(int k) { return dense_svd(A_, n_, m_, row_major_, k); }

 private:
  static constexpr int kRange = kSingle ? 50 : 500;

  void fix_scale() {  // from the largest entry of A
    scale_fixed_ = true;
    const int64_t total = n_ * m_;
    double amax = 0;
    bool finite = true;
#pragma omp parallel for reduction(max : amax) reduction(&& : finite) schedule(static) if (total >= (1 << 16))
    for (int64_t i = 0; i < total; ++i) {
      const double a = std::fabs(static_cast<double>(A_[i]));
      finite = finite && a <= std::numeric_limits<double>::max();
      amax = a > amax ? a : amax;
    }
    ++passes_;
    if (finite && amax > 0) scale_ = krylov::pow2_inverse(amax, kSingle ? 120 : 1000);
  }
  const T* scaled_in(const double* X, size_t xs) {  // Xt = T(scale X)
    Xt_.resize(xs);
    for (size_t i = 0; i < xs; ++i) Xt_[i] = static_cast<T>(scale_ * X[i]);
    return Xt_.data();
  }
  // Z = (scale M)^T (scale M) X and, when L is given, L = (scale M) X.
  void sweep(const double* X, double* Z, int bb, double* L) {
    const size_t xs = static_cast<size_t>(c_) * bb;
    RowSums* sums = sums_ && !sums_->done ? sums_ : nullptr;
    if constexpr (std::is_same_v<T, double>) {
      if (scale_ == 1.0) return gram_sweep<T>(A_, r_, c_, c_, X, bb, L, Z, sums);
    }
    const T* xp = scaled_in(X, xs);
    Zt_.resize(xs);
    Yt_.resize(L ? static_cast<size_t>(r_) * bb : 0);
    gram_sweep<T>(A_, r_, c_, c_, xp, bb, L ? Yt_.data() : nullptr, Zt_.data(), sums);
    for (size_t i = 0; i < xs; ++i) Z[i] = scale_ * static_cast<double>(Zt_[i]);
    if (L) to_double(Yt_.data(), L, Yt_.size());
  }

  detail::SweepScope scope_;  // (sweeps over A need not wait for a stalled thread; A outlives this object)
  const T* A_;
  int64_t n_, m_;
  bool row_major_;
  int64_t r_, c_;
  double scale_ = 1.0;
  bool scale_fixed_ = false;
  int64_t passes_ = 0;
  std::vector<T> Xt_, Yt_, Zt_;
  RowSums* sums_;
};

}  // namespace

template <class T>
Triplets<T> top_singular(const T* A, int64_t n, int64_t m, bool row_major, int k, const Options& opt, const T* v0,
                         int k0, RowSums* sums) {
  if (n < 1 || m < 1) throw std::invalid_argument("top_singular: empty matrix");
  if (k < 1 || k > std::min(n, m)) throw std::invalid_argument("top_singular: k must be in [1, min(n, m)]");
  if (k0 < 0 || (k0 > 0 && !v0)) throw std::invalid_argument("top_singular: bad warm start");
  blas::ThreadScope one(1);  // all products are ours; parallelism is the sweep pool over panel groups
  if (sums) {
    sums->done = false;
    sums->squares = 0;
    sums->weighted.clear();
  }
  CpuGram<T> ops(A, n, m, row_major, sums);
  std::vector<double> w;
  if (v0 && k0 > 0) {
    w.resize(static_cast<size_t>(m) * k0);
    to_double(v0, w.data(), w.size());
  }
  krylov::SingularOut r = krylov::top_singular(ops, k, opt, w.empty() ? nullptr : w.data(), w.empty() ? 0 : k0);
  Triplets<T> out;
  out.s = std::move(r.s);
  if constexpr (std::is_same_v<T, double>) {
    out.U = std::move(r.U);
    out.V = std::move(r.V);
    out.warm = std::move(r.warm);
  } else {
    out.U.resize(r.U.size());
    out.V.resize(r.V.size());
    out.warm.resize(r.warm.size());
    from_double(r.U.data(), out.U.data(), r.U.size());
    from_double(r.V.data(), out.V.data(), r.V.size());
    from_double(r.warm.data(), out.warm.data(), r.warm.size());
  }
  out.warm_cols = r.warm_cols;
  out.info = std::move(r.info);
  return out;
}

template void gram_sweep<double>(const double*, int64_t, int64_t, int64_t, const double*, int, double*, double*,
                                 RowSums*);
template void gram_sweep<float>(const float*, int64_t, int64_t, int64_t, const float*, int, float*, float*, RowSums*);
template void transpose_sweep<double>(const double*, int64_t, int64_t, int64_t, const double*, int, double*);
template void transpose_sweep<float>(const float*, int64_t, int64_t, int64_t, const float*, int, float*);
template MatMat gram_operator<double>(const double*, int64_t, int64_t, bool);
template MatMat gram_operator<float>(const float*, int64_t, int64_t, bool);
template Triplets<double> top_singular<double>(const double*, int64_t, int64_t, bool, int, const Options&,
                                               const double*, int, RowSums*);
template Triplets<float> top_singular<float>(const float*, int64_t, int64_t, bool, int, const Options&, const float*,
                                             int, RowSums*);

}  // namespace specdyn::lanczos
