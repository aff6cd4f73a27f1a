//! rustls configurations: the upstream client (verified certificates against the public roots plus
//! any extra CA files) and the listeners (optional TLS, optional client certificates).

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
};

/// Builds the client configuration, or says which CA file could not be used.
pub fn client_config(ca_files: &[PathBuf]) -> Result<ClientConfig, String> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for path in ca_files {
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(path)
                .and_then(|iter| iter.collect())
                .map_err(|err| format!("cannot read CA file {}: {err}", path.display()))?;
        if certs.is_empty() {
            return Err(format!("CA file {} holds no certificate", path.display()));
        }
        for cert in certs {
            roots.add(cert).map_err(|err| format!("CA file {}: {err}", path.display()))?;
        }
    }
    ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
        .map_err(|err| err.to_string())
}

/// A listener's TLS configuration: its certificate chain and key, and, when `client_ca` is given,
/// client certificates required and verified against it (mTLS).
pub fn server_config(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<rustls::ServerConfig, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|iter| iter.collect())
        .map_err(|err| format!("cannot read certificate {}: {err}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|err| format!("cannot read key {}: {err}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|err| err.to_string())?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca)
                .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
                .map_err(|err| format!("cannot read client CA {}: {err}", ca.display()))?
            {
                roots.add(c).map_err(|err| format!("client CA {}: {err}", ca.display()))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|err| err.to_string())?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|err| format!("{}: {err}", cert.display()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Whether an error's chain says a TLS handshake failed on the certificate (not a network fault).
pub fn is_certificate_error(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(err);
    while let Some(e) = source {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return matches!(tls, rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented);
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if let Some(inner) = io.get_ref() {
                if is_certificate_error(inner) {
                    return true;
                }
            }
        }
        source = e.source();
    }
    false
}
