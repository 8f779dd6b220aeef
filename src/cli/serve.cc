// SPDX-License-Identifier: Apache-2.0
// `amirror serve`: serves every volume of a data directory over NBD until SIGTERM or
// SIGINT. Stand-alone until the node daemon folds the server in (issue 3).
//
// TLS (--tls allow|require): the certificate, key and CA are loaded and checked before
// anything is served; a file problem stops startup (exit 1). See nbd/server.h for what
// each mode means on TCP and on the Unix socket.
//
// Shutdown order: stop accepting, shut down client sockets and wait for in-flight
// requests (nbd::Server::stop), stop the freezer, flush every volume. Signals are
// blocked in every thread and taken synchronously by the main thread (sigwait), so no
// async-signal-safety concerns.
#include <signal.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "base/log.h"
#include "base/names.h"
#include "cli/commands.h"
#include "cli/stop_signals.h"
#include "nbd/server.h"
#include "nbd/volume_export.h"
#include "net/tls.h"
#include "store/data_dir.h"

namespace amirror::cli {

namespace {

struct NamedVolume {
  std::string name;
  std::shared_ptr<Volume> volume;
};

int64_t elapsed_ms(std::chrono::steady_clock::time_point from, std::chrono::steady_clock::time_point to) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(to - from).count();
}

// Freezes every volume and merges its oldest frozen layer every interval, so clients
// see "freezes and merges happen underneath". Stops promptly on request.
class Freezer {
 public:
  Freezer(std::vector<NamedVolume> volumes, uint64_t interval_ms)
      : volumes_(std::move(volumes)), interval_ms_(interval_ms) {
    thread_ = std::thread([this] { run(); });
  }
  ~Freezer() {
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
    }
    wake_.notify_all();
    thread_.join();
    // Tests read freeze_cycles to know the cycles really ran underneath.
    log::info("serve", "freezer stopped", {{"freeze_cycles", cycles_}});
  }

 private:
  void run() {
    std::unique_lock lock(mutex_);
    for (;;) {
      if (wake_.wait_for(lock, std::chrono::milliseconds(interval_ms_),
                         [&] { return stopping_; })) {
        return;
      }
      lock.unlock();
      for (const NamedVolume& entry : volumes_) {
        const auto started = std::chrono::steady_clock::now();
        Result<uint64_t> cycle = entry.volume->freeze();
        if (!cycle.ok()) {
          log::error("serve", "freeze failed", {{"volume", entry.name}, {"error", cycle.status().to_string()}});
          continue;
        }
        const auto frozen = std::chrono::steady_clock::now();
        Status merged = entry.volume->merge_oldest();
        if (!merged.ok()) {
          log::error("serve", "merge failed", {{"volume", entry.name}, {"error", merged.to_string()}});
        }
        // What a cycle cost the clients: the stall held their writes back; the rest ran beside them.
        log::debug("serve", "cycle", {{"volume", entry.name}, {"cycle", cycle.value()},
                                      {"stall_us", entry.volume->last_freeze_stall_us()},
                                      {"freeze_ms", elapsed_ms(started, frozen)},
                                      {"merge_ms", elapsed_ms(frozen, std::chrono::steady_clock::now())}});
      }
      lock.lock();
      ++cycles_;
    }
  }

  std::vector<NamedVolume> volumes_;
  const uint64_t interval_ms_;
  std::mutex mutex_;
  std::condition_variable wake_;
  bool stopping_ = false;  // GUARDED_BY(mutex_)
  uint64_t cycles_ = 0;    // GUARDED_BY(mutex_)
  std::thread thread_;
};

Result<std::vector<NamedVolume>> open_volumes(DataDir& data_dir, const ServeArgs& args) {
  AMIRROR_ASSIGN_OR_RETURN(std::vector<std::string> names, data_dir.list_volumes());
  if (!args.create_volume.empty() &&
      std::find(names.begin(), names.end(), args.create_volume) == names.end()) {
    AMIRROR_RETURN_IF_ERROR(validate_name(args.create_volume, "volume name"));
    if (args.create_size_bytes == 0) {
      return invalid_argument("--create " + args.create_volume + " needs --size, e.g. --size 10G");
    }
    VolumeOptions options;
    options.size_bytes = args.create_size_bytes;
    if (args.create_chunk_size_bytes != 0) options.chunk_size_bytes = args.create_chunk_size_bytes;
    AMIRROR_ASSIGN_OR_RETURN(std::unique_ptr<Volume> created,
                             data_dir.create_volume(args.create_volume, options));
    created.reset();
    names.push_back(args.create_volume);
  }
  std::vector<NamedVolume> volumes;
  for (const std::string& name : names) {
    AMIRROR_ASSIGN_OR_RETURN(std::unique_ptr<Volume> volume, data_dir.open_volume(name));
    volumes.push_back(NamedVolume{name, std::shared_ptr<Volume>(std::move(volume))});
  }
  return volumes;
}

// The host of a --tcp address; "" for PORT or :PORT, which nbd::Server binds to
// loopback (127.0.0.1).
std::string tcp_host(const std::string& requested) {
  size_t colon = requested.rfind(':');
  return colon == std::string::npos ? "" : requested.substr(0, colon);
}

