// Cooperative interruption of long native loops (training, DMFT time stepping).
//
// The core knows nothing about Python: a binding installs a poll function on
// the calling thread (interrupt::Scope) and the loops call interrupt::check()
// between steps. check() runs the poll at most every kPollInterval of wall
// time; the poll may throw (the Python bindings throw when a signal such as
// Ctrl-C is pending), which unwinds the loop at a step boundary, so the state
// it leaves is the state after a whole step.
//
// Call check() only from the thread that installed the Scope and outside
// OpenMP parallel regions (an exception must not leave a parallel region).
#pragma once
#include <chrono>
#include <functional>
#include <utility>

namespace specdyn::interrupt {

using Poll = std::function<void()>;
using Clock = std::chrono::steady_clock;
constexpr std::chrono::milliseconds kPollInterval{200};

struct State {
  const Poll* poll = nullptr;
  Clock::time_point last{};
};

inline State& state() {
  thread_local State s;
  return s;
}

// Between steps of a long loop: runs the installed poll when kPollInterval has passed.
inline void check() {
  State& s = state();
  if (!s.poll) return;
  const auto now = Clock::now();
  if (now - s.last < kPollInterval) return;
  s.last = now;
  (*s.poll)();
}

// Installs a poll on this thread for its lifetime (nests: restores the previous one).
class Scope {
 public:
  explicit Scope(Poll poll) : poll_(std::move(poll)), saved_(state()) {
    state().poll = &poll_;
    state().last = Clock::now();
  }
  ~Scope() { state() = saved_; }
  Scope(const Scope&) = delete;
  Scope& operator=(const Scope&) = delete;

 private:
  Poll poll_;
  State saved_;
};

}  // namespace specdyn::interrupt
