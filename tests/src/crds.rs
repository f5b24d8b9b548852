//! The Sluice CRDs, installed once per test binary into its control plane.

use std::sync::OnceLock;

use crate::controlplane::ControlPlane;

/// Applies `crds/` to the shared control plane and waits until the API server serves both
/// kinds. The first caller installs them; later callers return at once.
pub fn install_crds() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let cp = ControlPlane::shared();
        let crds = concat!(env!("CARGO_MANIFEST_DIR"), "/../crds");
        let output = cp
            .kubectl()
            .args(["apply", "--server-side", "-f", crds])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "kubectl apply crds: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let output = cp
            .kubectl()
            .args([
                "wait",
                "--for=condition=Established",
                "--timeout=60s",
                "crd/dataapis.sluice.dev",
                "crd/apiroles.sluice.dev",
            ])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "CRDs not established: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    });
}