// "HOST:PORT" as bound: port 0 becomes the port the kernel chose (tests start servers
// on port 0 and read it from the startup line).
std::string bound_tcp_address(const std::string& requested, uint16_t port) {
  std::string host = tcp_host(requested);
  return (host.empty() ? "127.0.0.1" : host) + ":" + std::to_string(port);
}

bool is_loopback_address(const std::string& requested) {
  std::string host = tcp_host(requested);
  return host.empty() || host == "localhost" || host == "[::1]" || host.starts_with("127.");
}

}  // namespace

int run_serve(const ServeArgs& args) {
  if (args.socket_path.empty() && args.tcp_address.empty()) {
    std::fprintf(stderr, "amirror serve: give --socket PATH and/or --tcp [HOST:]PORT\n");
    return 2;
  }
  Result<nbd::TlsMode> tls_mode = nbd::parse_tls_mode(args.tls_mode);
  if (!tls_mode.ok()) {
    std::fprintf(stderr, "amirror serve: --tls: %s\n", tls_mode.status().message().c_str());
    return 2;
  }
  std::shared_ptr<net::TlsContext> tls;
  if (*tls_mode != nbd::TlsMode::kOff) {
    Result<std::shared_ptr<net::TlsContext>> loaded = net::TlsContext::load(
        net::TlsFiles{args.tls_certificate_path, args.tls_key_path, args.tls_ca_path},
        net::TlsVersions::k12AndLater);  // the NBD spec requires servers to offer TLS 1.2
    if (!loaded.ok()) {
      std::fprintf(stderr, "amirror serve: %s\n", loaded.status().message().c_str());
      return 1;
    }
    tls = std::move(*loaded);
  }
  log::configure(log::parse_level(args.log_level).value());  // main.cc checked it
  // Before any thread exists, so every thread inherits the mask.
  sigset_t stop_signals = block_stop_signals();

  Result<std::unique_ptr<DataDir>> data_dir = DataDir::open(posix_file_system(), args.data_dir);
  if (!data_dir.ok()) {
    log::error("serve", "cannot use data directory",
               {{"data_dir", args.data_dir}, {"error", data_dir.status().to_string()}});
    return 1;
  }
  Result<std::vector<NamedVolume>> volumes = open_volumes(**data_dir, args);
  if (!volumes.ok()) {
    log::error("serve", "cannot open volumes", {{"error", volumes.status().to_string()}});
    return 1;
  }
  auto catalog = std::make_shared<nbd::StaticCatalog>();
  for (const NamedVolume& entry : *volumes) {
    catalog->add(entry.name, std::make_shared<nbd::VolumeExport>(entry.volume));
  }

  nbd::ServerOptions options;
  options.unix_socket_path = args.socket_path;
  options.tcp_address = args.tcp_address;
  options.quiet = args.quiet;
  options.tls = tls;
  options.tls_mode = *tls_mode;
  Result<std::unique_ptr<nbd::Server>> server = nbd::Server::start(options, catalog);
  if (!server.ok()) {
    log::error("serve", "cannot start NBD server", {{"error", server.status().to_string()}});
    return 1;
  }
  std::string tls_note = "no TLS";
  if (tls != nullptr) {
    tls_note = "TLS " + std::string(nbd::tls_mode_name(*tls_mode)) + " as " + tls->subject();
    if (*tls_mode == nbd::TlsMode::kRequire && !args.socket_path.empty()) {
      tls_note += "; allowed, not required, on the Unix socket";
    }
  }
  // Tests read the bound port from tcp= (they start servers on port 0).
  log::info("serve", "serving",
            {{"volumes", volumes->size()},
             {"data_dir", args.data_dir},
             {"socket", args.socket_path},
             {"tcp", args.tcp_address.empty() ? "" : bound_tcp_address(args.tcp_address, (*server)->tcp_port())},
             {"tls", tls_note}});
  if (!args.tcp_address.empty() && !is_loopback_address(args.tcp_address) &&
      *tls_mode != nbd::TlsMode::kRequire) {
    log::warn("serve", "TCP listener is not loopback and TLS is not required: whoever reaches it can read and "
                       "write every volume",
              {{"tcp", args.tcp_address}});
  }

  std::unique_ptr<Freezer> freezer;
  if (args.freeze_interval_ms > 0) {
    freezer = std::make_unique<Freezer>(*volumes, args.freeze_interval_ms);
  }

  int signal_number = wait_for_stop_signal(stop_signals);
  log::info("serve", "shutting down", {{"signal", signal_number == SIGINT ? "SIGINT" : "SIGTERM"}});
  (*server)->stop();
  freezer.reset();
  int exit_code = 0;
  for (const NamedVolume& entry : *volumes) {
    Status flushed = entry.volume->flush();
    if (!flushed.ok()) {
      log::error("serve", "final flush failed", {{"volume", entry.name}, {"error", flushed.to_string()}});
      exit_code = 1;
    }
  }
  log::info("serve", "stopped");
  return exit_code;
}

}  // namespace amirror::cli
