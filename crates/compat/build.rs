//! Links the cdylib with Xen's symbol versions and soname.

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into());
    println!("cargo:rerun-if-changed=xen.map");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rustc-cdylib-link-arg=-Wl,--version-script={dir}/xen.map");
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libxengnttab.so.1");
}
