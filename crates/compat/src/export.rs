//! Versioned exports: each Xen symbol is an assembler trampoline named
//! `<name>@@<version>` that tail-jumps to the Rust implementation.
//!
//! A tail jump leaves every argument register and the stack untouched, so
//! the trampoline has exactly the C signature of its target.

/// Exports `$f` (an `extern "C"` function) as the versioned symbol
/// `$name@@$ver`.
macro_rules! export {
    ($name:literal, $ver:literal, $f:path) => {
        #[cfg(target_arch = "x86_64")]
        std::arch::global_asm!(
            concat!(
                ".text\n.globl ", $name, "_xenshare_v\n",
                ".type ", $name, "_xenshare_v, %function\n",
                $name, "_xenshare_v:\n",
                "    jmp {f}\n",
                ".size ", $name, "_xenshare_v, . - ", $name, "_xenshare_v\n",
                ".symver ", $name, "_xenshare_v, ", $name, "@@", $ver, "\n"
            ),
            f = sym $f
        );
        #[cfg(target_arch = "aarch64")]
        std::arch::global_asm!(
            concat!(
                ".text\n.globl ", $name, "_xenshare_v\n",
                ".type ", $name, "_xenshare_v, %function\n",
                $name, "_xenshare_v:\n",
                "    b {f}\n",
                ".size ", $name, "_xenshare_v, . - ", $name, "_xenshare_v\n",
                ".symver ", $name, "_xenshare_v, ", $name, "@@", $ver, "\n"
            ),
            f = sym $f
        );
    };
}

pub(crate) use export;
