// SPDX-License-Identifier: Apache-2.0
// `amirror demo`: two real nodes on a temporary directory. A writer fills a volume on
// site-a through NBD while it is being mirrored to site-b; the live status is shown;
// then `mirror sync`, and the replica is compared byte for byte with the source, read
// through NBD from both nodes and from the replica's image file.
#include <fcntl.h>
#include <fmt/core.h>
#include <libnbd.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>
#include <vector>

#include "base/units.h"
#include "cli/demo.h"
#include "net/pki.h"
#include "node/control_socket.h"

extern char** environ;

namespace amirror::cli {
namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

constexpr uint64_t kVolumeSizeBytes = 256 * kMiB;
constexpr auto kWriteDuration = std::chrono::seconds(5);

uint16_t free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof address;
  ::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length);
  uint16_t port = ntohs(address.sin_port);
  ::close(fd);
  return port;
}

struct DemoNode {
  std::string name;
  std::string dir;
  uint16_t peer_port = 0;
  pid_t pid = -1;
  std::string control_socket() const { return dir + "/" + name + ".sock"; }
  std::string nbd_socket() const { return dir + "/" + name + "-nbd.sock"; }
  std::string config_path() const { return dir + "/" + name + ".toml"; }
};

class MirrorDemo {
 public:
  explicit MirrorDemo(std::string dir) : dir_(std::move(dir)) {}
  ~MirrorDemo() { stop_nodes(); }

