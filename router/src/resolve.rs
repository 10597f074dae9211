//! Name resolution for upstream connections, checked: a host name the allow-list accepts
//! may still resolve to a link-local or metadata address (`metadata.nip.io`, a DNS entry
//! changed after the check); such addresses are dropped before connecting, and a name
//! that resolves to nothing else fails to connect.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use carbonflow_schemas::upstream::AllowList;
use hyper_util::client::legacy::connect::dns::{GaiResolver, Name};

/// The system resolver, with the allow-list's address rules applied to its answers.
#[derive(Clone)]
pub(crate) struct CheckedResolver {
    inner: GaiResolver,
    allow: Arc<AllowList>,
}

impl CheckedResolver {
    pub(crate) fn new(allow: Arc<AllowList>) -> Self {
        Self {
            inner: GaiResolver::new(),
            allow,
        }
    }
}

type Resolving =
    Pin<Box<dyn Future<Output = Result<std::vec::IntoIter<SocketAddr>, std::io::Error>> + Send>>;

impl tower::Service<Name> for CheckedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = Resolving;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let resolving = self.inner.call(name.clone());
        let allow = self.allow.clone();
        Box::pin(async move {
            let allowed: Vec<SocketAddr> = resolving
                .await?
                .filter(|a| allow.check_resolved(a.ip()).is_ok())
                .collect();
            if allowed.is_empty() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    format!(
                        "{name} resolves only to link-local or metadata addresses (always refused)"
                    ),
                ));
            }
            Ok(allowed.into_iter())
        })
    }
}
