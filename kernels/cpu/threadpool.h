// threadpool.h — a small persistent thread pool shared by every CPU kernel of the extension.
//
// Rules it keeps:
//  * Workers never spin for long: after a job, a worker polls for the next one for at most
//    spin_us() microseconds (default 50, env TINY_LLM_SPIN_US, 0 = never), yielding the core on
//    every poll, then sleeps on a condition variable; the calling thread waits the same way.
//    A decode step runs ~300 short jobs back to back, and a futex wake-up in this VM costs tens of
//    microseconds, so the short window pays; yielding means a busy neighbour process gets the core
//    at once, and the bound means an idle pool costs nothing. An unbounded spin collapses when
//    another process holds one of the cores (llama.cpp fell from ~27 to <1 tok/s here).
//  * Work is handed out dynamically (an atomic task counter), so a worker that the OS schedules
//    late simply takes fewer tasks; the caller never waits for a worker that has not started one.
//  * The calling thread is worker 0 and runs tasks too, so a pool of n threads owns n-1 OS threads.
//  * Size = std::thread::hardware_concurrency(), overridden by the env var TINY_LLM_THREADS.
//  * One job at a time. A second concurrent caller (or a nested call from inside a task) runs its
//    tasks inline on its own thread instead of deadlocking.
//  * An exception thrown by a task stops the hand-out of further tasks and is rethrown in the caller.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace tiny_llm {

class ThreadPool {
 public:
  explicit ThreadPool(int n_threads) : n_threads_(std::max(1, n_threads)) {
    for (int i = 1; i < n_threads_; ++i) {
      workers_.emplace_back([this] { worker_loop(); });
    }
  }

  ~ThreadPool() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      stop_ = true;
      stop_flag_.store(true, std::memory_order_relaxed);
    }
    cv_work_.notify_all();
    for (auto& t : workers_) t.join();
  }

  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return n_threads_; }

  // Run fn(task) for every task in [0, n_tasks); returns when all have finished.
  // max_threads (> 0) caps how many threads take part (1 = run inline, no wake-ups).
  void parallel_for(int64_t n_tasks, const std::function<void(int64_t)>& fn, int max_threads = 0) {
    if (n_tasks <= 0) return;
    int want = max_threads > 0 ? std::min(max_threads, n_threads_) : n_threads_;
    want = static_cast<int>(std::min<int64_t>(want, n_tasks));
    std::unique_lock<std::mutex> call_lock(call_mu_, std::try_to_lock);
    if (want <= 1 || !call_lock.owns_lock()) {
      for (int64_t t = 0; t < n_tasks; ++t) fn(t);
      return;
    }
    {
      std::lock_guard<std::mutex> lk(mu_);
      fn_ = &fn;
      n_tasks_ = n_tasks;
      next_.store(0, std::memory_order_relaxed);
      error_ = nullptr;
      seats_ = want - 1;  // workers allowed to join this job
      active_ = true;
      generation_.fetch_add(1, std::memory_order_release);
    }
    if (want - 1 >= static_cast<int>(workers_.size())) {
      cv_work_.notify_all();
    } else {
      for (int i = 0; i < want - 1; ++i) cv_work_.notify_one();
    }
    run_tasks();
    spin_until([this] { return in_flight_.load(std::memory_order_acquire) == 0; });
    std::unique_lock<std::mutex> lk(mu_);
    // Only workers that already joined can still be running a task; late ones see !active_.
    cv_done_.wait(lk, [this] { return in_flight_.load(std::memory_order_relaxed) == 0; });
    active_ = false;
    fn_ = nullptr;
    std::exception_ptr err = error_;
    error_ = nullptr;
    lk.unlock();
    if (err) std::rethrow_exception(err);
  }

  // The process-wide pool used by all kernels of this extension.
  static ThreadPool& global() {
    static ThreadPool pool(default_threads());
    return pool;
  }

  // Microseconds a waiting thread polls (yielding) before it sleeps; settable for benchmarks.
  static std::atomic<int>& spin_us() {
    static std::atomic<int> us{[] {
      const char* env = std::getenv("TINY_LLM_SPIN_US");
      return env ? std::max(0, std::atoi(env)) : 50;
    }()};
    return us;
  }

  static int default_threads() {
    if (const char* env = std::getenv("TINY_LLM_THREADS")) {
      int n = std::atoi(env);
      if (n > 0) return n;
    }
    unsigned hc = std::thread::hardware_concurrency();
    return hc > 0 ? static_cast<int>(hc) : 1;
  }

 private:
  void run_tasks() {
    for (;;) {
      int64_t t = next_.fetch_add(1, std::memory_order_relaxed);
      if (t >= n_tasks_) return;
      try {
        (*fn_)(t);
      } catch (...) {
        std::lock_guard<std::mutex> lk(mu_);
        if (!error_) error_ = std::current_exception();
        next_.store(n_tasks_, std::memory_order_relaxed);  // stop handing out tasks
      }
    }
  }

  // Poll `ready` for up to spin_us(), giving the core away on every poll; true if it became ready.
  template <class Pred>
  static bool spin_until(Pred ready) {
    const int us = spin_us().load(std::memory_order_relaxed);
    if (us <= 0) return ready();
    const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(us);
    while (!ready()) {
      if (std::chrono::steady_clock::now() >= until) return false;
      std::this_thread::yield();
    }
    return true;
  }

  void worker_loop() {
    uint64_t seen = 0;
    for (;;) {
      spin_until([&] {
        return stop_flag_.load(std::memory_order_relaxed) || generation_.load(std::memory_order_acquire) != seen;
      });
      std::unique_lock<std::mutex> lk(mu_);
      cv_work_.wait(lk, [&] { return stop_ || generation_.load(std::memory_order_relaxed) != seen; });
      if (stop_) return;
      seen = generation_.load(std::memory_order_relaxed);
      if (!active_ || seats_ <= 0) continue;
      --seats_;
      in_flight_.fetch_add(1, std::memory_order_relaxed);
      lk.unlock();
      run_tasks();
      lk.lock();
      if (in_flight_.fetch_sub(1, std::memory_order_acq_rel) == 1) cv_done_.notify_one();
    }
  }

  const int n_threads_;
  std::vector<std::thread> workers_;
  std::mutex call_mu_;  // one job at a time
  std::mutex mu_;       // guards the job state below
  std::condition_variable cv_work_, cv_done_;
  const std::function<void(int64_t)>* fn_ = nullptr;
  int64_t n_tasks_ = 0;
  std::atomic<int64_t> next_{0};
  std::exception_ptr error_;
  std::atomic<uint64_t> generation_{0};  // written under mu_, polled without it while spinning
  int seats_ = 0;
  std::atomic<int> in_flight_{0};  // changed under mu_, polled without it while spinning
  bool active_ = false;
  bool stop_ = false;
  std::atomic<bool> stop_flag_{false};
};

}  // namespace tiny_llm