  bool run() {
    nodes_ = {{"site-a", dir_, free_port()}, {"site-b", dir_, free_port()}};
    // Real certificates, so the demo's replicas travel as a deployment's would: over
    // TLS 1.3 with both nodes authenticated.
    Status pki = net::make_demo_pki(dir_, {"site-a", "site-b"});
    if (!pki.ok()) {
      fmt::print(stderr, "amirror demo: cannot make certificates: {}\n", pki.to_string());
      return false;
    }
    for (size_t i = 0; i < 2; ++i) {
      const DemoNode& self = nodes_[i];
      const DemoNode& other = nodes_[1 - i];
      net::TlsFiles tls = net::demo_tls_files(dir_, self.name);
      std::ofstream(self.config_path()) << fmt::format(
          "[node]\nname = \"{}\"\ndata_dir = \"{}/{}-data\"\ncontrol_socket = \"{}\"\nnbd_socket = \"{}\"\n"
          "listen = \"127.0.0.1:{}\"\n\n[tls]\ncertificate = \"{}\"\nkey = \"{}\"\nca = \"{}\"\n\n"
          "[[peers]]\nname = \"{}\"\naddress = \"127.0.0.1:{}\"\n",
          self.name, dir_, self.name, self.control_socket(), self.nbd_socket(), self.peer_port,
          tls.certificate_path, tls.key_path, tls.ca_path, other.name, other.peer_port);
      if (!start_node(nodes_[i])) return false;
    }
    fmt::print("started nodes site-a and site-b, peers on TLS 1.3 with certificates from a throw-away CA\n"
               "(configs, certificates and logs in {})\n", dir_);

    if (!request(nodes_[0], {{"command", "volume_create"}, {"name", "vm-disk"}, {"size_bytes", kVolumeSizeBytes}})) return false;
    fmt::print("created volume vm-disk ({}) on site-a\n", format_bytes(kVolumeSizeBytes));
    if (!request(nodes_[0], {{"command", "mirror_start"}, {"volume", "vm-disk"}, {"targets", {"site-b"}}, {"interval_ms", 1000}})) {
      return false;
    }
    fmt::print("mirroring vm-disk to site-b every second; writing through NBD for {} s...\n",
               std::chrono::duration_cast<std::chrono::seconds>(kWriteDuration).count());

    std::atomic<bool> writing{true};
    std::string write_error;
    uint64_t written_bytes = 0;
    std::thread writer([&] {
      write_error = write_while_mirroring(written_bytes);
      writing = false;
    });
    while (writing) {
      std::this_thread::sleep_for(std::chrono::seconds(1));
      print_status_line();
    }
    writer.join();
    if (!write_error.empty()) {
      fmt::print(stderr, "demo: writing through NBD failed: {}\n", write_error);
      return false;
    }
    fmt::print("writer done: {} in random writes, flushed\n", format_bytes(written_bytes));

    auto start = Clock::now();
    if (!request(nodes_[0], {{"command", "mirror_sync"}, {"volume", "vm-disk"}, {"timeout_ms", 120'000}})) return false;
    fmt::print("mirror sync: site-b applied the final cycle in {:.2f} s\n",
               std::chrono::duration<double>(Clock::now() - start).count());
    print_status_line();

    json target_status;
    if (!request(nodes_[1], {{"command", "status"}}, &target_status)) return false;
    std::string image_path = target_status["replicas"][0]["image_path"];
    return verify(image_path);
  }

 private:
  bool start_node(DemoNode& node) {
    std::string log_path = dir_ + "/" + node.name + ".log";
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 1, log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    posix_spawn_file_actions_adddup2(&actions, 1, 2);
    std::string self = std::filesystem::read_symlink("/proc/self/exe");
    std::string config = node.config_path();
    const char* argv[] = {self.c_str(), "node", "--config", config.c_str(), nullptr};
    int error = posix_spawn(&node.pid, self.c_str(), &actions, nullptr, const_cast<char**>(argv), environ);
    posix_spawn_file_actions_destroy(&actions);
    if (error != 0) {
      fmt::print(stderr, "demo: cannot start node {}: {}\n", node.name, std::strerror(error));
      return false;
    }
    for (int attempt = 0; attempt < 100; ++attempt) {
      if (node::control_call(node.control_socket(), R"({"command":"status"})", 1000).ok()) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    fmt::print(stderr, "demo: node {} did not come up; see {}\n", node.name, log_path);
    return false;
  }

  void stop_nodes() {
    for (DemoNode& node : nodes_) {
      if (node.pid > 0) ::kill(node.pid, SIGTERM);
    }
    for (DemoNode& node : nodes_) {
      if (node.pid > 0) ::waitpid(node.pid, nullptr, 0);
      node.pid = -1;
    }
  }

  bool request(const DemoNode& node, const json& message, json* answer_out = nullptr) {
    auto response = node::control_call(node.control_socket(), message.dump(), 180'000);
    if (!response.ok()) {
      fmt::print(stderr, "demo: {}: {}\n", node.name, response.status().message());
      return false;
    }
    json answer = json::parse(response.value(), nullptr, false);
    if (answer.is_discarded() || !answer.value("ok", false)) {
      fmt::print(stderr, "demo: {} refused {}: {}\n", node.name, message["command"].get<std::string>(),
                 answer.is_discarded() ? "bad answer" : answer.value("error", ""));
      return false;
    }
    if (answer_out != nullptr) *answer_out = std::move(answer);
    return true;
  }

  void print_status_line() {
    json status;
    if (!request(nodes_[0], {{"command", "status"}}, &status)) return;
    const json& volume = status["volumes"][0];
    const json& mirror = volume["mirrors"][0];
    fmt::print("  status: cycle {:>3} | site-b {:<12} replica cycle {:>3} | lag {:>5} | pending {:>10} | sent {:>10}\n",
               volume["cycle"].get<uint64_t>(), mirror["state"].get<std::string>(), mirror["applied_cycle"].get<uint64_t>(),
               mirror["lag_seconds"].is_number() ? fmt::format("{:.1f}s", mirror["lag_seconds"].get<double>()) : "-",
               format_bytes(mirror["bytes_pending"].get<uint64_t>()), format_bytes(mirror["bytes_sent"].get<uint64_t>()));
  }

  // Random writes of 4 KiB .. 1 MiB at 4 KiB-aligned offsets, through NBD.
  std::string write_while_mirroring(uint64_t& written_bytes) {
    nbd_handle* handle = nbd_create();
    if (handle == nullptr) return nbd_get_error();
    std::string uri = "nbd+unix:///vm-disk?socket=" + nodes_[0].nbd_socket();
    std::string error;
    if (nbd_connect_uri(handle, uri.c_str()) != 0) {
      error = nbd_get_error();
      nbd_close(handle);
      return error;
    }
    std::mt19937_64 random(20261125);
    std::vector<uint8_t> buffer(kMiB);
    auto end = Clock::now() + kWriteDuration;
    while (Clock::now() < end && error.empty()) {
      uint64_t length = 4096 * std::uniform_int_distribution<uint64_t>(1, 256)(random);
      uint64_t offset = 4096 * std::uniform_int_distribution<uint64_t>(0, (kVolumeSizeBytes - length) / 4096)(random);
      for (size_t i = 0; i < length; i += 8) {
        uint64_t word = random();
        std::memcpy(buffer.data() + i, &word, 8);
      }
      if (nbd_pwrite(handle, buffer.data(), length, offset, 0) != 0) error = nbd_get_error();
      written_bytes += length;
      std::this_thread::sleep_for(std::chrono::milliseconds(2));  // a steady, not saturating, writer
    }
    if (error.empty() && nbd_flush(handle, 0) != 0) error = nbd_get_error();
    nbd_shutdown(handle, 0);
    nbd_close(handle);
    return error;
  }

  bool read_export(const std::string& socket, const std::string& export_name, std::vector<uint8_t>& out) {
    nbd_handle* handle = nbd_create();
    nbd_set_export_name(handle, export_name.c_str());
    bool ok = nbd_connect_unix(handle, socket.c_str()) == 0;
    out.assign(kVolumeSizeBytes, 0);
    for (uint64_t offset = 0; ok && offset < kVolumeSizeBytes; offset += 4 * kMiB) {
      ok = nbd_pread(handle, out.data() + offset, 4 * kMiB, offset, 0) == 0;
    }
    if (!ok) fmt::print(stderr, "demo: reading export {} failed: {}\n", export_name, nbd_get_error());
    nbd_shutdown(handle, 0);
    nbd_close(handle);
    return ok;
  }

  bool verify(const std::string& image_path) {
    std::vector<uint8_t> source, replica_export;
    if (!read_export(nodes_[0].nbd_socket(), "vm-disk", source)) return false;
    if (!read_export(nodes_[1].nbd_socket(), "site-a/vm-disk", replica_export)) return false;
    std::ifstream image_file(image_path, std::ios::binary);
    std::vector<uint8_t> image(kVolumeSizeBytes);
    image_file.read(reinterpret_cast<char*>(image.data()), static_cast<std::streamsize>(image.size()));
    bool ok = true;
    for (const auto& [what, bytes] : {std::pair{"replica export site-a/vm-disk on site-b", &replica_export},
                                      std::pair{"replica image file", &image}}) {
      if (*bytes == source) {
        fmt::print("verified {}: {} identical to the source\n", what, format_bytes(source.size()));
      } else {
        size_t first = 0;
        while ((*bytes)[first] == source[first]) ++first;
        fmt::print(stderr, "demo: {} differs from the source at offset {}\n", what, first);
        ok = false;
      }
    }
    if (ok) fmt::print("demo: OK — the replica on site-b is a byte-for-byte copy of vm-disk\n");
    return ok;
  }

  std::string dir_;
  std::vector<DemoNode> nodes_;
};

}  // namespace

int run_demo(const DemoArgs& args) {
  if (args.store_only) return run_store_demo(args);
  return run_in_demo_dir(args, "amirror demo", [](const std::string& dir) { return MirrorDemo(dir).run(); });
}

}  // namespace amirror::cli
