//! Writes `protocol/vectors/valid.json` and `invalid.json` from fixed seeds.
//! Run: `cargo run -p kim-protocol --example gen_vectors`

#[path = "../tests/support/vectors.rs"]
mod vectors;

fn main() -> std::io::Result<()> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("vectors");
    std::fs::create_dir_all(&dir)?;
    for (name, text) in vectors::files() {
        std::fs::write(dir.join(name), text)?;
        println!("wrote {}", dir.join(name).display());
    }
    Ok(())
}
