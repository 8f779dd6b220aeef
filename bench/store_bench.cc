// SPDX-License-Identifier: Apache-2.0
// Store benchmark: amirror's Volume against plain pwrite/pread on a plain file of the
// same size, on the same file system, in the same run. Each case runs amirror and raw
// alternately (the order flips every repetition, so drift in machine load hits both),
// and reports medians and the ratio amirror/raw. See bench/README.md for the cases.
//
// The working set is meant to fit in the page cache: what is measured is the software
// path (locks, map lookups, copies, system calls), not the disk. Nothing is fsync'ed
// inside a timed section; both sides are synced before each timed run so leftover
// dirty pages of one side do not slow the other.
//
// Usage: store_bench [--dir DIR] [--repeats N] [--volume-size SIZE]
//                    [--working-set SIZE] [--ops N] [--filter TEXT] [--quick] [--verbose]
#include <fcntl.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "base/units.h"
#include "store/file_system.h"
#include "store/volume.h"

namespace amirror {
namespace {

constexpr uint64_t kBlockBytes = 4 * kKiB;
constexpr uint64_t kSequentialBytes = 1 * kMiB;
constexpr int kMaxThreads = 2;
constexpr int kLayersForDeepRead = 8;

struct Options {
  std::string dir = "/tmp";
  int repeats = 5;
  uint64_t volume_size_bytes = 1 * kGiB;
  uint64_t working_set_bytes = 256 * kMiB;
  uint64_t random_ops = 200000;  // per timed run of a 4 KiB random case
  std::string filter;
  bool verbose = false;
};

[[noreturn]] void die(const std::string& what) {
  std::fprintf(stderr, "store_bench: %s\n", what.c_str());
  std::exit(1);
}

void check(const Status& status, const char* what) {
  if (!status.ok()) die(std::string(what) + ": " + status.to_string());
}

template <typename T>
T take(Result<T> result, const char* what) {
  check(result.status(), what);
  return std::move(result).value();
}

// One timed workload: each thread issues its own precomputed list of offsets, so RNG
// cost is outside the timed section and amirror and raw see identical requests.
struct Workload {
  bool is_write = true;
  uint64_t request_bytes = kBlockBytes;
  std::vector<std::vector<uint64_t>> offsets_per_thread;
  uint64_t total_ops() const {
    uint64_t count = 0;
    for (const auto& offsets : offsets_per_thread) count += offsets.size();
    return count;
  }
};

// What a timed run talks to: a function doing one request.
using IoFunction = std::function<void(bool is_write, uint64_t offset_bytes, uint8_t* buffer,
                                      uint64_t length_bytes)>;

double thread_cpu_seconds() {
  timespec now;
  ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &now);
  return static_cast<double>(now.tv_sec) + static_cast<double>(now.tv_nsec) * 1e-9;
}

struct Timing {
  double wall_seconds = 0;  // of the parallel section only
  double cpu_seconds = 0;   // user + system time of the I/O threads, summed
};

// Runs the workload with one thread per offset list.
Timing run_timed(const Workload& workload, const IoFunction& io) {
  size_t thread_count = workload.offsets_per_thread.size();
  std::vector<double> cpu_seconds(thread_count, 0);
  std::atomic<size_t> ready{0};
  std::atomic<bool> go{false};
  std::vector<std::thread> threads;
  for (size_t t = 0; t < thread_count; ++t) {
    threads.emplace_back([&, t] {
      std::vector<uint8_t> buffer(workload.request_bytes);
      std::mt19937_64 random(t + 1);
      for (auto& byte : buffer) byte = static_cast<uint8_t>(random());
      ready.fetch_add(1);
      while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
      double cpu_start = thread_cpu_seconds();
      for (uint64_t offset : workload.offsets_per_thread[t]) {
        io(workload.is_write, offset, buffer.data(), workload.request_bytes);
      }
      cpu_seconds[t] = thread_cpu_seconds() - cpu_start;
    });
  }
  while (ready.load() < thread_count) std::this_thread::yield();
  auto start = std::chrono::steady_clock::now();
  go.store(true, std::memory_order_release);
  for (auto& thread : threads) thread.join();
  Timing timing;
  timing.wall_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  for (double seconds : cpu_seconds) timing.cpu_seconds += seconds;
  return timing;
}

// ---- The raw side: a plain file, pwrite/pread ----------------------------------

// The raw file is filled with writes of the same size as the volume's fill (one chunk).
// This matters: the page cache keeps a file in folios as large as the writes that filled
// it (Linux >= 6.16 on ext4), and a 4 KiB write into a 1 MiB folio costs ~2x one into a
// 64 KiB folio. Filling both sides alike compares the software paths, not folio sizes.
class RawFile {
 public:
  RawFile(const std::string& path, uint64_t size_bytes, uint64_t prewrite_bytes,
          uint64_t prewrite_request_bytes)
      : path_(path) {
    fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (fd_ < 0) die("open " + path + ": " + std::strerror(errno));
    if (::ftruncate(fd_, static_cast<off_t>(size_bytes)) != 0) die("truncate " + path);
    std::vector<uint8_t> block(prewrite_request_bytes, 0x5a);
    for (uint64_t offset = 0; offset < prewrite_bytes; offset += block.size()) {
      io(true, offset, block.data(), std::min<uint64_t>(block.size(), prewrite_bytes - offset));
    }
    sync();
  }
  ~RawFile() {
    ::close(fd_);
    ::unlink(path_.c_str());
  }
  void io(bool is_write, uint64_t offset_bytes, uint8_t* buffer, uint64_t length_bytes) {
    ssize_t done = is_write ? ::pwrite(fd_, buffer, length_bytes, static_cast<off_t>(offset_bytes))
                            : ::pread(fd_, buffer, length_bytes, static_cast<off_t>(offset_bytes));
    if (done != static_cast<ssize_t>(length_bytes)) die("raw I/O on " + path_ + " failed or was short");
  }
  void sync() {
    if (::fdatasync(fd_) != 0) die("fdatasync " + path_);
  }

