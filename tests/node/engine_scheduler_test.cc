// SPDX-License-Identifier: Apache-2.0
// EngineScheduler on a manual clock and counted threads: timers fire at their time and
// not before; a wake runs a round at once; one task's rounds never overlap and a wake
// during a round runs exactly one more; remove() waits for the round in progress and
// no round starts after; many tasks on one worker all make progress; the pool's
// threads do not grow with the tasks. "Not before" is checked once every thread is
// asleep again, "no more rounds" by a probe task queued behind (rounds run in FIFO
// order), never by waiting some real time.
#include "node/engine_scheduler.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <future>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "testing/manual_env.h"

namespace amirror::node {
namespace {

using namespace std::chrono_literals;

constexpr auto kGenerous = 120s;  // a real-time bound on waits for state, never a schedule

template <class Predicate>
bool eventually(Predicate done) {
  auto give_up = std::chrono::steady_clock::now() + kGenerous;
  while (std::chrono::steady_clock::now() < give_up) {
    if (done()) return true;
    std::this_thread::sleep_for(1ms);
  }
  return done();
}

// A gate a round can stop in until the test opens it.
class Gate {
 public:
  void wait_inside() {
    std::unique_lock lock(mutex_);
    inside_ += 1;
    changed_.notify_all();
    changed_.wait(lock, [&] { return open_; });
  }
  bool wait_until_inside(int count) {
    std::unique_lock lock(mutex_);
    return changed_.wait_for(lock, kGenerous, [&] { return inside_ >= count; });
  }
  void open() {
    std::lock_guard lock(mutex_);
    open_ = true;
    changed_.notify_all();
  }

 private:
  std::mutex mutex_;
  std::condition_variable changed_;
  int inside_ = 0;
  bool open_ = false;
};

class EngineSchedulerTest : public ::testing::Test {
 protected:
  void TearDown() override {
    if (scheduler_) scheduler_->stop();
    EXPECT_TRUE(eventually([&] { return threads_.running() == 0; })) << threads_.running() << " threads still run";
  }
  void make(uint32_t workers) { scheduler_ = std::make_unique<EngineScheduler>(clock_, threads_, workers); }

  // Every round due has run and the timer thread sleeps for the next timer.
  void settle() {
    ASSERT_TRUE(clock_.wait_until_quiet(1, kGenerous));
    ASSERT_TRUE(eventually([&] { return scheduler_->idle(); }));
    ASSERT_TRUE(clock_.wait_until_quiet(1, kGenerous));
  }

  // Adds a task that only counts its rounds, to learn when every round queued before it ran.
  void run_probe() {
    std::atomic<bool> ran{false};
    EngineScheduler::TaskId probe = scheduler_->add([&] {
      ran = true;
      return EngineScheduler::kNoTimer;
    });
    ASSERT_TRUE(eventually([&] { return ran.load(); }));
    scheduler_->remove(probe);
  }

