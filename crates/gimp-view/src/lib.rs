//! `gimp-rs view`: a local web server and page for looking at slides and what a model made of
//! them. The slide is served as Deep Zoom JPEG tiles from gimp-slide's own reader ([`dzi`]),
//! kept in a byte-budgeted LRU cache ([`cache`]); the page (`web/`, OpenSeadragon for pan and
//! zoom) draws a prediction's per-patch scores as a heatmap layer, the patch grid and tissue
//! outlines, lists the top patches and the class probabilities. It binds 127.0.0.1 unless told
//! otherwise and hands out files only from under the folders it was given ([`files`]).
//! `docs/VIEWER.md` has the usage, `docs/DESIGN.md` §37 the decisions.

pub mod cache;
pub mod catalog;
pub mod dzi;
pub mod files;
pub mod server;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Where `npm ci` in `crates/gimp-view/web` puts OpenSeadragon's built files (set by build.rs).
pub const OPENSEADRAGON_DIR: &str = env!("GIMP_VIEW_OPENSEADRAGON");

#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    #[error("{0}")]
    Data(#[from] gimp_io::DataError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error(
        "OpenSeadragon is not installed in {0}: run `npm ci` in crates/gimp-view/web (the build \
         does it when npm is on the PATH), or give --openseadragon DIR"
    )]
    NoOpenSeadragon(PathBuf),
}

pub struct ViewOptions {
    pub inputs: Vec<PathBuf>,
    pub host: IpAddr,
    /// 0: any free port.
    pub port: u16,
    /// Tile cache budget in bytes.
    pub cache_bytes: usize,
    /// OpenSeadragon's `build/openseadragon` folder; default [`OPENSEADRAGON_DIR`].
    pub openseadragon: Option<PathBuf>,
}

/// The OpenSeadragon folder to serve, checked to hold the script.
pub fn openseadragon_dir(given: Option<&Path>) -> Result<PathBuf, ViewError> {
    let dir = given.map_or_else(|| PathBuf::from(OPENSEADRAGON_DIR), Path::to_path_buf);
    if dir.join("openseadragon.min.js").is_file() {
        Ok(dir)
    } else {
        Err(ViewError::NoOpenSeadragon(dir))
    }
}

/// The server's state for `opts`: the slides listed and records read, no slide opened yet
/// (each is opened on its first use, [`catalog::Catalog::reader`]).
pub fn state(opts: &ViewOptions) -> Result<Arc<server::AppState>, ViewError> {
    Ok(Arc::new(server::AppState {
        catalog: catalog::Catalog::open(&opts.inputs)?,
        cache: cache::TileCache::new(opts.cache_bytes),
        openseadragon: openseadragon_dir(opts.openseadragon.as_deref())?,
    }))
}

/// How long requests still being answered get after Ctrl-C before the server stops anyway.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Serves until Ctrl-C (SIGINT) or SIGTERM, then stops taking connections, lets requests being
/// answered finish (at most [`SHUTDOWN_GRACE`]) and returns `Ok`; `ready(address, state)` is
/// called once the socket listens.
pub fn serve(
    opts: ViewOptions,
    ready: impl FnOnce(SocketAddr, &server::AppState),
) -> Result<(), ViewError> {
    serve_until(opts, ready, stop_signal)
}

/// [`serve`] until the future `stop()` makes completes instead of until a signal. `stop` is
/// called inside the server's runtime before the socket listens (and so before `ready`), so a
/// signal it waits for is caught from the moment anyone can know the address.
pub fn serve_until<F: Future<Output = ()> + Send + 'static>(
    opts: ViewOptions,
    ready: impl FnOnce(SocketAddr, &server::AppState),
    stop: impl FnOnce() -> F,
) -> Result<(), ViewError> {
    let st = state(&opts)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let served = rt.block_on(async move {
        let stop = stop();
        let listener = tokio::net::TcpListener::bind((opts.host, opts.port)).await?;
        ready(listener.local_addr()?, &st);
        let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
        let graceful = axum::serve(listener, server::router(st)).with_graceful_shutdown(async {
            stop.await;
            let _ = stopping_tx.send(());
        });
        // Connections a browser keeps open (keep-alive, a request stuck on a slow disk) must
        // not keep the process alive once it was asked to stop.
        let deadline = async {
            if stopping_rx.await.is_ok() {
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            r = graceful => r,
            () = deadline => Ok(()),
        }
    });
    // Tiles still being rendered on blocking threads are not waited for past the grace period.
    rt.shutdown_timeout(SHUTDOWN_GRACE);
    Ok(served?)
}

/// Completes on Ctrl-C (SIGINT) or, on Unix, SIGTERM (what `kill` and service managers send).
/// The handlers are installed when this is called, not when the future is first polled: a
/// signal that arrives between the "listening" line and the server's first poll would otherwise
/// meet the default action and kill the process (exit by signal, not 0).
fn stop_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let interrupt = signal(SignalKind::interrupt());
        let terminate = signal(SignalKind::terminate());
        async move {
            let wait = |s: std::io::Result<tokio::signal::unix::Signal>| async move {
                match s {
                    Ok(mut s) => {
                        s.recv().await;
                    }
                    Err(_) => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = wait(interrupt) => {}
                () = wait(terminate) => {}
            }
        }
    }
    #[cfg(not(unix))]
    async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
