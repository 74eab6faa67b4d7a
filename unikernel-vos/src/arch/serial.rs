//! COM1 console. Text is buffered and written with `rep outsb`: under KVM a string I/O
//! instruction is one exit for the whole buffer instead of one per byte. Logging still stays
//! off the hot path.

use core::arch::asm;
use core::fmt;

const COM1: u16 = 0x3f8;
const LEN: usize = 256;

/// A console writer that buffers up to 256 bytes and flushes on drop.
pub struct Serial {
    buf: [u8; LEN],
    len: usize,
}

impl Serial {
    /// An empty writer.
    pub const fn new() -> Serial {
        Serial {
            buf: [0; LEN],
            len: 0,
        }
    }

    fn push(&mut self, b: u8) {
        if self.len == LEN {
            self.flush();
        }
        self.buf[self.len] = b;
        self.len += 1;
    }

    /// Writes the buffered bytes to COM1.
    pub fn flush(&mut self) {
        if self.len == 0 {
            return;
        }
        // SAFETY: string output from our own buffer to the UART's data port (allowed by the
        // TSS I/O bitmap); rsi/rcx are declared clobbered.
        unsafe {
            asm!(
                "rep outsb",
                in("dx") COM1,
                inout("rsi") self.buf.as_ptr() => _,
                inout("rcx") self.len => _,
                options(nostack, preserves_flags, readonly)
            )
        };
        self.len = 0;
    }
}

impl Default for Serial {
    fn default() -> Self {
        Serial::new()
    }
}

impl Drop for Serial {
    fn drop(&mut self) {
        self.flush();
    }
}

impl fmt::Write for Serial {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            if b == b'\n' {
                self.push(b'\r');
            }
            self.push(b);
        }
        Ok(())
    }
}

/// Prints to the serial console.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        let mut s = $crate::arch::serial::Serial::new();
        let _ = write!(s, $($arg)*);
    }};
}

/// Prints a line to the serial console.
#[macro_export]
macro_rules! println {
    () => { $crate::print!("\n") };
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        let mut s = $crate::arch::serial::Serial::new();
        let _ = writeln!(s, $($arg)*);
    }};
}