 private:
  std::string path_;
  int fd_ = -1;
};

// ---- The amirror side -----------------------------------------------------------

struct VolumeUnderTest {
  std::string dir;
  std::unique_ptr<Volume> volume;
  ~VolumeUnderTest() {
    volume.reset();
    std::error_code ignored;
    std::filesystem::remove_all(dir, ignored);
  }
  void io(bool is_write, uint64_t offset_bytes, uint8_t* buffer, uint64_t length_bytes) {
    if (is_write) {
      check(volume->write(offset_bytes, std::span<const uint8_t>(buffer, length_bytes)), "volume write");
    } else {
      check(volume->read(offset_bytes, std::span<uint8_t>(buffer, length_bytes)), "volume read");
    }
  }
};

std::unique_ptr<VolumeUnderTest> create_volume(const Options& options, uint64_t chunk_size_bytes) {
  auto under_test = std::make_unique<VolumeUnderTest>();
  under_test->dir = options.dir + "/amirror-store-bench-" + std::to_string(::getpid()) + "-vol";
  std::error_code ignored;
  std::filesystem::remove_all(under_test->dir, ignored);
  check(posix_file_system().make_dir(under_test->dir), "make volume dir");
  VolumeOptions volume_options;
  volume_options.size_bytes = options.volume_size_bytes;
  volume_options.chunk_size_bytes = chunk_size_bytes;
  under_test->volume = take(Volume::create(posix_file_system(), under_test->dir, volume_options),
                            "create volume");
  return under_test;
}

// Writes [0, working set) with 1 MiB writes, only the chunks `select` accepts.
void fill(Volume& volume, uint64_t working_set_bytes, const std::function<bool(uint64_t)>& select) {
  std::vector<uint8_t> buffer(volume.chunk_size_bytes(), 0xa5);
  for (uint64_t chunk = 0; chunk * volume.chunk_size_bytes() < working_set_bytes; ++chunk) {
    if (!select(chunk)) continue;
    check(volume.write(chunk * volume.chunk_size_bytes(), buffer), "fill write");
  }
  check(volume.flush(), "fill flush");
}

// ---- Workloads ------------------------------------------------------------------

Workload random_blocks(const Options& options, bool is_write, int thread_count, uint64_t seed) {
  Workload workload;
  workload.is_write = is_write;
  workload.request_bytes = kBlockBytes;
  std::mt19937_64 random(seed);
  uint64_t block_count = options.working_set_bytes / kBlockBytes;
  workload.offsets_per_thread.resize(static_cast<size_t>(thread_count));
  for (auto& offsets : workload.offsets_per_thread) {
    offsets.resize(options.random_ops / static_cast<uint64_t>(thread_count));
    for (auto& offset : offsets) offset = (random() % block_count) * kBlockBytes;
  }
  return workload;
}

// One 4 KiB write per chunk of the working set, chunks in random order, at a random
// block inside the chunk: after a freeze, every write is a first write.
Workload one_block_per_chunk(const Options& options, uint64_t chunk_size_bytes, int thread_count,
                             uint64_t seed) {
  Workload workload;
  workload.request_bytes = kBlockBytes;
  std::mt19937_64 random(seed);
  std::vector<uint64_t> chunks(options.working_set_bytes / chunk_size_bytes);
  for (uint64_t i = 0; i < chunks.size(); ++i) chunks[i] = i;
  std::shuffle(chunks.begin(), chunks.end(), random);
  workload.offsets_per_thread.resize(static_cast<size_t>(thread_count));
  uint64_t blocks_per_chunk = chunk_size_bytes / kBlockBytes;
  for (size_t i = 0; i < chunks.size(); ++i) {
    uint64_t offset = chunks[i] * chunk_size_bytes + (random() % blocks_per_chunk) * kBlockBytes;
    workload.offsets_per_thread[i % static_cast<size_t>(thread_count)].push_back(offset);
  }
  return workload;
}

Workload sequential(const Options& options, uint64_t passes) {
  Workload workload;
  workload.request_bytes = kSequentialBytes;
  workload.offsets_per_thread.resize(1);
  for (uint64_t pass = 0; pass < passes; ++pass) {
    for (uint64_t offset = 0; offset + kSequentialBytes <= options.working_set_bytes;
         offset += kSequentialBytes) {
      workload.offsets_per_thread[0].push_back(offset);
    }
  }
  return workload;
}

// ---- Cases ----------------------------------------------------------------------

struct Case {
  std::string name;
  int threads = 1;
  bool target_applies = false;  // the "within 10% of raw" target
  uint64_t chunk_size_bytes = kDefaultChunkSizeBytes;
  // Brings a fresh volume to the case's starting state (untimed).
  std::function<void(Volume&)> setup;
  // Runs before every timed amirror run (untimed), e.g. a freeze.
  std::function<void(Volume&)> before_each;
  std::function<Workload(uint64_t seed)> workload;
};

struct Row {
  std::string name;
  int threads = 0;
  bool target_applies = false;
  uint64_t request_bytes = 0;
  double amirror_ops_per_second = 0;
  double raw_ops_per_second = 0;
  double ratio_min = 0, ratio_max = 0;  // of the per-repetition paired ratios
  // CPU time per request (all I/O threads), a second view that is less sensitive to
  // other processes taking the CPU away than wall-clock throughput.
  double amirror_cpu_us_per_op = 0;
  double raw_cpu_us_per_op = 0;
};

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  size_t n = values.size();
  return n % 2 == 1 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2;
}

