// SPDX-License-Identifier: Apache-2.0
// Only this file includes prometheus-cpp. See metrics.h for what is counted where.
#include "node/metrics.h"

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <fstream>
#include <iterator>
#include <limits>
#include <nlohmann/json.hpp>
#include <prometheus/collectable.h>
#include <prometheus/counter.h>
#include <prometheus/exposer.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>
#include <sstream>

#include "base/log.h"
#include "nbd/protocol.h"
#include "nbd/server.h"
#include "node/volume_entry.h"

namespace amirror::node {
namespace {

using nlohmann::json;
using prometheus::ClientMetric;
using prometheus::MetricFamily;
using prometheus::MetricType;

// Seconds: from sub-millisecond NBD requests and freeze stalls to hour-long full copies.
const std::vector<double> kFastBuckets = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
                                          0.025,  0.05,    0.1,    0.25,  0.5,    1,     2.5};
const std::vector<double> kCycleBuckets = {0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600};

// The states a mirror can show (status `volumes[].mirrors[].state`), for the state set.
constexpr std::array<const char*, 9> kMirrorStates = {"initial-sync", "copying", "idle",      "lagging",
                                                       "error",        "stopped", "verifying", "differs",
                                                       "queued"};
// NBD commands by number (nbd/protocol.h); the label of the request histogram.
constexpr std::array<const char*, 8> kCommandLabels = {"read",  "write", "disc",         "flush",
                                                        "trim",  "cache", "write_zeroes", "block_status"};

// A histogram whose observe() takes no lock (prometheus::Histogram locks a mutex per
// observation): one atomic counter per bucket, summed up at scrape time. A scrape may
// see a count and a sum that are one observation apart; Prometheus tolerates that.
class AtomicHistogram {
 public:
  explicit AtomicHistogram(const std::vector<double>& bounds) : bounds_(bounds), counts_(bounds.size() + 1) {}

  void observe(double value) {
    size_t index = static_cast<size_t>(std::lower_bound(bounds_.begin(), bounds_.end(), value) - bounds_.begin());
    counts_[index].Increment();
    sum_.Increment(std::max(0.0, value));
  }

  ClientMetric::Histogram snapshot() const {
    ClientMetric::Histogram histogram;
    uint64_t cumulative = 0;
    for (size_t i = 0; i < counts_.size(); ++i) {
      cumulative += static_cast<uint64_t>(counts_[i].Value());
      double bound = i < bounds_.size() ? bounds_[i] : std::numeric_limits<double>::infinity();
      histogram.bucket.push_back({cumulative, bound});
    }
    histogram.sample_count = cumulative;
    histogram.sample_sum = sum_.Value();
    return histogram;
  }

 private:
  const std::vector<double> bounds_;
  std::vector<prometheus::Counter> counts_;  // non-cumulative; the last is +Inf
  prometheus::Counter sum_;
};

class NbdObserver;

// One export's traffic counters, taken once per connection.
class ExportCounters final : public nbd::ExportObserver {
 public:
  ExportCounters(std::shared_ptr<NbdObserver> server, prometheus::Counter& read_bytes, prometheus::Counter& read_ops,
                 prometheus::Counter& write_bytes, prometheus::Counter& write_ops)
      : server_(std::move(server)),
        read_bytes_(read_bytes),
        read_ops_(read_ops),
        write_bytes_(write_bytes),
        write_ops_(write_ops) {}
  void on_request(uint16_t command, uint32_t length_bytes, double seconds) override;

 private:
  const std::shared_ptr<NbdObserver> server_;
  prometheus::Counter& read_bytes_;
  prometheus::Counter& read_ops_;
  prometheus::Counter& write_bytes_;
  prometheus::Counter& write_ops_;
};

class NbdObserver final : public nbd::ServerObserver, public std::enable_shared_from_this<NbdObserver> {
 public:
  explicit NbdObserver(prometheus::Registry& registry)
      : connections_(prometheus::BuildGauge()
                         .Name("amirror_nbd_connections")
                         .Help("NBD client connections open now")
                         .Register(registry)
                         .Add({})),
        connections_total_(prometheus::BuildCounter()
                               .Name("amirror_nbd_connections_total")
                               .Help("NBD client connections accepted")
                               .Register(registry)
                               .Add({})),
        read_bytes_(prometheus::BuildCounter()
                        .Name("amirror_volume_read_bytes_total")
                        .Help("Bytes read over NBD, by export (a volume, or SOURCE/VOLUME for a replica)")
                        .Register(registry)),
        read_ops_(prometheus::BuildCounter()
                      .Name("amirror_volume_read_ops_total")
                      .Help("NBD READ requests, by export")
                      .Register(registry)),
        write_bytes_(prometheus::BuildCounter()
                         .Name("amirror_volume_write_bytes_total")
                         .Help("Bytes written over NBD (WRITE payload), by export")
                         .Register(registry)),
        write_ops_(prometheus::BuildCounter()
                       .Name("amirror_volume_write_ops_total")
                       .Help("NBD WRITE requests, by export")
                       .Register(registry)) {
    for (size_t i = 0; i < latency_.size(); ++i) latency_[i] = std::make_unique<AtomicHistogram>(kFastBuckets);
  }

