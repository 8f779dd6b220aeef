// SPDX-License-Identifier: Apache-2.0
// A throw-away certificate authority for `amirror demo` and tests: an EC P-256 CA and
// one key and certificate per node, as docs/security.md's openssl commands make them.
// Production nodes use certificates from the operator's own CA; nothing here is needed
// to run a node.
#pragma once

#include <string>
#include <vector>

#include "base/status.h"
#include "net/tls.h"

namespace amirror::net {

// Writes DIR/ca.crt and, per name, DIR/NAME.crt and DIR/NAME.key (mode 0600). Each node
// certificate has CN=NAME and subjectAltName DNS:NAME, DNS:localhost, IP:127.0.0.1 (so
// NBD clients on this machine can also verify it), is valid for 30 days, and is good
// for both TLS client and server use. The CA key is not kept.
Status make_demo_pki(const std::string& dir, const std::vector<std::string>& node_names);

// The files make_demo_pki wrote for `node_name`.
TlsFiles demo_tls_files(const std::string& dir, const std::string& node_name);

}  // namespace amirror::net