Row run_case(const Options& options, const Case& bench_case) {
  std::fprintf(stderr, "  %-44s threads=%d ", bench_case.name.c_str(), bench_case.threads);
  RawFile raw(options.dir + "/amirror-store-bench-" + std::to_string(::getpid()) + "-raw",
              options.volume_size_bytes, options.working_set_bytes, bench_case.chunk_size_bytes);
  std::unique_ptr<VolumeUnderTest> under_test = create_volume(options, bench_case.chunk_size_bytes);
  Volume& volume = *under_test->volume;
  bench_case.setup(volume);
  IoFunction amirror_io = [&](bool w, uint64_t o, uint8_t* b, uint64_t l) { under_test->io(w, o, b, l); };
  IoFunction raw_io = [&](bool w, uint64_t o, uint8_t* b, uint64_t l) { raw.io(w, o, b, l); };

  std::vector<double> amirror_rates, raw_rates, ratios, amirror_cpu, raw_cpu;
  uint64_t request_bytes = 0;
  for (int repeat = 0; repeat < options.repeats; ++repeat) {
    Workload workload = bench_case.workload(static_cast<uint64_t>(repeat) * 7919 + 17);
    request_bytes = workload.request_bytes;
    double ops = static_cast<double>(workload.total_ops());
    auto run_amirror = [&] {
      if (bench_case.before_each) bench_case.before_each(volume);
      check(volume.flush(), "flush before run");
      Timing timing = run_timed(workload, amirror_io);
      amirror_rates.push_back(ops / timing.wall_seconds);
      amirror_cpu.push_back(timing.cpu_seconds * 1e6 / ops);
      return amirror_rates.back();
    };
    auto run_raw = [&] {
      raw.sync();
      Timing timing = run_timed(workload, raw_io);
      raw_rates.push_back(ops / timing.wall_seconds);
      raw_cpu.push_back(timing.cpu_seconds * 1e6 / ops);
      return raw_rates.back();
    };
    double amirror_rate, raw_rate;
    if (repeat % 2 == 0) {
      amirror_rate = run_amirror();
      raw_rate = run_raw();
    } else {
      raw_rate = run_raw();
      amirror_rate = run_amirror();
    }
    ratios.push_back(amirror_rate / raw_rate);
    if (options.verbose) {
      std::fprintf(stderr, "\n    repeat %d: amirror %.0f op/s %.2f cpu-us/op, raw %.0f op/s %.2f cpu-us/op",
                   repeat, amirror_rate, amirror_cpu.back(), raw_rate, raw_cpu.back());
    } else {
      std::fprintf(stderr, ".");
    }
  }
  std::fprintf(stderr, "\n");
  Row row;
  row.name = bench_case.name;
  row.threads = bench_case.threads;
  row.target_applies = bench_case.target_applies;
  row.request_bytes = request_bytes;
  row.amirror_ops_per_second = median(amirror_rates);
  row.raw_ops_per_second = median(raw_rates);
  row.ratio_min = *std::min_element(ratios.begin(), ratios.end());
  row.ratio_max = *std::max_element(ratios.begin(), ratios.end());
  row.amirror_cpu_us_per_op = median(amirror_cpu);
  row.raw_cpu_us_per_op = median(raw_cpu);
  return row;
}