  void on_connection_open() override {
    connections_.Increment();
    connections_total_.Increment();
  }
  void on_connection_close() override { connections_.Decrement(); }
  std::shared_ptr<nbd::ExportObserver> for_export(const std::string& export_name) override {
    // Family::Add locks the family: once per connection, never per request.
    const prometheus::Labels labels = {{"volume", export_name}};
    return std::make_shared<ExportCounters>(shared_from_this(), read_bytes_.Add(labels), read_ops_.Add(labels),
                                            write_bytes_.Add(labels), write_ops_.Add(labels));
  }

  void observe(uint16_t command, double seconds) {
    if (command < latency_.size()) latency_[command]->observe(seconds);
  }
  MetricFamily latency_family() const {
    MetricFamily family{"amirror_nbd_request_duration_seconds",
                        "NBD requests from header read to reply sent, by command", MetricType::Histogram, {}};
    for (size_t i = 0; i < latency_.size(); ++i) {
      if (i == nbd::kCmdDisc) continue;  // never answered
      ClientMetric metric;
      metric.label = {{"command", kCommandLabels[i]}};
      metric.histogram = latency_[i]->snapshot();
      family.metric.push_back(std::move(metric));
    }
    return family;
  }

 private:
  prometheus::Gauge& connections_;
  prometheus::Counter& connections_total_;
  prometheus::Family<prometheus::Counter>& read_bytes_;
  prometheus::Family<prometheus::Counter>& read_ops_;
  prometheus::Family<prometheus::Counter>& write_bytes_;
  prometheus::Family<prometheus::Counter>& write_ops_;
  std::array<std::unique_ptr<AtomicHistogram>, kCommandLabels.size()> latency_;
};

void ExportCounters::on_request(uint16_t command, uint32_t length_bytes, double seconds) {
  if (command == nbd::kCmdRead) {
    read_ops_.Increment();
    read_bytes_.Increment(length_bytes);
  } else if (command == nbd::kCmdWrite) {
    write_ops_.Increment();
    write_bytes_.Increment(length_bytes);
  }
  server_->observe(command, seconds);
}

// Builds one family of gauges or counters from the status document.
class FamilyBuilder {
 public:
  FamilyBuilder(std::string name, std::string help, MetricType type) : family_{std::move(name), std::move(help), type, {}} {}
  void add(std::vector<ClientMetric::Label> labels, double value) {
    ClientMetric metric;
    metric.label = std::move(labels);
    if (family_.type == MetricType::Counter) {
      metric.counter.value = value;
    } else {
      metric.gauge.value = value;
    }
    family_.metric.push_back(std::move(metric));
  }
  // Families without a series are left out of the exposition.
  void move_into(std::vector<MetricFamily>& out) {
    if (!family_.metric.empty()) out.push_back(std::move(family_));
  }

