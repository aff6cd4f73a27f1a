//! Whether the client of an upload is still there to hear its answer.
//!
//! The upload runs in a task of its own, so that a client going away cannot stop its cleanup. The
//! request's handler holds a [`Present`]; hyper drops the handler when the client leaves before
//! the answer: the connection closes, or (HTTP/1.1) the client shuts down its sending side, or
//! (HTTP/2) it resets the stream, even with NO_ERROR, which hyper reports to the body as a clean
//! end. The upload checks [`Client::is_gone`] before it commits, and after.

use tokio::sync::watch;

/// Held by the request's handler for as long as the client waits for the answer.
pub struct Present(#[allow(dead_code)] watch::Sender<()>);

/// The upload's view of its client.
#[derive(Clone)]
pub struct Client(watch::Receiver<()>);

/// A presence and the view of it.
pub fn pair() -> (Present, Client) {
    let (tx, rx) = watch::channel(());
    (Present(tx), Client(rx))
}

impl Client {
    /// The handler was dropped: nobody will hear the answer.
    pub fn is_gone(&self) -> bool {
        self.0.has_changed().is_err()
    }

    /// Resolves when the client leaves.
    pub async fn gone(&mut self) {
        while self.0.changed().await.is_ok() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_client_is_gone_once_its_handler_drops_the_presence() {
        let (present, mut client) = pair();
        assert!(!client.is_gone());
        drop(present);
        assert!(client.is_gone());
        tokio::time::timeout(std::time::Duration::from_secs(1), client.gone()).await.unwrap();
    }
}