std::vector<Case> make_cases(const Options& options) {
  std::vector<Case> cases;
  const uint64_t working_set = options.working_set_bytes;
  auto all_chunks = [](uint64_t) { return true; };
  // Steady state: the working set is written once, frozen, and written again, so every
  // chunk is in the active layer and each write goes in place.
  auto steady_setup = [=](Volume& volume) {
    fill(volume, working_set, all_chunks);
    check(volume.freeze().status(), "freeze");
    fill(volume, working_set, all_chunks);
  };
  // Copy-on-first-write: start from the steady state; before each run, freeze (every chunk the last run wrote is now
  // frozen) and merge the oldest layer so the stack stays at one frozen layer + active.
  auto freeze_setup = steady_setup;
  auto freeze_before_each = [](Volume& volume) {
    check(volume.freeze().status(), "freeze");
    check(volume.merge_oldest(), "merge");
  };
  // Deep read: chunk i is written in layer (i mod 8) + 1, each layer is frozen, and the
  // active layer stays empty: a read looks through the active layer and 1..8 frozen ones.
  auto deep_setup = [=](Volume& volume) {
    for (int layer = 0; layer < kLayersForDeepRead; ++layer) {
      fill(volume, working_set, [layer](uint64_t chunk) { return chunk % kLayersForDeepRead == uint64_t(layer); });
      check(volume.freeze().status(), "freeze");
    }
  };

  for (int threads = 1; threads <= kMaxThreads; ++threads) {
    cases.push_back({"4K rand write, steady (chunk 64K)", threads, true, 64 * kKiB, steady_setup,
                     nullptr, [=](uint64_t seed) { return random_blocks(options, true, threads, seed); }});
  }
  for (uint64_t chunk : {64 * kKiB, 4 * kKiB}) {
    for (int threads = 1; threads <= kMaxThreads; ++threads) {
      std::string name = "4K rand write, after freeze (chunk " + std::to_string(chunk / kKiB) + "K)";
      cases.push_back({name, threads, false, chunk, freeze_setup, freeze_before_each,
                       [=](uint64_t seed) { return one_block_per_chunk(options, chunk, threads, seed); }});
    }
  }
  uint64_t passes = std::max<uint64_t>(1, 1 * kGiB / working_set);
  cases.push_back({"1M seq write, steady (chunk 64K)", 1, false, 64 * kKiB, steady_setup, nullptr,
                   [=](uint64_t) { return sequential(options, passes); }});
  cases.push_back({"1M seq write, after freeze (chunk 64K)", 1, false, 64 * kKiB, freeze_setup,
                   freeze_before_each, [=](uint64_t) { return sequential(options, 1); }});
  for (int threads = 1; threads <= kMaxThreads; ++threads) {
    cases.push_back({"4K rand read, 1 layer (chunk 64K)", threads, true, 64 * kKiB, steady_setup,
                     nullptr, [=](uint64_t seed) { return random_blocks(options, false, threads, seed); }});
  }
  for (int threads = 1; threads <= kMaxThreads; ++threads) {
    cases.push_back({"4K rand read, 8 frozen layers (chunk 64K)", threads, true, 64 * kKiB, deep_setup,
                     nullptr, [=](uint64_t seed) { return random_blocks(options, false, threads, seed); }});
  }
  return cases;
}