 private:
  MetricFamily family_;
};

double number_or(const json& value, double fallback) { return value.is_number() ? value.get<double>() : fallback; }

void collect_volumes(const json& status, std::vector<MetricFamily>& out) {
  FamilyBuilder cycle("amirror_volume_cycle", "The volume's newest freeze point (cycle number)", MetricType::Gauge);
  FamilyBuilder size("amirror_volume_size_bytes", "The volume's size", MetricType::Gauge);
  FamilyBuilder layers("amirror_volume_layers", "Layers of the volume (frozen ones and the active one)",
                       MetricType::Gauge);
  FamilyBuilder layer_bytes("amirror_volume_layer_bytes", "Bytes of chunk data held in the volume's layers",
                            MetricType::Gauge);
  FamilyBuilder state("amirror_volume_state", "1 for the volume's state (ok, importing, failed), else 0",
                      MetricType::Gauge);
  FamilyBuilder mirror_state("amirror_mirror_state", "1 for the mirror's state, 0 for the others", MetricType::Gauge);
  FamilyBuilder applied("amirror_mirror_applied_cycle", "The newest point the target applied", MetricType::Gauge);
  FamilyBuilder lag("amirror_mirror_lag_seconds",
                    "Seconds since the freeze of the point the target applied (absent before its first)",
                    MetricType::Gauge);
  FamilyBuilder lag_alert("amirror_mirror_lag_alert", "1 when the lag exceeds [node] lag_alert, else 0",
                          MetricType::Gauge);
  FamilyBuilder pending("amirror_mirror_pending_bytes", "Bytes the target still lacks of the current point",
                        MetricType::Gauge);
  FamilyBuilder sent("amirror_mirror_sent_bytes_total",
                     "Bytes ever sent to the target for the volume (payload and framing)", MetricType::Counter);
  for (const json& volume : status.value("volumes", json::array())) {
    const std::string name = volume.value("name", "");
    const std::string volume_state = volume.value("state", "ok");
    for (const char* known : {"ok", "importing", "failed"}) {
      state.add({{"volume", name}, {"state", known}}, volume_state == known ? 1 : 0);
    }
    if (volume_state != "ok") continue;
    cycle.add({{"volume", name}}, number_or(volume["cycle"], 0));
    size.add({{"volume", name}}, number_or(volume["size_bytes"], 0));
    double data_bytes = 0;
    for (const json& layer : volume.value("layers", json::array())) data_bytes += number_or(layer["data_bytes"], 0);
    layers.add({{"volume", name}}, static_cast<double>(volume.value("layers", json::array()).size()));
    layer_bytes.add({{"volume", name}}, data_bytes);
    for (const json& mirror : volume.value("mirrors", json::array())) {
      std::vector<ClientMetric::Label> labels = {{"volume", name}, {"target", mirror.value("target", "")}};
      const std::string current = mirror.value("state", "");
      for (const char* known : kMirrorStates) {
        auto with_state = labels;
        with_state.push_back({"state", known});
        mirror_state.add(std::move(with_state), current == known ? 1 : 0);
      }
      applied.add(labels, number_or(mirror["applied_cycle"], 0));
      if (mirror["lag_seconds"].is_number()) lag.add(labels, mirror["lag_seconds"].get<double>());
      lag_alert.add(labels, mirror.value("lag_alert", false) ? 1 : 0);
      pending.add(labels, number_or(mirror["bytes_pending"], 0));
      sent.add(labels, number_or(mirror["bytes_sent"], 0));
    }
  }
  for (FamilyBuilder* builder :
       {&cycle, &size, &layers, &layer_bytes, &state, &mirror_state, &applied, &lag, &lag_alert, &pending, &sent}) {
    builder->move_into(out);
  }
}

void collect_replicas(const json& status, std::vector<MetricFamily>& out) {
  FamilyBuilder applied("amirror_replica_applied_cycle", "The newest point applied to the replica",
                        MetricType::Gauge);
  FamilyBuilder points("amirror_replica_points", "Points the replica keeps (readable as SOURCE/VOLUME@CYCLE)",
                       MetricType::Gauge);
  FamilyBuilder failed("amirror_replica_failed", "1 when the replica failed to open (status says why)",
                       MetricType::Gauge);
  for (const json& replica : status.value("replicas", json::array())) {
    std::vector<ClientMetric::Label> labels = {{"source", replica.value("source", "")},
                                               {"volume", replica.value("volume", "")}};
    bool is_failed = replica.value("state", "") == "failed";
    failed.add(labels, is_failed ? 1 : 0);
    if (is_failed) continue;
    applied.add(labels, number_or(replica["applied_cycle"], 0));
    points.add(labels, replica["points"].is_array() ? static_cast<double>(replica["points"].size()) : 0);
  }
  for (FamilyBuilder* builder : {&applied, &points, &failed}) builder->move_into(out);
}

// process_* as the Prometheus client libraries name them, from /proc/self.
void collect_process(std::vector<MetricFamily>& out) {
  std::ifstream stat_file("/proc/self/stat");
  std::string stat((std::istreambuf_iterator<char>(stat_file)), std::istreambuf_iterator<char>());
  size_t after_name = stat.rfind(')');  // the command name may hold spaces
  if (after_name == std::string::npos) return;
  std::istringstream fields(stat.substr(after_name + 2));
  std::vector<std::string> values;  // values[0] is field 3 (state)
  for (std::string value; fields >> value;) values.push_back(value);
  if (values.size() < 22) return;
  const double ticks = static_cast<double>(::sysconf(_SC_CLK_TCK));
  const double page_bytes = static_cast<double>(::sysconf(_SC_PAGESIZE));
  auto field = [&](int number) { return std::stod(values[static_cast<size_t>(number - 3)]); };
  double boot_time_s = 0;
  std::ifstream proc_stat("/proc/stat");
  for (std::string line; std::getline(proc_stat, line);) {
    if (line.rfind("btime ", 0) == 0) boot_time_s = std::stod(line.substr(6));
  }
  const auto open_fds = static_cast<double>(open_file_count());
  rlimit files{};
  ::getrlimit(RLIMIT_NOFILE, &files);
  auto single = [&](const char* name, const char* help, MetricType type, double value) {
    FamilyBuilder builder(name, help, type);
    builder.add({}, value);
    builder.move_into(out);
  };
  single("process_cpu_seconds_total", "User and system CPU time spent", MetricType::Counter,
         (field(14) + field(15)) / ticks);
  single("process_resident_memory_bytes", "Resident memory size", MetricType::Gauge, field(24) * page_bytes);
  single("process_virtual_memory_bytes", "Virtual memory size", MetricType::Gauge, field(23));
  single("process_start_time_seconds", "Start time of the process since the Unix epoch", MetricType::Gauge,
         boot_time_s + field(22) / ticks);
  single("process_threads", "Threads of the process", MetricType::Gauge, field(20));
  single("process_open_fds", "Open file descriptors", MetricType::Gauge, open_fds);
  single("process_max_fds", "Limit on open file descriptors", MetricType::Gauge, static_cast<double>(files.rlim_cur));
}

// Everything read at scrape time: the status document, the NBD latency histograms and
// the process.
class ScrapeCollector final : public prometheus::Collectable {
 public:
  ScrapeCollector(std::function<std::string()> status_json, std::shared_ptr<NbdObserver> nbd)
      : status_json_(std::move(status_json)), nbd_(std::move(nbd)) {}

