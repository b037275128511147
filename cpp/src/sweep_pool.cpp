#include "sweep_pool.hpp"

#include <unistd.h>

#include <chrono>
#include <thread>

namespace specdyn::lanczos::detail {

namespace {

// How long an idle pool thread spins before it sleeps: longer than the work
// between two sweeps of a solve (orthogonalization, Rayleigh-Ritz), short
// enough to cost a neighbour little.
constexpr auto kSpin = std::chrono::microseconds(300);

thread_local SweepScope* innermost = nullptr;

}  // namespace

SweepPool& SweepPool::get() {
  // Leaked on purpose: pool threads are detached and may outlive static destruction.
  static SweepPool* pool = nullptr;
  static pid_t owner = 0;
  static std::mutex mu;
  std::lock_guard<std::mutex> lk(mu);
  if (!pool || owner != getpid()) {  // (after fork the old pool's threads are gone; it is left as it is)
    pool = new SweepPool();
    owner = getpid();
  }
  return *pool;
}

void SweepPool::grow(int n) {
  while (threads_ < n) {
    std::thread(&SweepPool::loop, this, threads_).detach();
    ++threads_;
  }
}

bool SweepPool::begin(const std::shared_ptr<PoolJob>& job) {
  bool expected = false;
  if (!owned_.compare_exchange_strong(expected, true, std::memory_order_acquire)) return false;
  {
    std::lock_guard<std::mutex> lk(mu_);
    try {
      grow(job->max_workers);
    } catch (...) {  // (no thread could be started: the error reaches the caller, the pool stays usable)
      owned_.store(false, std::memory_order_release);
      throw;
    }
    current_ = job;
    generation_.fetch_add(1, std::memory_order_release);
  }
  wake_.notify_all();
  return true;
}

void SweepPool::end() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    current_.reset();
  }
  owned_.store(false, std::memory_order_release);
}

void SweepPool::drain() {
  std::unique_lock<std::mutex> lk(mu_);
  idle_.wait(lk, [&] { return running_ == 0; });
}

void SweepPool::loop(int index) {
  uint64_t seen = 0;
  for (;;) {
    const auto until = std::chrono::steady_clock::now() + kSpin;
    for (int i = 1; generation_.load(std::memory_order_acquire) == seen; ++i) {
      spin_pause();
      if (i % 256 == 0 && std::chrono::steady_clock::now() > until) break;
    }
    std::shared_ptr<PoolJob> job;
    {
      std::unique_lock<std::mutex> lk(mu_);
      wake_.wait(lk, [&] { return generation_.load(std::memory_order_relaxed) != seen; });
      seen = generation_.load(std::memory_order_relaxed);
      if (current_ && index < current_->max_workers) {
        job = current_;
        job->active.fetch_add(1, std::memory_order_relaxed);
        ++running_;
      }
    }
    if (!job) continue;
    job->work();
    job->active.fetch_sub(1, std::memory_order_release);
    job.reset();
    bool idle;
    {
      std::lock_guard<std::mutex> lk(mu_);
      idle = --running_ == 0;
    }
    if (idle) idle_.notify_all();
  }
}

SweepScope::SweepScope(const void* data, size_t bytes)
    : begin_(static_cast<const char*>(data)), end_(static_cast<const char*>(data) + bytes), outer_(innermost) {
  innermost = this;
}

SweepScope::~SweepScope() {
  innermost = outer_;
  if (!innermost) SweepPool::get().drain();
}

bool SweepScope::covers(const void* p) {
  const char* c = static_cast<const char*>(p);
  for (const SweepScope* s = innermost; s; s = s->outer_)
    if (c >= s->begin_ && c < s->end_) return true;
  return false;
}

}  // namespace specdyn::lanczos::detail
