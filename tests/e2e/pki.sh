# SPDX-License-Identifier: Apache-2.0
# make_pki DIR NAME...: a CA and one key + certificate per NAME, made with exactly the
# openssl commands docs/security.md gives operators (keep the two in step):
#   DIR/ca.crt, DIR/ca.key, DIR/NAME.crt, DIR/NAME.key
# Each certificate names NAME (CN and subjectAltName DNS), plus localhost and 127.0.0.1
# so NBD clients on this machine can verify a node they reach by address.
make_pki() {
  local dir=$1 name
  shift
  mkdir -p "$dir"
  openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$dir/ca.key" -out "$dir/ca.crt" -days 3650 -subj "/CN=amirror test CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    2>/dev/null || fail "openssl could not make the CA in $dir"
  for name in "$@"; do issue_cert "$dir" "$name"; done
}

# issue_cert DIR NAME: DIR/NAME.key and DIR/NAME.crt, signed by the CA in DIR.
issue_cert() {
  local dir=$1 name=$2
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$dir/$name.key" -out "$dir/$name.csr" -subj "/CN=$name" 2>/dev/null ||
    fail "openssl could not make the key of $name"
  printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" \
    "extendedKeyUsage=serverAuth,clientAuth" "subjectAltName=DNS:$name,DNS:localhost,IP:127.0.0.1" \
    >"$dir/$name.ext"
  openssl x509 -req -in "$dir/$name.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial \
    -days 825 -sha256 -extfile "$dir/$name.ext" -out "$dir/$name.crt" 2>/dev/null ||
    fail "openssl could not sign the certificate of $name"
  chmod 600 "$dir/$name.key"
}

# client_dir DIR CA CERT KEY: the layout qemu's tls-creds-x509 (endpoint=client) and
# libnbd's tls-certificates both read.
client_dir() {
  mkdir -p "$1"
  cp "$2" "$1/ca-cert.pem"
  cp "$3" "$1/client-cert.pem"
  cp "$4" "$1/client-key.pem"
}
