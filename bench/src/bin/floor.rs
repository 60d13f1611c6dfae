//! Prints the machine's floors under the workloads (see `floor.rs` in the
//! harness's sources): `cargo run --release -p multiproc-bench --bin floor`.

#[path = "../floor.rs"]
mod floor;

fn main() -> multiproc::Result<()> {
    print!("{}", floor::measure()?);
    Ok(())
}
