// SPDX-License-Identifier: Apache-2.0
// The amirror command line. Only this file includes CLI11 (a large header-only library).
#include <CLI/CLI.hpp>
#include <fmt/core.h>

#include <cstdio>
#include <cstdlib>

#include "base/units.h"
#include "cli/commands.h"
#include "cli/version.h"

namespace {

// CLI11 validator for sizes such as 64K or 10G, reusing the product's parser so the
// error text matches everywhere.
uint64_t parse_size_or_throw(const std::string& text, const char* option = "size") {
  auto size = amirror::parse_size_bytes(text);
  if (!size.ok()) throw CLI::ValidationError(option, size.status().message());
  return size.value();
}

// Durations given on the command line must be at least 100 ms (0 would mean "default"
// inside, so it is refused here rather than silently ignored).
uint64_t parse_duration_or_throw(const std::string& text, const char* option) {
  auto duration = amirror::parse_duration_ms(text);
  if (!duration.ok()) throw CLI::ValidationError(option, duration.status().message());
  if (duration.value() < 100) throw CLI::ValidationError(option, "must be at least 100ms, got '" + text + "'");
  return duration.value();
}

}  // namespace

int main(int argc, char** argv) {
  // Named, so help and errors say "amirror" whatever path it was run by.
  CLI::App app{"amirror: asynchronous block-volume mirroring by freeze-and-copy cycles", "amirror"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("amirror ") + amirror::cli::kVersion, "Print the version and exit");

  amirror::cli::DemoArgs demo_args;
  CLI::App* demo = app.add_subcommand("demo", "Run two nodes on a temporary directory, write through NBD while mirroring, verify the replica");
  demo->add_option("--dir", demo_args.work_dir, "Work in this directory instead of a temporary one");
  demo->add_flag("--keep", demo_args.keep, "Keep the temporary directory afterwards");
  demo->add_flag("--store", demo_args.store_only, "Only walk through the volume store (no nodes, no network)");

  amirror::cli::ServeArgs serve_args;
  std::string create_size_text, create_chunk_text, freeze_interval_text;
  CLI::App* serve = app.add_subcommand("serve", "Serve the volumes of a data directory over NBD");
  serve->add_option("--data-dir", serve_args.data_dir, "Data directory (created if absent)")->required();
  serve->add_option("--socket", serve_args.socket_path, "Unix socket to listen on (mode 0600)");
  serve->add_option("--tcp", serve_args.tcp_address,
                    "Also listen on TCP: PORT (loopback only) or HOST:PORT (e.g. 0.0.0.0:10809)");
  serve->add_option("--create", serve_args.create_volume, "Create this volume first if it does not exist");
  serve->add_option("--size", create_size_text, "Size of the volume --create makes, e.g. 10G");
  serve->add_option("--chunk-size", create_chunk_text, "Chunk size of the volume --create makes (4K..4M)");
  serve->add_option("--freeze-interval", freeze_interval_text,
                    "Testing aid: freeze every volume and merge its oldest layer this often (e.g. 1s); "
                    "--log-level debug logs each cycle's write stall, freeze and merge times");
  serve->add_flag("--quiet", serve_args.quiet, "Do not log each NBD connection");
  serve->add_option("--tls", serve_args.tls_mode,
                    "NBD STARTTLS: off, allow, or require (on TCP; the Unix socket only allows it)")
      ->check(CLI::IsMember({"off", "allow", "require"}));
  CLI::Option* serve_tls_certificate =
      serve->add_option("--tls-certificate", serve_args.tls_certificate_path, "PEM certificate of this server");
  CLI::Option* serve_tls_key = serve->add_option("--tls-key", serve_args.tls_key_path, "PEM private key of this server");
  CLI::Option* serve_tls_ca =
      serve->add_option("--tls-ca", serve_args.tls_ca_path, "PEM CA that signs the clients' certificates");
  const auto log_levels = CLI::IsMember({"trace", "debug", "info", "warn", "error"});
  serve->add_option("--log-level", serve_args.log_level, "Lowest level logged: trace, debug, info, warn, error")
      ->check(log_levels);

  std::string config_path;
  CLI::App* node = app.add_subcommand("node", "Run a node in the foreground (stop with SIGTERM)");
  node->add_option("--config", config_path, "The node's TOML config file")->required();
  std::string node_log_level;
  node->add_option("--log-level", node_log_level,
                   "Lowest level logged: trace, debug, info, warn, error (default: the config's log_level)")
      ->check(log_levels);

  // Client commands reach a running node through its control socket, named anywhere on
  // the line: `amirror --node S status` and `amirror status --node S` both work.
  amirror::cli::ClientArgs client;
  std::string node_before_verb;
  app.add_option("--node", node_before_verb, "The node's control socket, for the commands that talk to a node");
  std::vector<CLI::App*> client_commands;
  auto add_client_options = [&](CLI::App* command) {
    command->add_option("--node", client.node_socket, "The node's control socket (or set AMIRROR_NODE)");
    client_commands.push_back(command);
  };
  std::string size_text, chunk_text, interval_text, timeout_text;
  amirror::cli::VolumeArgs volume_args;
  CLI::App* volume = app.add_subcommand("volume", "Create, import, adopt, list, resize, release and delete volumes");
  volume->require_subcommand(1);
  CLI::App* volume_create = volume->add_subcommand("create", "Create an empty (sparse) volume");
  volume_create->add_option("name", volume_args.name, "Volume name: letters, digits, '.', '_', '-'")->required();
  volume_create->add_option("--size", size_text, "Size, e.g. 10G (a multiple of 512 bytes)")->required();
  volume_create->add_option("--chunk-size", chunk_text, "Chunk size, a power of two from 4K to 4M (default 64K)");
  volume_create->add_option("--group", volume_args.group, "Consistency group: its volumes freeze together");
  volume_create->add_option("--storage", volume_args.storage, "Storage pool ([[storage]] name; default: the data_dir)");
  add_client_options(volume_create);
  CLI::App* volume_import = volume->add_subcommand("import", "Create a volume holding a copy of a file");
  volume_import->add_option("name", volume_args.name, "Volume name")->required();
  volume_import->add_option("--from", volume_args.from, "File, block device or FIFO to copy in")->required();
  volume_import->add_option("--size", size_text,
                            "Bytes a FIFO or pipe delivers (required for them); for a file, a larger volume size");
  volume_import->add_option("--chunk-size", chunk_text, "Chunk size, a power of two from 4K to 4M (default 64K)");
  volume_import->add_option("--group", volume_args.group, "Consistency group");
  volume_import->add_option("--storage", volume_args.storage, "Storage pool ([[storage]] name; default: the data_dir)");
  add_client_options(volume_import);
  CLI::App* volume_list = volume->add_subcommand("list", "List the node's volumes");
  volume_list->add_flag("--json", client.json, "Print JSON");
  add_client_options(volume_list);
  CLI::App* volume_resize = volume->add_subcommand("resize", "Grow a volume online; its replicas grow at the next cycle");
  volume_resize->add_option("name", volume_args.name, "Volume name")->required();
  volume_resize->add_option("--size", size_text, "New size, e.g. 20G (larger; a multiple of 512 bytes)")->required();
  add_client_options(volume_resize);
  CLI::App* volume_delete = volume->add_subcommand("delete", "Delete a volume and every file of it");
  volume_delete->add_option("name", volume_args.name, "Volume name")->required();
  volume_delete->add_flag("--force", volume_args.force,
                          "Even if mirrored (the mirror is broken first) or open by NBD clients (they are cut off)");
  add_client_options(volume_delete);
  CLI::App* volume_adopt = volume->add_subcommand(
      "adopt", "Make an existing file or block device a volume's base in place (no copy); it is locked until released");
  volume_adopt->add_option("name", volume_args.name, "Volume name")->required();
  volume_adopt->add_option("--path", volume_args.path, "Regular file or block device (unmounted; whole sectors)")
      ->required();
  volume_adopt->add_option("--storage", volume_args.storage, "Storage pool for the volume's layers (default: default)");
  volume_adopt->add_option("--group", volume_args.group, "Consistency group: its volumes freeze together");
  volume_adopt->add_option("--chunk-size", chunk_text, "Chunk size, a power of two from 4K to 4M (default 64K)");
  add_client_options(volume_adopt);
  CLI::App* volume_release = volume->add_subcommand(
      "release", "Merge every write into an adopted file or device, sync it, and forget the volume");
  volume_release->add_option("name", volume_args.name, "Volume name")->required();
  add_client_options(volume_release);
  std::string demote_name;
  CLI::App* volume_demote = volume->add_subcommand(
      "demote", "Stop taking writes here; the volume becomes the replica of the peer promoted from it (failback)");
  volume_demote->add_option("name", demote_name, "Volume name")->required();
  add_client_options(volume_demote);

  amirror::cli::MirrorArgs mirror_args;
  std::string targets_text;
  CLI::App* replica = app.add_subcommand("replica", "List and delete the replicas this node holds for other nodes");
  replica->require_subcommand(1);
  CLI::App* replica_list = replica->add_subcommand("list", "List replicas: source/volume, applied cycle, state, image file");
  replica_list->add_flag("--json", client.json, "Print JSON");
  add_client_options(replica_list);
  std::string replica_name;
  CLI::App* replica_points = replica->add_subcommand("points", "List the freeze points a replica keeps: cycle and freeze time");
  replica_points->add_option("replica", replica_name, "SOURCE/VOLUME, as `replica list` shows it")->required();
  replica_points->add_flag("--json", client.json, "Print JSON");
  add_client_options(replica_points);
  CLI::App* replica_delete = replica->add_subcommand("delete", "Delete a replica; the source's next cycle sends a full copy");
  replica_delete->add_option("replica", replica_name, "SOURCE/VOLUME, as `replica list` shows it")->required();
  add_client_options(replica_delete);
  amirror::cli::PromoteArgs promote_args;
  CLI::App* replica_promote = replica->add_subcommand(
      "promote", "Make a replica point a writable volume here, at once (no copy); the source may be dead");
  replica_promote->add_option("replica", promote_args.replica, "SOURCE/VOLUME, as `replica list` shows it");
  replica_promote->add_option("--source", promote_args.source, "With --group: the node the group's replicas come from");
  replica_promote->add_option("--group", promote_args.group,
                              "Every replica of this consistency group, at the newest point they all kept");
  replica_promote->add_option("--as", promote_args.as, "Name of the new volume (default: VOLUME)");
  replica_promote->add_option("--at", promote_args.at, "Kept point to promote (default: the newest; see `replica points`)")
      ->check(CLI::PositiveNumber);
  add_client_options(replica_promote);

  CLI::App* mirror = app.add_subcommand("mirror", "Start, break, sync and verify mirrors");
  mirror->require_subcommand(1);
  auto add_unit_options = [&](CLI::App* command) {
    command->add_option("volume", mirror_args.volume, "The volume (or use --group)");
    command->add_option("--group", mirror_args.group, "All volumes of this consistency group, frozen together");
    add_client_options(command);
  };
  CLI::App* mirror_start = mirror->add_subcommand("start", "Mirror a volume or group to peers by freeze-and-copy cycles");
  add_unit_options(mirror_start);
  mirror_start->add_option("--to", targets_text, "Target peers, comma-separated (names from the config)")->required();
  mirror_start->add_option("--interval", interval_text, "Time between cycles, e.g. 10s (default: the node's)");
  mirror_start->add_option("--keep", mirror_args.keep,
                           "Points each target keeps, 1-1024, each readable as SOURCE/VOLUME@CYCLE (default 1, or as before)")
      ->check(CLI::Range(1, 1024));
  mirror_start->add_option("--bandwidth", mirror_args.bandwidth,
                           "Cap on this mirror's sending, e.g. 50MB/s, 800Mbit/s, or off (default: none, or as before; "
                           "the peer's bandwidth_limit applies too). On a running mirror it changes at once");
  mirror_start->add_option("--compress", mirror_args.compress,
                           "zstd or off: compress data on the wire (default zstd, or as before)")
      ->check(CLI::IsMember({"zstd", "off"}));
  CLI::App* mirror_break = mirror->add_subcommand("break", "Stop mirroring; a later start resumes incrementally");
  add_unit_options(mirror_break);
  CLI::App* mirror_sync = mirror->add_subcommand("sync", "Freeze now and wait until every target applied that cycle");
  add_unit_options(mirror_sync);
  mirror_sync->add_option("--timeout", timeout_text, "Give up after this long, e.g. 60s (default 5m)");
  CLI::App* mirror_switchover = mirror->add_subcommand(
      "switchover", "Planned swap: last cycle to PEER, PEER becomes primary and mirrors back here; nothing is lost");
  add_unit_options(mirror_switchover);
  mirror_switchover->add_option("--to", mirror_args.to, "The target that becomes the primary")->required();
  mirror_switchover->add_option("--timeout", timeout_text, "Give up on the last cycle after this long (default 5m)");
  CLI::App* mirror_verify = mirror->add_subcommand(
      "verify", "Compare every chunk of one freeze point on the source and on each target (exit 0 only when equal)");
  add_unit_options(mirror_verify);
  mirror_verify->add_option("--to", mirror_args.to, "Only this target (default: every target of the mirror)");
  mirror_verify->add_flag("--repair", mirror_args.repair, "Resend the differing chunks, then compare them again");
  mirror_verify->add_option("--timeout", timeout_text,
                            "Wait this long for the targets to copy the point to compare, e.g. 60s (default 5m)");
  mirror_verify->add_flag("--json", client.json, "Print the machine-readable result");

  amirror::cli::StatusArgs status_args;
  std::string watch_interval_text;
  CLI::App* status = app.add_subcommand("status", "Show volumes, mirrors, lag and replicas");
  CLI::Option* status_json = status->add_flag("--json", client.json, "Print the machine-readable status");
  CLI::Option* status_watch = status->add_flag(
      "--watch", status_args.watch,
      "Redraw every --interval until Ctrl-C (not on a terminal: print frame after frame)");
  status_watch->excludes(status_json);
  status->add_option("--interval", watch_interval_text, "With --watch: time between frames, e.g. 5s or 500ms (default 2s)")
      ->needs(status_watch);
  add_client_options(status);

  // The one list of exit codes a user sees (amirror(8) is made from this help too).
  // Set after the subcommands: one created later inherits the footer into its own help.
  namespace cli = amirror::cli;
  app.footer(fmt::format(
      "Exit codes:\n"
      "  {}  success (mirror verify: every replica equal)\n"
      "  {}  the node refused the request or the operation failed (node: it could not start)\n"
      "  {}  bad usage: unknown option, bad value, missing --node (node: bad config); nothing was sent\n"
      "  {}  mirror verify: differences found (with --repair: some still differ)\n"
      "  {}  the node is unreachable: nothing answers on its control socket\n"
      "More: amirror(8), README.md and docs/ (installed in /usr/share/doc/amirror)",
      cli::kExitOk, cli::kExitFailed, cli::kExitUsage, cli::kExitDiffers, cli::kExitNodeUnreachable));

  try {
    app.parse(argc, argv);
    for (CLI::App* command : client_commands) {
      if (!command->parsed()) continue;
      // Given after the verb, before it, or in AMIRROR_NODE: the first of these wins.
      if (client.node_socket.empty()) client.node_socket = node_before_verb;
      const char* from_environment = std::getenv("AMIRROR_NODE");
      if (client.node_socket.empty() && from_environment != nullptr) client.node_socket = from_environment;
      if (client.node_socket.empty()) {
        throw CLI::RequiredError("--node SOCKET (the node's control socket; or set AMIRROR_NODE)");
      }
    }
    if (!size_text.empty()) volume_args.size_bytes = parse_size_or_throw(size_text, "--size");
    if (!chunk_text.empty()) volume_args.chunk_size_bytes = parse_size_or_throw(chunk_text, "--chunk-size");
    if (!interval_text.empty()) mirror_args.interval_ms = parse_duration_or_throw(interval_text, "--interval");
    if (!watch_interval_text.empty()) {
      status_args.watch_interval_ms = parse_duration_or_throw(watch_interval_text, "--interval");
    }
    if (!timeout_text.empty()) mirror_args.timeout_ms = parse_duration_or_throw(timeout_text, "--timeout");
    for (size_t start = 0; !targets_text.empty() && start <= targets_text.size();) {
      size_t comma = targets_text.find(',', start);
      if (comma == std::string::npos) comma = targets_text.size();
      std::string target = targets_text.substr(start, comma - start);
      if (target.empty()) throw CLI::ValidationError("--to", "empty peer name in '" + targets_text + "'");
      mirror_args.targets.push_back(target);
      start = comma + 1;
    }
    if (!create_size_text.empty()) serve_args.create_size_bytes = parse_size_or_throw(create_size_text);
    if (!create_chunk_text.empty()) {
      serve_args.create_chunk_size_bytes = parse_size_or_throw(create_chunk_text);
    }
    for (CLI::Option* tls_file : {serve_tls_certificate, serve_tls_key, serve_tls_ca}) {
      if (serve_args.tls_mode == "off" && tls_file->count() > 0) {
        throw CLI::ValidationError(tls_file->get_name(), "is only used with --tls allow or --tls require");
      }
      if (serve_args.tls_mode != "off" && tls_file->count() == 0) {
        throw CLI::ValidationError(tls_file->get_name(), "is required with --tls " + serve_args.tls_mode);
      }
    }
    if (!freeze_interval_text.empty()) {
      auto interval = amirror::parse_duration_ms(freeze_interval_text);
      if (!interval.ok()) throw CLI::ValidationError(interval.status().message());
      serve_args.freeze_interval_ms = interval.value();
    }
  } catch (const CLI::ParseError& error) {
    // --help prints and exits 0; every usage error exits 2, whatever CLI11's own code.
    return app.exit(error) == 0 ? amirror::cli::kExitOk : amirror::cli::kExitUsage;
  }

  if (demo->parsed()) return amirror::cli::run_demo(demo_args);
  if (serve->parsed()) return amirror::cli::run_serve(serve_args);
  if (node->parsed()) return amirror::cli::run_node(config_path, node_log_level);
  if (volume_create->parsed()) return amirror::cli::run_volume_create(client, volume_args);
  if (volume_import->parsed()) return amirror::cli::run_volume_import(client, volume_args);
  if (volume_list->parsed()) return amirror::cli::run_volume_list(client);
  if (volume_resize->parsed()) return amirror::cli::run_volume_resize(client, volume_args);
  if (volume_delete->parsed()) return amirror::cli::run_volume_delete(client, volume_args);
  if (volume_adopt->parsed()) return amirror::cli::run_volume_adopt(client, volume_args);
  if (volume_release->parsed()) return amirror::cli::run_volume_release(client, volume_args);
  if (replica_list->parsed()) return amirror::cli::run_replica_list(client);
  if (replica_points->parsed()) return amirror::cli::run_replica_points(client, replica_name);
  if (replica_delete->parsed()) return amirror::cli::run_replica_delete(client, replica_name);
  if (replica_promote->parsed()) return amirror::cli::run_replica_promote(client, promote_args);
  if (volume_demote->parsed()) return amirror::cli::run_volume_demote(client, demote_name);
  if (mirror_start->parsed()) return amirror::cli::run_mirror_start(client, mirror_args);
  if (mirror_break->parsed()) return amirror::cli::run_mirror_break(client, mirror_args);
  if (mirror_sync->parsed()) return amirror::cli::run_mirror_sync(client, mirror_args);
  if (mirror_verify->parsed()) return amirror::cli::run_mirror_verify(client, mirror_args);
  if (mirror_switchover->parsed()) return amirror::cli::run_mirror_switchover(client, mirror_args);
  if (status->parsed()) return amirror::cli::run_status(client, status_args);
  return 2;
}