  std::vector<MetricFamily> Collect() const override {
    std::vector<MetricFamily> out;
    json status = json::parse(status_json_(), nullptr, false);
    if (status.is_object() && status.value("ok", false)) {
      FamilyBuilder info("amirror_node_info", "Always 1; the node's name as a label", MetricType::Gauge);
      info.add({{"node", status.value("node", "")}}, 1);
      info.move_into(out);
      if (status["lag_alert_seconds"].is_number()) {
        FamilyBuilder threshold("amirror_node_lag_alert_seconds", "[node] lag_alert: the lag a mirror is flagged at",
                                MetricType::Gauge);
        threshold.add({}, status["lag_alert_seconds"].get<double>());
        threshold.move_into(out);
      }
      collect_volumes(status, out);
      collect_replicas(status, out);
    } else {
      log::warn("metrics", "status unavailable for a scrape");
    }
    out.push_back(nbd_->latency_family());
    collect_process(out);
    return out;
  }

 private:
  const std::function<std::string()> status_json_;
  const std::shared_ptr<NbdObserver> nbd_;
};

}  // namespace

std::string_view transfer_error_kind(ErrorCode code) {
  switch (code) {
    case ErrorCode::kOk: return "ok";
    case ErrorCode::kInvalidArgument: return "invalid_argument";
    case ErrorCode::kNotFound: return "not_found";
    case ErrorCode::kAlreadyExists: return "already_exists";
    case ErrorCode::kNoSpace: return "no_space";
    case ErrorCode::kIo: return "io";
    case ErrorCode::kCorruption: return "corruption";
    case ErrorCode::kBusy: return "busy";
    case ErrorCode::kOutOfRange: return "out_of_range";
    case ErrorCode::kUnsupported: return "unsupported";
    case ErrorCode::kTimeout: return "timeout";
    case ErrorCode::kCancelled: return "cancelled";
    case ErrorCode::kReadOnly: return "read_only";
  }
  return "other";
}

