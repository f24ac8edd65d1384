//! One codec for every wire type in this crate.
//!
//! Network input is parsed into types exactly once, through a [`Reader`] that never panics and
//! that the caller must [`Reader::finish`] so trailing bytes are an error, not silently ignored.
//! Every top-level wire type starts with a version byte and is decoded with [`Decode::from_bytes`].

use thiserror::Error;

/// Why a byte string is not a valid encoding.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// The input ended before a field was complete.
    #[error("truncated input: needed {needed} more bytes, {remaining} remaining")]
    Truncated {
        /// Bytes the field needed.
        needed: usize,
        /// Bytes that were left.
        remaining: usize,
    },
    /// Bytes were left after the value was complete.
    #[error("{0} trailing bytes after a complete value")]
    TrailingBytes(usize),
    /// The version byte is not one this build understands.
    #[error("unsupported {what} version: expected {expected}, got {got}")]
    UnknownVersion {
        /// The type being decoded.
        what: &'static str,
        /// The version this build speaks.
        expected: u8,
        /// The version found.
        got: u8,
    },
    /// A tag or enum discriminant has no meaning.
    #[error("invalid {what} tag {got}")]
    UnknownTag {
        /// The field being decoded.
        what: &'static str,
        /// The tag found.
        got: u64,
    },
    /// A length prefix exceeds the bound for this field.
    #[error("{what} too long: at most {max}, got {got}")]
    TooLong {
        /// The field being decoded.
        what: &'static str,
        /// The bound.
        max: usize,
        /// The length found.
        got: usize,
    },
    /// A field decoded to bytes that are not a valid value (for example a non-canonical point).
    #[error("invalid {0}")]
    Invalid(&'static str),
}

/// A cursor over untrusted bytes. Every read is bounds-checked and returns an error instead of
/// panicking.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Starts reading `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    /// Bytes not yet consumed.
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// Takes the next `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.buf.len() {
            return Err(DecodeError::Truncated {
                needed: n,
                remaining: self.buf.len(),
            });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    /// Takes everything that is left.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    /// Reads a fixed-size array.
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    /// Reads one byte.
    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    /// Reads a big-endian u16.
    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    /// Reads a big-endian u32.
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    /// Reads a big-endian u64.
    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// Reads a boolean encoded as 0 or 1; any other byte is an error.
    pub fn bool(&mut self) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            got => Err(DecodeError::UnknownTag {
                what: "bool",
                got: u64::from(got),
            }),
        }
    }

    /// Reads bytes behind a u16 length prefix, at most `max` of them.
    pub fn bytes16(&mut self, what: &'static str, max: usize) -> Result<&'a [u8], DecodeError> {
        let len = usize::from(self.u16()?);
        if len > max {
            return Err(DecodeError::TooLong {
                what,
                max,
                got: len,
            });
        }
        self.take(len)
    }

    /// Reads bytes behind a u32 length prefix, at most `max` of them.
    pub fn bytes32(&mut self, what: &'static str, max: usize) -> Result<&'a [u8], DecodeError> {
        let len = self.u32()? as usize;
        if len > max {
            return Err(DecodeError::TooLong {
                what,
                max,
                got: len,
            });
        }
        self.take(len)
    }

    /// Reads a u16 element count, at most `max`.
    pub fn count16(&mut self, what: &'static str, max: usize) -> Result<usize, DecodeError> {
        let n = usize::from(self.u16()?);
        if n > max {
            return Err(DecodeError::TooLong { what, max, got: n });
        }
        Ok(n)
    }

    /// Reads the version byte and checks it.
    pub fn version(&mut self, what: &'static str, expected: u8) -> Result<(), DecodeError> {
        let got = self.u8()?;
        if got != expected {
            return Err(DecodeError::UnknownVersion {
                what,
                expected,
                got,
            });
        }
        Ok(())
    }

    /// Ends decoding: fails if any byte is left.
    pub fn finish(self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes(self.buf.len()))
        }
    }
}