  testing::ManualClock clock_;
  testing::CountedThreads threads_;
  std::unique_ptr<EngineScheduler> scheduler_;
};

TEST_F(EngineSchedulerTest, ATimerRunsTheNextRoundAtItsTimeAndNotBefore) {
  make(2);
  std::atomic<int> rounds{0};
  auto id = scheduler_->add([&] {
    rounds += 1;
    return clock_.now() + 10s;
  });
  ASSERT_TRUE(eventually([&] { return rounds == 1; })) << "the first round runs at once";
  // One sleeper: the timer thread, however many workers.
  ASSERT_TRUE(clock_.wait_until_quiet(1, kGenerous));
  clock_.advance(9'999ms);
  ASSERT_TRUE(clock_.wait_until_quiet(1, kGenerous));
  EXPECT_EQ(rounds.load(), 1) << "ran before its time";
  clock_.advance(1ms);
  ASSERT_TRUE(eventually([&] { return rounds == 2; }));
  ASSERT_TRUE(clock_.wait_until_quiet(1, kGenerous));
  EXPECT_EQ(rounds.load(), 2);
  scheduler_->remove(id);
  ASSERT_TRUE(clock_.wait_until_quiet(0, kGenerous)) << "no task, no timer: nobody waits on the clock";
}

TEST_F(EngineSchedulerTest, AWakeRunsARoundAtOnceAndAnEarlierTimerReplacesALaterOne) {
  make(1);
  std::atomic<int> rounds{0};
  std::atomic<int> seconds_to_next{3600};
  auto id = scheduler_->add([&] {
    rounds += 1;
    return clock_.now() + std::chrono::seconds(seconds_to_next.load());
  });
  ASSERT_TRUE(eventually([&] { return rounds == 1; }));
  scheduler_->wake(id);  // no time passes: only the wake can run it
  ASSERT_TRUE(eventually([&] { return rounds == 2; }));
  seconds_to_next = 5;
  scheduler_->wake(id);
  ASSERT_TRUE(eventually([&] { return rounds == 3; }));  // asks for a round in 5 s now
  clock_.advance(5s);
  ASSERT_TRUE(eventually([&] { return rounds == 4; })) << "the timer of the last round was not the one used";
  scheduler_->remove(id);
  scheduler_->wake(id);  // removed: nothing, no crash
  run_probe();
  EXPECT_EQ(rounds.load(), 4);
}

TEST_F(EngineSchedulerTest, RoundsOfOneTaskNeverOverlapAndAWakeDuringOneRunsOneMore) {
  make(4);
  Gate gate;
  std::atomic<int> in_round{0};
  std::atomic<int> most_at_once{0};
  std::atomic<int> rounds{0};
  auto id = scheduler_->add([&] {
    int now_in = ++in_round;
    most_at_once = std::max(most_at_once.load(), now_in);
    if (rounds.fetch_add(1) == 0) gate.wait_inside();
    --in_round;
    return EngineScheduler::kNoTimer;
  });
  ASSERT_TRUE(gate.wait_until_inside(1));
  // Free workers, and wakes that must not start a second round beside the first.
  for (int i = 0; i < 20; ++i) scheduler_->wake(id);
  run_probe();  // a probe queued now runs on a free worker while the round is held
  EXPECT_EQ(rounds.load(), 1);
  gate.open();
  ASSERT_TRUE(eventually([&] { return rounds == 2; })) << "a wake during the round was lost";
  ASSERT_TRUE(eventually([&] { return scheduler_->rounds_run() >= 3; }));  // the probe's, and both of the task's
  run_probe();  // anything the second round queued ran before this
  EXPECT_EQ(rounds.load(), 2) << "twenty wakes during one round ran more than one round after it";
  EXPECT_EQ(most_at_once.load(), 1) << "two rounds of one task ran at once";
  scheduler_->remove(id);
}

TEST_F(EngineSchedulerTest, RemoveWaitsForTheRoundInProgressAndNoRoundStartsAfter) {
  make(2);
  Gate gate;
  std::atomic<int> rounds{0};
  std::atomic<bool> round_ended{false};
  auto id = scheduler_->add([&] {
    if (rounds.fetch_add(1) == 0) gate.wait_inside();
    round_ended = true;
    return clock_.now();  // due at once: without the remove, it would run again and again
  });
  ASSERT_TRUE(gate.wait_until_inside(1));
  scheduler_->wake(id);  // another round right after this one, unless removed first
  auto removed = std::async(std::launch::async, [&] {
    scheduler_->remove(id);
    return std::make_pair(round_ended.load(), rounds.load());
  });
  gate.open();
  auto [ended, rounds_at_remove] = removed.get();
  EXPECT_TRUE(ended) << "remove returned while the round still ran";
  run_probe();
  clock_.advance(1s);
  run_probe();
  EXPECT_EQ(rounds.load(), rounds_at_remove) << "a round started after remove returned";
}

TEST_F(EngineSchedulerTest, ManyTasksOnOneWorkerAllMakeProgress) {
  make(1);
  constexpr int kTasks = 200;
  std::vector<std::atomic<int>> rounds(kTasks);
  std::vector<EngineScheduler::TaskId> ids;
  for (int i = 0; i < kTasks; ++i) {
    ids.push_back(scheduler_->add([&, i] {
      rounds[i] += 1;
      return clock_.now() + std::chrono::seconds(1 + i % 3);  // 1, 2 or 3 s
    }));
  }
  auto all_reached = [&](int count) {
    for (const auto& task_rounds : rounds) {
      if (task_rounds.load() < count) return false;
    }
    return true;
  };
  ASSERT_TRUE(eventually([&] { return all_reached(1); }));
  for (int step = 0; step < 6; ++step) {
    settle();
    clock_.advance(1s);
  }
  // After 6 s: each task ran once at the start and once per period since.
  settle();
  for (int i = 0; i < kTasks; ++i) EXPECT_EQ(rounds[i].load(), 1 + 6 / (1 + i % 3)) << "task " << i;
  EXPECT_EQ(threads_.running(), 2u) << "one worker and the timer thread, whatever the number of tasks";
  for (auto id : ids) scheduler_->remove(id);
}

TEST_F(EngineSchedulerTest, ARoundMayWakeAnotherTaskAndItself) {
  make(1);
  std::atomic<int> a_rounds{0}, b_rounds{0};
  EngineScheduler::TaskId b = 0;
  std::atomic<EngineScheduler::TaskId> a{0};
  b = scheduler_->add([&] {
    b_rounds += 1;
    return EngineScheduler::kNoTimer;
  });
  a = scheduler_->add([&] {
    while (a.load() == 0) std::this_thread::yield();  // the first round may begin before add() returns
    if (a_rounds.fetch_add(1) < 3) {
      scheduler_->wake(a.load());  // again right after this round
      scheduler_->wake(b);
    }
    return EngineScheduler::kNoTimer;
  });
  ASSERT_TRUE(eventually([&] { return a_rounds == 4; }));
  run_probe();
  EXPECT_EQ(a_rounds.load(), 4);
  EXPECT_GE(b_rounds.load(), 2);
  EXPECT_LE(b_rounds.load(), 4);
  scheduler_->remove(a.load());
  scheduler_->remove(b);
}

}  // namespace
}  // namespace amirror::node
