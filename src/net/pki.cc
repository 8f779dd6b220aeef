// SPDX-License-Identifier: Apache-2.0
#include "net/pki.h"

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstdio>
#include <memory>

namespace amirror::net {
namespace {

constexpr long kValiditySeconds = 30L * 24 * 3600;

struct Deleter {
  void operator()(EVP_PKEY* key) const { EVP_PKEY_free(key); }
  void operator()(X509* certificate) const { X509_free(certificate); }
};
using KeyPtr = std::unique_ptr<EVP_PKEY, Deleter>;
using CertificatePtr = std::unique_ptr<X509, Deleter>;

Status openssl_failure(const std::string& what) {
  char text[256];
  ERR_error_string_n(ERR_get_error(), text, sizeof text);
  return Status(ErrorCode::kIo, what + ": " + text);
}

Status add_extension(X509* certificate, X509* issuer, int nid, const std::string& value) {
  X509V3_CTX context;
  X509V3_set_ctx_nodb(&context);
  X509V3_set_ctx(&context, issuer, certificate, nullptr, nullptr, 0);
  X509_EXTENSION* extension = X509V3_EXT_conf_nid(nullptr, &context, nid, value.c_str());
  if (extension == nullptr) return openssl_failure("certificate extension " + value);
  X509_add_ext(certificate, extension, -1);
  X509_EXTENSION_free(extension);
  return Status();
}

// A certificate for `key` named CN=common_name, signed by issuer_key (self-signed
// when issuer is null).
Result<CertificatePtr> make_certificate(EVP_PKEY* key, const std::string& common_name, X509* issuer,
                                        EVP_PKEY* issuer_key, bool is_ca) {
  CertificatePtr certificate(X509_new());
  X509* raw = certificate.get();
  X509_set_version(raw, 2);  // v3, for extensions
  uint64_t serial = 0;
  RAND_bytes(reinterpret_cast<unsigned char*>(&serial), sizeof serial);
  ASN1_INTEGER_set_uint64(X509_get_serialNumber(raw), serial >> 1);
  X509_gmtime_adj(X509_getm_notBefore(raw), -3600);  // tolerate a little clock skew
  X509_gmtime_adj(X509_getm_notAfter(raw), kValiditySeconds);
  X509_set_pubkey(raw, key);
  X509_NAME* name = X509_get_subject_name(raw);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, reinterpret_cast<const unsigned char*>(common_name.c_str()),
                             -1, -1, 0);
  X509_set_issuer_name(raw, issuer != nullptr ? X509_get_subject_name(issuer) : name);
  X509* signer = issuer != nullptr ? issuer : raw;
  if (is_ca) {
    AMIRROR_RETURN_IF_ERROR(add_extension(raw, signer, NID_basic_constraints, "critical,CA:TRUE"));
    AMIRROR_RETURN_IF_ERROR(add_extension(raw, signer, NID_key_usage, "critical,keyCertSign,cRLSign"));
    AMIRROR_RETURN_IF_ERROR(add_extension(raw, signer, NID_subject_key_identifier, "hash"));
  } else {
    AMIRROR_RETURN_IF_ERROR(add_extension(raw, signer, NID_basic_constraints, "critical,CA:FALSE"));
    AMIRROR_RETURN_IF_ERROR(add_extension(raw, signer, NID_key_usage, "critical,digitalSignature"));
    AMIRROR_RETURN_IF_ERROR(add_extension(raw, signer, NID_ext_key_usage, "serverAuth,clientAuth"));
    AMIRROR_RETURN_IF_ERROR(add_extension(raw, signer, NID_subject_alt_name,
                                          "DNS:" + common_name + ",DNS:localhost,IP:127.0.0.1"));
  }
  if (X509_sign(raw, issuer_key, EVP_sha256()) == 0) return openssl_failure("signing " + common_name);
  return certificate;
}

Status write_pem(const std::string& path, X509* certificate, EVP_PKEY* key) {
  // Keys are created 0600 from the start, never readable by others even briefly.
  mode_t old_mask = ::umask(key != nullptr ? 077 : 022);
  FILE* file = std::fopen(path.c_str(), "w");
  ::umask(old_mask);
  if (file == nullptr) return Status::from_errno(errno, "create " + path);
  int ok = key != nullptr ? PEM_write_PrivateKey(file, key, nullptr, nullptr, 0, nullptr, nullptr)
                          : PEM_write_X509(file, certificate);
  if (std::fclose(file) != 0 || ok != 1) return Status(ErrorCode::kIo, "cannot write " + path);
  return Status();
}

}  // namespace

Status make_demo_pki(const std::string& dir, const std::vector<std::string>& node_names) {
  KeyPtr ca_key(EVP_EC_gen("P-256"));
  if (!ca_key) return openssl_failure("generating the CA key");
  AMIRROR_ASSIGN_OR_RETURN(CertificatePtr ca, make_certificate(ca_key.get(), "amirror demo CA", nullptr,
                                                               ca_key.get(), true));
  AMIRROR_RETURN_IF_ERROR(write_pem(dir + "/ca.crt", ca.get(), nullptr));
  for (const std::string& node_name : node_names) {
    KeyPtr key(EVP_EC_gen("P-256"));
    if (!key) return openssl_failure("generating the key of " + node_name);
    AMIRROR_ASSIGN_OR_RETURN(CertificatePtr certificate,
                             make_certificate(key.get(), node_name, ca.get(), ca_key.get(), false));
    TlsFiles files = demo_tls_files(dir, node_name);
    AMIRROR_RETURN_IF_ERROR(write_pem(files.key_path, nullptr, key.get()));
    AMIRROR_RETURN_IF_ERROR(write_pem(files.certificate_path, certificate.get(), nullptr));
  }
  return Status();
}

TlsFiles demo_tls_files(const std::string& dir, const std::string& node_name) {
  return TlsFiles{dir + "/" + node_name + ".crt", dir + "/" + node_name + ".key", dir + "/ca.crt"};
}

}  // namespace amirror::net
