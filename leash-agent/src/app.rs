//! Putting it together: builds the pipeline, listeners and sinks from a
//! [`Config`] and runs them until shutdown.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::{net::TcpListener, sync::watch};

use crate::{
    admin::Admin,
    audit::{AuditError, AuditWriter},
    config::Config,
    metrics::Metrics,
    pipeline::{Pipeline, PipelineError},
    proxy::{
        Forwarder,
        gateway::Gateway,
        upstream::{self, UpstreamError},
    },
    server::{self, ServeOptions},
    tls::{self, TlsError},
};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot listen on {field} {addr}: {source}")]
    Bind {
        field: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("gateway.tls: {0}")]
    Tls(#[from] TlsError),
}

async fn bind(field: &'static str, addr: SocketAddr) -> Result<TcpListener, RunError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| RunError::Bind {
            field,
            addr,
            source,
        })
}

/// Checks everything in `config` that can be checked without binding
/// ports: certificate files, extra roots, pipeline modules.
pub fn check(config: &Config) -> Result<(), RunError> {
    upstream::build_client(&config.upstream)?;
    config.gateway.tls.as_ref().map(tls::acceptor).transpose()?;
    Pipeline::check_modules(&config.pipeline.modules)?;
    Ok(())
}

/// Runs the explicit gateway and the admin listener until `shutdown`
/// resolves, then drains connections and flushes the audit trail.
pub async fn run_gateway(
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    let metrics = Arc::new(Metrics::new());
    let (audit_writer, audit_sink) = AuditWriter::start(&config.audit, Arc::clone(&metrics))?;
    let pipeline = Arc::new(Pipeline::new(&config, Arc::clone(&metrics), audit_sink)?);
    let client = upstream::build_client(&config.upstream)?;
    let forwarder = Forwarder::new(client, config.upstream.response_timeout);
    let gateway = Arc::new(Gateway::new(
        config.providers.clone(),
        pipeline,
        forwarder,
        config.gateway.max_body_bytes,
    ));
    let tls = config.gateway.tls.as_ref().map(tls::acceptor).transpose()?;
    let gateway_listener = bind("gateway.listen", config.gateway.listen).await?;
    let admin_listener = bind("admin.listen", config.admin.listen).await?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(
        gateway = %format!("{scheme}://{}", local(&gateway_listener)),
        admin = %format!("http://{}", local(&admin_listener)),
        audit = %audit_writer.path().display(),
        providers = %config.providers.names().collect::<Vec<_>>().join(","),
        "leash gateway ready"
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    let drain = Duration::from_secs(10);
    let gw_task = tokio::spawn(server::serve(
        gateway_listener,
        tls,
        gateway,
        ServeOptions {
            name: "gateway",
            header_read_timeout: config.gateway.header_read_timeout,
            drain_timeout: drain,
        },
        stop_rx.clone(),
    ));
    let admin_task = tokio::spawn(server::serve(
        admin_listener,
        None,
        Arc::new(Admin::new(metrics)),
        ServeOptions {
            name: "admin",
            header_read_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(1),
        },
        stop_rx,
    ));
    shutdown.await;
    tracing::info!("shutting down: draining connections");
    let _ = stop_tx.send(true);
    let _ = gw_task.await;
    let _ = admin_task.await;
    audit_writer.shutdown().await;
    tracing::info!("leash stopped");
    Ok(())
}

fn local(listener: &TcpListener) -> String {
    listener
        .local_addr()
        .map_or_else(|_| "?".to_owned(), |a| a.to_string())
}