/// An append-only output buffer with the same field helpers as [`Reader`].
#[derive(Debug, Default, Clone)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    /// An empty writer.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty writer with room for `n` bytes.
    pub fn with_capacity(n: usize) -> Self {
        Self {
            buf: Vec::with_capacity(n),
        }
    }

    /// Appends raw bytes.
    pub fn put(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Appends one byte.
    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }

    /// Appends a big-endian u16.
    pub fn u16(&mut self, v: u16) {
        self.put(&v.to_be_bytes());
    }

    /// Appends a big-endian u32.
    pub fn u32(&mut self, v: u32) {
        self.put(&v.to_be_bytes());
    }

    /// Appends a big-endian u64.
    pub fn u64(&mut self, v: u64) {
        self.put(&v.to_be_bytes());
    }

    /// Appends a boolean as 0 or 1.
    pub fn bool(&mut self, v: bool) {
        self.u8(u8::from(v));
    }

    /// Appends bytes behind a u16 length prefix. Callers bound their fields well below
    /// `u16::MAX`; a longer slice is truncated to the prefix's range, which the matching
    /// decoder then rejects, so an encoder bug cannot produce an ambiguous encoding.
    pub fn bytes16(&mut self, bytes: &[u8]) {
        let len = u16::try_from(bytes.len()).unwrap_or(u16::MAX);
        self.u16(len);
        self.put(bytes.get(..usize::from(len)).unwrap_or(bytes));
    }

    /// Appends bytes behind a u32 length prefix.
    pub fn bytes32(&mut self, bytes: &[u8]) {
        let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
        self.u32(len);
        self.put(bytes.get(..len as usize).unwrap_or(bytes));
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The finished encoding.
    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }
}

/// A type with a canonical byte encoding.
pub trait Encode {
    /// Appends this value's encoding.
    fn encode(&self, w: &mut Writer);

    /// This value's encoding as a new vector.
    fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::new();
        self.encode(&mut w);
        w.into_bytes()
    }
}

/// A type that can be parsed from untrusted bytes.
pub trait Decode: Sized {
    /// Reads one value from the reader, leaving the rest.
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError>;

    /// Parses exactly one value: trailing bytes are an error.
    fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let v = Self::decode(&mut r)?;
        r.finish()?;
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn truncated_and_trailing_are_errors() {
        let mut r = Reader::new(&[1, 2, 3]);
        assert_eq!(r.u16().unwrap(), 0x0102);
        assert_eq!(
            r.u16(),
            Err(DecodeError::Truncated {
                needed: 2,
                remaining: 1
            })
        );
        let mut r = Reader::new(&[1, 2, 3]);
        r.u8().unwrap();
        assert_eq!(r.finish(), Err(DecodeError::TrailingBytes(2)));
    }

    #[test]
    fn length_prefix_bound_is_enforced() {
        let mut w = Writer::new();
        w.bytes16(&[7u8; 10]);
        let bytes = w.into_bytes();
        let mut r = Reader::new(&bytes);
        assert_eq!(
            r.bytes16("field", 9),
            Err(DecodeError::TooLong {
                what: "field",
                max: 9,
                got: 10
            })
        );
        let mut r = Reader::new(&bytes);
        assert_eq!(r.bytes16("field", 10).unwrap(), &[7u8; 10]);
    }

    #[test]
    fn bool_rejects_non_canonical() {
        assert!(Reader::new(&[2]).bool().is_err());
    }

    proptest! {
        #[test]
        fn fields_round_trip(a: u8, b: u16, c: u32, d: u64, e: bool, f in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut w = Writer::new();
            w.u8(a); w.u16(b); w.u32(c); w.u64(d); w.bool(e); w.bytes16(&f); w.bytes32(&f);
            let bytes = w.into_bytes();
            let mut r = Reader::new(&bytes);
            prop_assert_eq!(r.u8().unwrap(), a);
            prop_assert_eq!(r.u16().unwrap(), b);
            prop_assert_eq!(r.u32().unwrap(), c);
            prop_assert_eq!(r.u64().unwrap(), d);
            prop_assert_eq!(r.bool().unwrap(), e);
            prop_assert_eq!(r.bytes16("f", 1000).unwrap(), &f[..]);
            prop_assert_eq!(r.bytes32("f", 1000).unwrap(), &f[..]);
            r.finish().unwrap();
        }

        #[test]
        fn reader_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut r = Reader::new(&bytes);
            let _ = r.u32();
            let _ = r.bytes16("x", 100);
            let _ = r.bool();
            let _ = r.bytes32("y", 100);
        }
    }
}
