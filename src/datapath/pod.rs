//! Byte views of the skeleton's map key and value types. These are plain C
//! structs (integers and arrays, explicit padding fields), so any bit pattern
//! of the right length is a valid value.

/// The bytes of a map key or value.
pub fn bytes<T: Copy>(v: &T) -> &[u8] {
    // SAFETY: T is one of the generated repr(C) POD types; reading its bytes
    // is sound and the slice borrows v.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>()) }
}

/// A key or value read back from the kernel; None if the length is wrong.
pub fn read<T: Copy>(b: &[u8]) -> Option<T> {
    (b.len() >= std::mem::size_of::<T>())
        // SAFETY: length checked; T is POD, read_unaligned copes with any alignment.
        .then(|| unsafe { std::ptr::read_unaligned(b.as_ptr().cast::<T>()) })
}
