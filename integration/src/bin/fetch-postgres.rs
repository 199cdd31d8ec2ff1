//! Installs (if needed) the PostgreSQL server binaries of the given majors into the harness
//! cache, so that tests find them ready: `fetch-postgres 13 17` (default: 13 17).

use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let mut majors: Vec<u32> = Vec::new();
    for arg in std::env::args().skip(1) {
        majors.push(
            arg.parse()
                .map_err(|_| anyhow::anyhow!("not a PostgreSQL major: {arg:?}"))?,
        );
    }
    if majors.is_empty() {
        majors = vec![13, 17];
    }
    for major in majors {
        let started = Instant::now();
        let bins = integration::binaries(major)?;
        println!(
            "PostgreSQL {} ready in {:.1?}: {}",
            bins.version,
            started.elapsed(),
            bins.bindir.display()
        );
    }
    Ok(())
}