struct NodeMetrics::Impl {
  explicit Impl(std::function<std::string()> status_json)
      : registry(std::make_shared<prometheus::Registry>()),
        nbd(std::make_shared<NbdObserver>(*registry)),
        collector(std::make_shared<ScrapeCollector>(std::move(status_json), nbd)),
        freeze_stall(prometheus::BuildHistogram()
                         .Name("amirror_volume_freeze_stall_seconds")
                         .Help("How long a freeze held the volume's writes")
                         .Register(*registry)),
        cycle_duration(prometheus::BuildHistogram()
                           .Name("amirror_mirror_cycle_duration_seconds")
                           .Help("From the start of a transfer to the target having applied its point")
                           .Register(*registry)),
        errors(prometheus::BuildCounter()
                   .Name("amirror_mirror_errors_total")
                   .Help("Failed transfers (kind = error code) and failed freezes, merges, state saves")
                   .Register(*registry)),
        apply_duration(prometheus::BuildHistogram()
                           .Name("amirror_replica_apply_duration_seconds")
                           .Help("From a delta's end to it being durable and applied to the replica")
                           .Register(*registry)) {}

  std::shared_ptr<prometheus::Registry> registry;
  std::shared_ptr<NbdObserver> nbd;
  std::shared_ptr<ScrapeCollector> collector;
  prometheus::Family<prometheus::Histogram>& freeze_stall;
  prometheus::Family<prometheus::Histogram>& cycle_duration;
  prometheus::Family<prometheus::Counter>& errors;
  prometheus::Family<prometheus::Histogram>& apply_duration;
  // Last: destroyed first, so no scrape runs while the rest goes away.
  std::unique_ptr<prometheus::Exposer> exposer;
};

NodeMetrics::NodeMetrics(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
NodeMetrics::~NodeMetrics() { impl_->exposer.reset(); }

Result<std::unique_ptr<NodeMetrics>> NodeMetrics::start(Options options) {
  auto impl = std::make_unique<Impl>(std::move(options.status_json));
  try {
    // One thread: scrapes come seconds apart, and each reads the whole status anyway.
    impl->exposer = std::make_unique<prometheus::Exposer>(options.listen_address, 1);
  } catch (const std::exception& error) {
    return invalid_argument("metrics_listen " + options.listen_address + ": cannot listen: " + error.what());
  }
  impl->exposer->RegisterCollectable(impl->registry);
  impl->exposer->RegisterCollectable(impl->collector);
  return std::unique_ptr<NodeMetrics>(new NodeMetrics(std::move(impl)));
}

std::unique_ptr<NodeMetrics> NodeMetrics::without_endpoint(std::function<std::string()> status_json) {
  return std::unique_ptr<NodeMetrics>(new NodeMetrics(std::make_unique<Impl>(std::move(status_json))));
}

void NodeMetrics::stop_endpoint() { impl_->exposer.reset(); }

uint16_t NodeMetrics::port() const {
  if (impl_->exposer == nullptr) return 0;
  std::vector<int> ports = impl_->exposer->GetListeningPorts();
  return ports.empty() ? 0 : static_cast<uint16_t>(ports.front());
}

std::string NodeMetrics::text() const {
  std::vector<MetricFamily> families = impl_->registry->Collect();
  std::vector<MetricFamily> scraped = impl_->collector->Collect();
  families.insert(families.end(), std::make_move_iterator(scraped.begin()), std::make_move_iterator(scraped.end()));
  return prometheus::TextSerializer().Serialize(families);
}

void NodeMetrics::observe_freeze_stall(const std::string& volume, double seconds) {
  impl_->freeze_stall.Add({{"volume", volume}}, kFastBuckets).Observe(seconds);
}

void NodeMetrics::observe_cycle(const std::string& volume, const std::string& target, double seconds) {
  impl_->cycle_duration.Add({{"volume", volume}, {"target", target}}, kCycleBuckets).Observe(seconds);
}

void NodeMetrics::count_mirror_error(const std::string& volume, const std::string& target, std::string_view kind) {
  impl_->errors.Add({{"volume", volume}, {"target", target}, {"kind", std::string(kind)}}).Increment();
}

void NodeMetrics::observe_apply(const std::string& source, const std::string& volume, double seconds) {
  impl_->apply_duration.Add({{"source", source}, {"volume", volume}}, kCycleBuckets).Observe(seconds);
}

std::shared_ptr<nbd::ServerObserver> NodeMetrics::nbd_observer() { return impl_->nbd; }

}  // namespace amirror::node
