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

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

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

/// The server's state for `opts` (slides opened, records read).
pub fn state(opts: &ViewOptions) -> Result<Arc<server::AppState>, ViewError> {
    Ok(Arc::new(server::AppState {
        catalog: catalog::Catalog::open(&opts.inputs)?,
        cache: cache::TileCache::new(opts.cache_bytes),
        openseadragon: openseadragon_dir(opts.openseadragon.as_deref())?,
    }))
}

/// Serves until the process ends; `ready(address, state)` is called once the socket listens.
pub fn serve(
    opts: ViewOptions,
    ready: impl FnOnce(SocketAddr, &server::AppState),
) -> Result<(), ViewError> {
    let st = state(&opts)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind((opts.host, opts.port)).await?;
        ready(listener.local_addr()?, &st);
        axum::serve(listener, server::router(st)).await?;
        Ok(())
    })
}
