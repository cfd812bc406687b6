//! A real BuildGrid (the REAPI server `cargo xtask setup` installs) for the
//! remote-cache tests: [`xtask::farm::buildgrid::Server`], which panics here.

use std::path::PathBuf;

/// The `bgd` executable: `THINLTO_TEST_BGD` (set by `cargo xtask test`),
/// else installed now if needed (so plain `cargo test` works too).
pub fn bgd() -> PathBuf {
    if let Some(p) = std::env::var_os("THINLTO_TEST_BGD").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    xtask::farm::buildgrid::ensure()
        .unwrap_or_else(|e| panic!("no BuildGrid for the remote-cache tests: {e:#}"))
}

/// A running BuildGrid, stopped when dropped.
pub struct BuildGrid(xtask::farm::buildgrid::Server);

impl BuildGrid {
    pub fn start() -> BuildGrid {
        BuildGrid(xtask::farm::buildgrid::Server::start(&bgd()).unwrap_or_else(|e| panic!("{e:#}")))
    }
}

impl std::ops::Deref for BuildGrid {
    type Target = xtask::farm::buildgrid::Server;
    fn deref(&self) -> &xtask::farm::buildgrid::Server {
        &self.0
    }
}
