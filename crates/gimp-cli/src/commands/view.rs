//! `view`: the local slide viewer (`gimp_view`), on 127.0.0.1 unless --host says otherwise.

use anyhow::Result;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// Slide files, `*.prediction.json` records, or folders of them (`predict --slide --out`
    /// folders, slide folders).
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// Address to listen on. Anything but a loopback address lets other machines read the slides.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// Port (0: any free port; the address is printed).
    #[arg(long, default_value_t = 8020)]
    port: u16,
    /// Memory for rendered tiles, in MiB.
    #[arg(long, default_value_t = 256)]
    cache_mb: usize,
    /// OpenSeadragon's build/openseadragon folder (default: the one `npm ci` installed in
    /// crates/gimp-view/web/node_modules at build time).
    #[arg(long)]
    openseadragon: Option<PathBuf>,
}

pub fn run(a: Args) -> Result<ExitCode> {
    if !a.host.is_loopback() {
        eprintln!(
            "warning: listening on {}: any machine that can reach it can read these slides and \
             predictions (there is no authentication)",
            a.host
        );
    }
    let opts = gimp_view::ViewOptions {
        inputs: a.inputs,
        host: a.host,
        port: a.port,
        cache_bytes: a.cache_mb.saturating_mul(1 << 20),
        openseadragon: a.openseadragon,
    };
    gimp_view::serve(opts, |addr, st| {
        let broken = st
            .catalog
            .slides
            .iter()
            .filter(|s| s.error().is_some())
            .count();
        eprintln!(
            "{} slides ({broken} with a record that cannot be read; each slide is opened when it \
             is first shown); press Ctrl-C to stop",
            st.catalog.slides.len()
        );
        // stdout, one line, so scripts (the browser test) can read the address.
        println!("listening on http://{addr}/");
    })?;
    eprintln!("stopped");
    Ok(ExitCode::SUCCESS)
}
