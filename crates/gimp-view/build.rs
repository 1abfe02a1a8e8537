//! Installs the page's npm packages (OpenSeadragon, pinned by web/package-lock.json) with
//! `npm ci` when they are missing, so the README's build and test commands set the viewer up on
//! a fresh clone; tells the crate where OpenSeadragon's built files are. Without npm the build
//! still succeeds (the rest of gimp-rs does not need it) with a warning, and `gimp-rs view` and
//! the viewer's tests then fail saying what to run.

use std::path::Path;
use std::process::Command;

fn main() {
    let web = Path::new(env!("CARGO_MANIFEST_DIR")).join("web");
    let osd = web.join("node_modules/openseadragon/build/openseadragon");
    let script = osd.join("openseadragon.min.js");
    println!("cargo:rerun-if-changed=web/package-lock.json");
    println!("cargo:rerun-if-changed={}", script.display());
    if !script.is_file() {
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&web)
            .status();
        match status {
            Ok(s) if s.success() && script.is_file() => {}
            Ok(s) => println!(
                "cargo:warning=`npm ci` in {} failed ({s}); `gimp-rs view` will not work until it succeeds",
                web.display()
            ),
            Err(e) => println!(
                "cargo:warning=npm not found ({e}); run `npm ci` in {} for `gimp-rs view`",
                web.display()
            ),
        }
    }
    println!("cargo:rustc-env=GIMP_VIEW_OPENSEADRAGON={}", osd.display());
}
