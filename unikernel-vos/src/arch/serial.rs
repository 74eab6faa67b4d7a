//! COM1 console. Each byte is a VM exit, so logging stays off the hot path.

use core::fmt;

const COM1: u16 = 0x3f8;

/// The console writer used by `print!`/`println!`.
pub struct Serial;

impl fmt::Write for Serial {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            if b == b'\n' {
                super::outb(COM1, b'\r');
            }
            super::outb(COM1, b);
        }
        Ok(())
    }
}

/// Prints to the serial console.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        let _ = write!($crate::arch::serial::Serial, $($arg)*);
    }};
}

/// Prints a line to the serial console.
#[macro_export]
macro_rules! println {
    () => { $crate::print!("\n") };
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        let _ = writeln!($crate::arch::serial::Serial, $($arg)*);
    }};
}
