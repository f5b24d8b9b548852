//! Writes the CRD YAML under `crds/`, the Helm chart's copy and `docs/crd-reference.md` from
//! the Rust types:
//! `cargo run -p sluice-crds --bin crdgen`.

fn main() -> std::io::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for written in sluice_crds::crdgen::write_all(&root)? {
        println!("wrote {}", written.display());
    }
    Ok(())
}
