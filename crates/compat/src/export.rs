//! Versioned exports: each Xen symbol is an assembler trampoline named
//! `<name>@@<version>` that tail-jumps to the Rust implementation.
//!
//! A tail jump leaves every argument register and the stack untouched, so
//! the trampoline has exactly the C signature of its target.

/// The trampoline `$name_xenshare_v`, versioned `$name@@$ver`, whose one
/// instruction `$jump` (the architecture's plain branch) goes to `$f`.
macro_rules! trampoline {
    ($name:literal, $ver:literal, $f:path, $jump:literal) => {
        std::arch::global_asm!(
            concat!(
                ".text\n.globl ", $name, "_xenshare_v\n",
                ".type ", $name, "_xenshare_v, %function\n",
                $name, "_xenshare_v:\n",
                "    ", $jump, " {f}\n",
                ".size ", $name, "_xenshare_v, . - ", $name, "_xenshare_v\n",
                ".symver ", $name, "_xenshare_v, ", $name, "@@", $ver, "\n"
            ),
            f = sym $f
        );
    };
}

/// Exports `$f` (an `extern "C"` function) as the versioned symbol
/// `$name@@$ver`.
macro_rules! export {
    ($name:literal, $ver:literal, $f:path) => {
        #[cfg(target_arch = "x86_64")]
        $crate::export::trampoline!($name, $ver, $f, "jmp");
        #[cfg(target_arch = "aarch64")]
        $crate::export::trampoline!($name, $ver, $f, "b");
    };
}

pub(crate) use export;
pub(crate) use trampoline;
