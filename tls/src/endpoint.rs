//! Facts read from certificates: `tls-server-end-point` channel binding data (RFC 5929
//! section 4.1, as PostgreSQL's `be_tls_get_certificate_hash`) and a client certificate's
//! Common Name (PostgreSQL's `clientcert=verify-full`, docs 21.12 "Certificate
//! Authentication").

use sha2::{Digest, Sha256, Sha384, Sha512};
use x509_cert::der::{Decode, Tag, Tagged};

/// The hash of `cert` (DER) that SCRAM-SHA-256-PLUS binds to: the certificate's signature
/// hash algorithm, SHA-256 where that is MD5 or SHA-1. `None` for a certificate that does
/// not parse or whose algorithm names no single hash (Ed25519, RSASSA-PSS), as PostgreSQL.
pub fn server_end_point(cert: &[u8]) -> Option<Vec<u8>> {
    let c = x509_cert::Certificate::from_der(cert).ok()?;
    let oid = c.signature_algorithm.oid.to_string();
    let h = match oid.as_str() {
        // md5WithRSA, sha1WithRSA, ecdsa-with-SHA1, sha256WithRSA, ecdsa-with-SHA256
        "1.2.840.113549.1.1.4"
        | "1.2.840.113549.1.1.5"
        | "1.2.840.10045.4.1"
        | "1.2.840.113549.1.1.11"
        | "1.2.840.10045.4.3.2" => Sha256::digest(cert).to_vec(),
        "1.2.840.113549.1.1.12" | "1.2.840.10045.4.3.3" => Sha384::digest(cert).to_vec(),
        "1.2.840.113549.1.1.13" | "1.2.840.10045.4.3.4" => Sha512::digest(cert).to_vec(),
        _ => return None,
    };
    Some(h)
}

/// The subject's Common Name (OID 2.5.4.3) of `cert` (DER): the last one when there are
/// several, as OpenSSL's lookup that PostgreSQL uses. `None` when absent or unreadable.
pub fn common_name(cert: &[u8]) -> Option<String> {
    let c = x509_cert::Certificate::from_der(cert).ok()?;
    let mut cn = None;
    for rdn in c.tbs_certificate.subject.0.iter() {
        for atv in rdn.0.iter() {
            if atv.oid.to_string() != "2.5.4.3" {
                continue;
            }
            let v = &atv.value;
            let text = match v.tag() {
                Tag::Utf8String | Tag::PrintableString | Tag::Ia5String | Tag::TeletexString => {
                    std::str::from_utf8(v.value()).ok().map(str::to_string)
                }
                _ => None,
            };
            if text.is_some() {
                cn = text;
            }
        }
    }
    cn
}
