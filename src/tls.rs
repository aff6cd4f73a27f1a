//! rustls configuration for the upstream client: verified certificates against the public roots
//! plus any extra CA files from the config.

use std::{path::PathBuf, sync::Arc};

use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, pem::PemObject},
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
