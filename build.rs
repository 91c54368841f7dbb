//! Link settings for the LD_PRELOAD library.
//!
//! `-z now`: every PLT slot is bound at load, so no lazy symbol resolution (which can
//! take loader locks and allocate) ever runs inside a hook. `-z nodelete`: the library
//! is never unloaded while threads may still be inside it. `variadic.c` holds the
//! exports stable Rust cannot define (execl, execle, execlp).

fn main() {
    println!("cargo:rerun-if-changed=src/variadic.c");
    println!("cargo:rustc-cdylib-link-arg=-Wl,-z,now");
    println!("cargo:rustc-cdylib-link-arg=-Wl,-z,nodelete");
    println!("cargo:rerun-if-changed=src/variadic.map");
    println!(
        "cargo:rustc-cdylib-link-arg=-Wl,--version-script={}/src/variadic.map",
        std::env::var("CARGO_MANIFEST_DIR").unwrap()
    );
    cc::Build::new()
        .file("src/variadic.c")
        .link_lib_modifier("+whole-archive")
        .warnings(true)
        .extra_warnings(true)
        .compile("ringshim_variadic");
}
