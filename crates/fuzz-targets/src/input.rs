//! A cursor over the fuzzer's bytes that never fails.

/// Reads little-endian numbers and slices from the fuzzer's input; past the
/// end every read yields zeros (or an empty slice), so any input is valid
/// and short inputs mean "mostly zero".
#[derive(Debug, Clone)]
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    /// A cursor at the start of `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    /// True once every byte has been read.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.data.len()
    }

    /// The next `n` bytes (fewer at the end).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (a, b) = self.data.split_at(n.min(self.data.len()));
        self.data = b;
        a
    }

    /// Everything not read yet.
    pub fn rest(&mut self) -> &'a [u8] {
        self.bytes(self.data.len())
    }

    /// The next byte (0 at the end).
    pub fn u8(&mut self) -> u8 {
        self.bytes(1).first().copied().unwrap_or(0)
    }

    /// The next two bytes as a little-endian `u16`.
    pub fn u16(&mut self) -> u16 {
        let mut b = [0u8; 2];
        let s = self.bytes(2);
        b[..s.len()].copy_from_slice(s);
        u16::from_le_bytes(b)
    }

    /// The next four bytes as a little-endian `u32`.
    pub fn u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        let s = self.bytes(4);
        b[..s.len()].copy_from_slice(s);
        u32::from_le_bytes(b)
    }

    /// The next eight bytes as a little-endian `u64`.
    pub fn u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        let s = self.bytes(8);
        b[..s.len()].copy_from_slice(s);
        u64::from_le_bytes(b)
    }

    /// A length-prefixed slice: one byte of length (then up to that many bytes).
    pub fn short_slice(&mut self) -> &'a [u8] {
        let n = usize::from(self.u8());
        self.bytes(n)
    }

    /// A peer index relative to `base` in a ring of `size` entries: a small
    /// step ahead, a step around the full-ring boundary (`base + size`,
    /// where off-by-ones live), a step behind, or any 32-bit value, so both
    /// legal and hostile values are common.
    pub fn index_near(&mut self, base: u32, size: u32) -> u32 {
        match self.u8() {
            0..=119 => base.wrapping_add(u32::from(self.u8())),
            120..=179 => base
                .wrapping_add(size)
                .wrapping_add(u32::from(self.u8() % 16))
                .wrapping_sub(8),
            180..=229 => base.wrapping_sub(u32::from(self.u8())),
            _ => self.u32(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_past_the_end_are_zero() {
        let mut i = Input::new(&[1, 2, 3]);
        assert_eq!(i.u16(), 0x0201);
        assert_eq!(i.u32(), 3);
        assert!(i.is_empty());
        assert_eq!(i.u64(), 0);
        assert_eq!(i.short_slice(), &[] as &[u8]);
        // Around the full-ring boundary: base + size - 8 + 10.
        let mut i = Input::new(&[150, 10]);
        assert_eq!(i.index_near(u32::MAX, 32), 33);
    }
}
