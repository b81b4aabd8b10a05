//! Records the commit the binaries are built from, for `qvdc --version` and `qvctl --version`.
//! Outside a git checkout (a source tarball) the commit is "unknown".

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git").args(args).output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
        .filter(|text| !text.is_empty())
}

fn main() {
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=QVDC_COMMIT={commit}");
    // A new commit moves the branch the HEAD points at: watch both.
    if let Some(head) = git(&["rev-parse", "--git-path", "HEAD"]) {
        println!("cargo:rerun-if-changed={head}");
    }
    // The branch's own file, when it has one (a packed branch lives in packed-refs).
    let reference = git(&["symbolic-ref", "-q", "HEAD"]);
    for name in reference.iter().map(String::as_str).chain(["packed-refs"]) {
        if let Some(path) = git(&["rev-parse", "--git-path", name]) {
            if std::path::Path::new(&path).exists() {
                println!("cargo:rerun-if-changed={path}");
            }
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}
