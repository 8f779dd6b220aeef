// SPDX-License-Identifier: Apache-2.0
// The amirror command line. Only this file includes CLI11 (a large header-only library).
#include <CLI/CLI.hpp>

#include <cstdio>

#include "base/units.h"
#include "cli/commands.h"

namespace {

// CLI11 validator for sizes such as 64K or 10G, reusing the product's parser so the
// error text matches everywhere.
uint64_t parse_size_or_throw(const std::string& text) {
  auto size = amirror::parse_size_bytes(text);
  if (!size.ok()) throw CLI::ValidationError(size.status().message());
  return size.value();
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"amirror: asynchronous block-volume mirroring by freeze-and-copy cycles"};
  app.require_subcommand(1);

  amirror::cli::DemoArgs demo_args;
  CLI::App* demo = app.add_subcommand("demo", "Show the volume store at work on a temporary directory");
  demo->add_option("--dir", demo_args.work_dir, "Work in this directory instead of a temporary one");
  demo->add_flag("--keep", demo_args.keep, "Keep the temporary directory afterwards");

  amirror::cli::ServeArgs serve_args;
  std::string create_size_text, create_chunk_text, freeze_interval_text;
  CLI::App* serve = app.add_subcommand("serve", "Serve the volumes of a data directory over NBD");
  serve->add_option("--data-dir", serve_args.data_dir, "Data directory (created if absent)")->required();
  serve->add_option("--socket", serve_args.socket_path, "Unix socket to listen on (mode 0600)");
  serve->add_option("--tcp", serve_args.tcp_address, "Also listen on HOST:PORT (e.g. 127.0.0.1:10809)");
  serve->add_option("--create", serve_args.create_volume, "Create this volume first if it does not exist");
  serve->add_option("--size", create_size_text, "Size of the volume --create makes, e.g. 10G");
  serve->add_option("--chunk-size", create_chunk_text, "Chunk size of the volume --create makes (4K..4M)");
  serve->add_option("--freeze-interval", freeze_interval_text,
                    "Testing aid: freeze every volume and merge its oldest layer this often (e.g. 1s)");
  serve->add_flag("--quiet", serve_args.quiet, "Do not log each NBD connection");

  try {
    app.parse(argc, argv);
    if (!create_size_text.empty()) serve_args.create_size_bytes = parse_size_or_throw(create_size_text);
    if (!create_chunk_text.empty()) {
      serve_args.create_chunk_size_bytes = parse_size_or_throw(create_chunk_text);
    }
    if (!freeze_interval_text.empty()) {
      auto interval = amirror::parse_duration_ms(freeze_interval_text);
      if (!interval.ok()) throw CLI::ValidationError(interval.status().message());
      serve_args.freeze_interval_ms = interval.value();
    }
  } catch (const CLI::ParseError& error) {
    return app.exit(error);
  }

  if (demo->parsed()) return amirror::cli::run_demo(demo_args);
  if (serve->parsed()) return amirror::cli::run_serve(serve_args);
  return 2;
}
