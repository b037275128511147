// Internal: the threads of the fused Gram sweep (gram_sweep, lanczos_svd.cpp).
// Not part of the API.
//
// The sweep is a fixed set of groups of row panels, each summed into its own
// accumulator, so a group's result is the same bits whichever thread computes
// it. An OpenMP loop over the groups ends in a barrier: when the OS parks one of
// its threads (another process shares that core), the caller waits for a whole
// time slice. Here the caller instead recomputes a group whose thread has
// stalled, and the first result published wins; pool threads also spin briefly
// before sleeping, as the next sweep of a solve comes within a fraction of a
// millisecond.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace specdyn::lanczos::detail {

// One turn of a spin-wait: the CPU's pause hint on x86, a yield elsewhere.
inline void spin_pause() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#else
  std::this_thread::yield();
#endif
}

// Work offered to the pool: work() claims and computes groups until none is left.
struct PoolJob {
  virtual ~PoolJob() = default;
  virtual void work() = 0;
  int max_workers = 0;          // pool threads that may take part
  std::atomic<int> active{0};   // pool threads inside work()
};

class SweepPool {
 public:
  // The process's pool (a new one after fork: threads do not survive it).
  static SweepPool& get();
  // Offers job to up to job->max_workers pool threads. False when another
  // caller's job holds the pool (the caller then computes alone).
  bool begin(const std::shared_ptr<PoolJob>& job);
  // Withdraws the job: no pool thread starts on it after this.
  void end();
  // Waits until no pool thread is inside any job.
  void drain();

 private:
  void grow(int n);
  void loop(int index);

  std::mutex mu_;
  std::condition_variable wake_, idle_;
  std::shared_ptr<PoolJob> current_;
  std::atomic<uint64_t> generation_{0};
  std::atomic<bool> owned_{false};
  int threads_ = 0, running_ = 0;
};

// A SweepScope over a matrix [data, data + bytes) that outlives it lets
// gram_sweep over that matrix return while a stalled pool thread still reads it
// (never the caller's X, Y or Z, which it does not see); the outermost scope's
// end waits for such threads. Any other sweep (over a Krylov basis, say, which
// may be freed sooner) returns only when no pool thread works on it.
class SweepScope {
 public:
  SweepScope(const void* data, size_t bytes);
  ~SweepScope();
  SweepScope(const SweepScope&) = delete;
  SweepScope& operator=(const SweepScope&) = delete;
  // Whether an open scope of this thread covers the matrix at p.
  static bool covers(const void* p);

 private:
  const char *begin_, *end_;
  SweepScope* outer_;
};

}  // namespace specdyn::lanczos::detail
