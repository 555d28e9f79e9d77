//! Request batching: instance requests that arrive within the batch window go to the CA as
//! one batch call (up to the API's limit), and each caller gets its own result back.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::Agent;
use crate::api;
use crate::client::ClientError;

/// One instance request waiting for the batch it will go out in.
pub(super) struct BatchItem {
    pub(super) request: api::InstanceCertificateRequest,
    pub(super) reply: oneshot::Sender<Result<api::IssuedCertificate, CaRefusal>>,
}

/// Why the CA did not issue: its problem status when it answered, and a readable message.
#[derive(Debug, Clone)]
pub struct CaRefusal {
    /// The CA's status (400, 422, ...), or `None` when it could not be reached.
    pub status: Option<u16>,
    /// What happened.
    pub message: String,
}

impl std::fmt::Display for CaRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<&ClientError> for CaRefusal {
    fn from(e: &ClientError) -> Self {
        CaRefusal {
            status: match e {
                ClientError::Api(p) => Some(p.status),
                _ => None,
            },
            message: e.to_string(),
        }
    }
}

impl CaRefusal {
    pub(super) fn unreachable(message: impl Into<String>) -> Self {
        CaRefusal {
            status: None,
            message: message.into(),
        }
    }
}

impl Agent {
    async fn send_batch(self: Arc<Self>, items: Vec<BatchItem>) {
        let client = self.client();
        if items.len() == 1 {
            let mut items = items;
            let Some(item) = items.pop() else { return };
            let r = client
                .post::<_, api::IssuedCertificate>("/v1/instance-certificates", &item.request, None)
                .await
                .map_err(|e| CaRefusal::from(&e));
            let _ = item.reply.send(r);
            return;
        }
        let (requests, replies): (Vec<_>, Vec<_>) =
            items.into_iter().map(|i| (i.request, i.reply)).unzip();
        tracing::debug!(
            count = requests.len(),
            "sending a batch of instance requests"
        );
        let body = api::BatchRequest { requests };
        match client
            .post::<_, api::BatchResponse>("/v1/instance-certificates/batch", &body, None)
            .await
        {
            Ok(resp) if resp.results.len() == replies.len() => {
                for (r, reply) in resp.results.into_iter().zip(replies) {
                    let out = match (r.certificate, r.problem) {
                        (Some(c), _) => Ok(c),
                        (None, Some(p)) => Err(CaRefusal {
                            status: Some(p.status),
                            message: format!("{} {}: {}", p.status, p.title, p.detail),
                        }),
                        (None, None) => Err(CaRefusal::unreachable(format!(
                            "the CA answered {} without a certificate",
                            r.status
                        ))),
                    };
                    let _ = reply.send(out);
                }
            }
            Ok(_) => {
                for reply in replies {
                    let _ = reply.send(Err(CaRefusal::unreachable(
                        "the CA answered a batch with the wrong number of results",
                    )));
                }
            }
            Err(e) => {
                let refusal = CaRefusal::from(&e);
                for reply in replies {
                    let _ = reply.send(Err(refusal.clone()));
                }
            }
        }
    }
}

/// Gathers requests for up to `window` after the first; holds only a weak reference so the
/// agent can drop.
pub(super) async fn batcher(
    agent: std::sync::Weak<Agent>,
    mut rx: mpsc::Receiver<BatchItem>,
    window: Duration,
) {
    while let Some(first) = rx.recv().await {
        let mut items = vec![first];
        let deadline = tokio::time::Instant::now() + window;
        while items.len() < api::MAX_BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(i)) => items.push(i),
                _ => break,
            }
        }
        let Some(agent) = agent.upgrade() else { return };
        tokio::spawn(agent.send_batch(items));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_refusal_keeps_the_status_of_the_problem() {
        let e = ClientError::Api(crate::api::Problem {
            type_: "t".into(),
            title: "Invalid value".into(),
            status: 422,
            detail: "app_guid: bad".into(),
        });
        let r = CaRefusal::from(&e);
        assert_eq!(r.status, Some(422));
        assert!(r.message.contains("app_guid"));
        let r = CaRefusal::from(&ClientError::Transport {
            url: "https://x".into(),
            message: "refused".into(),
        });
        assert_eq!(r.status, None);
    }
}