void print_table(const std::vector<Row>& rows) {
  std::printf("\nWall clock (median of repetitions); ratio = amirror/raw op/s, range = min-max of\n"
              "the per-repetition paired ratios. CPU: median CPU us per request of the I/O threads;\n"
              "cpu ratio = raw/amirror (1.0 = same cost, < 0.9 = more than 10%% slower).\n\n");
  std::printf("%-42s %3s %10s %8s %10s %8s %6s %-11s %7s %7s %6s %s\n", "case", "thr", "amirror/s",
              "MB/s", "raw/s", "MB/s", "ratio", "range", "cpu-us", "raw-us", "cpu-r", "target");
  for (const Row& row : rows) {
    double ratio = row.amirror_ops_per_second / row.raw_ops_per_second;
    double cpu_ratio = row.raw_cpu_us_per_op / row.amirror_cpu_us_per_op;
    const char* verdict = !row.target_applies ? "-" : ratio >= 0.9 ? "ok" : "MISS";
    double mb = static_cast<double>(row.request_bytes) / 1e6;
    char range[32];
    std::snprintf(range, sizeof range, "%.2f-%.2f", row.ratio_min, row.ratio_max);
    std::printf("%-42s %3d %10.0f %8.1f %10.0f %8.1f %6.3f %-11s %7.2f %7.2f %6.3f %s\n",
                row.name.c_str(), row.threads, row.amirror_ops_per_second,
                row.amirror_ops_per_second * mb, row.raw_ops_per_second,
                row.raw_ops_per_second * mb, ratio, range, row.amirror_cpu_us_per_op,
                row.raw_cpu_us_per_op, cpu_ratio, verdict);
  }
  std::fflush(stdout);
}

Options parse_options(int argc, char** argv) {
  Options options;
  auto size = [](const char* text) {
    Result<uint64_t> parsed = parse_size_bytes(text);
    if (!parsed.ok()) die(parsed.status().to_string());
    return parsed.value();
  };
  for (int i = 1; i < argc; ++i) {
    std::string flag = argv[i];
    auto value = [&]() -> const char* {
      if (i + 1 >= argc) die(flag + " needs a value");
      return argv[++i];
    };
    if (flag == "--dir") {
      options.dir = value();
    } else if (flag == "--repeats") {
      options.repeats = std::atoi(value());
    } else if (flag == "--volume-size") {
      options.volume_size_bytes = size(value());
    } else if (flag == "--working-set") {
      options.working_set_bytes = size(value());
    } else if (flag == "--ops") {
      options.random_ops = std::strtoull(value(), nullptr, 10);
    } else if (flag == "--filter") {
      options.filter = value();
    } else if (flag == "--verbose") {
      options.verbose = true;
    } else if (flag == "--quick") {  // a smoke run: small sizes, 1 repeat
      options.repeats = 1;
      options.volume_size_bytes = 64 * kMiB;
      options.working_set_bytes = 16 * kMiB;
      options.random_ops = 20000;
    } else if (flag == "--help" || flag == "-h") {
      std::printf("usage: store_bench [--dir DIR] [--repeats N] [--volume-size SIZE]\n"
                  "                   [--working-set SIZE] [--ops N] [--filter TEXT] [--quick] [--verbose]\n");
      std::exit(0);
    } else {
      die("unknown flag " + flag + " (try --help)");
    }
  }
  if (options.repeats < 1 || options.repeats > 1000) die("--repeats must be 1..1000");
  if (options.random_ops < kMaxThreads) die("--ops must be at least 2");
  if (options.working_set_bytes < 2 * kSequentialBytes || options.working_set_bytes % kSequentialBytes != 0 ||
      options.working_set_bytes > options.volume_size_bytes) {
    die("--working-set must be a multiple of 1 MiB, at least 2 MiB, and at most the volume size");
  }
  return options;
}

}  // namespace
}  // namespace amirror

int main(int argc, char** argv) {
  using namespace amirror;
  Options options = parse_options(argc, argv);
  std::printf("store_bench: dir=%s volume=%s working_set=%s random_ops=%llu repeats=%d\n",
              options.dir.c_str(), format_bytes(options.volume_size_bytes).c_str(),
              format_bytes(options.working_set_bytes).c_str(),
              static_cast<unsigned long long>(options.random_ops), options.repeats);
  std::fflush(stdout);
  std::vector<Row> rows;
  for (const Case& bench_case : make_cases(options)) {
    if (!options.filter.empty() && bench_case.name.find(options.filter) == std::string::npos) continue;
    rows.push_back(run_case(options, bench_case));
  }
  print_table(rows);
  return 0;
}
