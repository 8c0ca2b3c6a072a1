//! `stepstone bench` as a binary of its own, for GPU machines: it links neither the editor's nor the
//! video encoder's native libraries, so it can be copied to a machine that has only a GPU driver
//! (tools/bench/pack-gpu.sh). Same options and JSON as `stepstone bench`.

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "stepstone-bench",
    about = "The full-size SD 1.5 + AnimateDiff networks, timed (as `stepstone bench`)"
)]
struct Args {
    #[command(flatten)]
    bench: stepstone::cli::bench::BenchArgs,
}

fn main() -> anyhow::Result<()> {
    stepstone::cli::bench::bench(Args::parse().bench)
}
