//! The fixed heap allocation behind a receive buffer.
//!
//! A raw pointer rather than a `Box<[u8]>`: while the event loop holds a buffer-protocol export,
//! it writes through a pointer we handed out, so Rust must never hold a `&`/`&mut` covering the
//! exported bytes, and must not assert uniqueness over the whole allocation the way a `Box` does.
//! Every access goes through a raw pointer and creates references only to the bytes asked for.

use std::ptr::NonNull;

pub struct RawBuf {
    ptr: NonNull<u8>,
    cap: usize,
}

// SAFETY: `RawBuf` owns its allocation exclusively, like `Box<[u8]>`, so moving it to another
// thread is sound.  Sharing `&RawBuf` is sound because nothing reachable from `&self` mutates:
// the methods that read or write the bytes are `unsafe`, and their callers (the `RecvBuffer`
// pyclass, whose state pyo3 guards with its borrow flag) uphold the aliasing rules.
unsafe impl Send for RawBuf {}
// SAFETY: see above.
unsafe impl Sync for RawBuf {}

impl RawBuf {
    /// A zeroed allocation of `cap` bytes (calloc: pages are only touched when written).
    pub fn new(cap: usize) -> RawBuf {
        let boxed: Box<[u8]> = vec![0u8; cap].into_boxed_slice();
        let cap = boxed.len();
        let ptr = NonNull::new(Box::into_raw(boxed).cast::<u8>()).unwrap_or(NonNull::dangling());
        RawBuf { ptr, cap }
    }

    #[inline]
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Pointer to byte `offset` (`offset <= cap`), for exporting the free tail.
    #[inline]
    pub fn ptr_at(&self, offset: usize) -> *mut u8 {
        assert!(offset <= self.cap);
        // SAFETY: `offset <= cap`, so the result is in bounds or one past the end.
        unsafe { self.ptr.as_ptr().add(offset) }
    }

    /// The bytes `[start, end)`.
    ///
    /// # Safety
    /// Nothing may write to these bytes while the returned slice lives (an exported view covers
    /// only bytes at or beyond the end of the received data, never these).
    #[inline]
    pub unsafe fn slice(&self, start: usize, end: usize) -> &[u8] {
        assert!(start <= end && end <= self.cap);
        // SAFETY: in bounds (checked above); initialized (zeroed at allocation, and the caller
        // guarantees no concurrent writer).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().add(start), end - start) }
    }

    /// The bytes `[start, end)`, writable.
    ///
    /// # Safety
    /// Nothing else may access these bytes while the returned slice lives (no buffer-protocol
    /// export may cover them, no other slice of them may be alive).
    #[inline]
    pub unsafe fn slice_mut(&mut self, start: usize, end: usize) -> &mut [u8] {
        assert!(start <= end && end <= self.cap);
        // SAFETY: in bounds (checked above); initialized (zeroed at allocation); exclusive by
        // the caller's guarantee and `&mut self`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr().add(start), end - start) }
    }

    /// Moves `[start, end)` to offset 0.
    ///
    /// # Safety
    /// No buffer-protocol export may be alive (nobody else may access the allocation).
    #[inline]
    pub unsafe fn compact(&mut self, start: usize, end: usize) {
        assert!(start <= end && end <= self.cap);
        // SAFETY: both ranges are in bounds; `ptr::copy` allows overlap.
        unsafe { std::ptr::copy(self.ptr.as_ptr().add(start), self.ptr.as_ptr(), end - start) }
    }

    /// Replaces the allocation with one of `cap` bytes holding `[start, end)` at offset 0.
    ///
    /// # Safety
    /// No buffer-protocol export may be alive (the old allocation is freed).
    pub unsafe fn reallocate(&mut self, cap: usize, start: usize, end: usize) {
        assert!(start <= end && end <= self.cap && end - start <= cap);
        let new = RawBuf::new(cap);
        // SAFETY: source in bounds of the old allocation, destination of the new one (checked
        // above); two distinct allocations never overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.ptr.as_ptr().add(start),
                new.ptr.as_ptr(),
                end - start,
            );
        }
        *self = new;
    }
}

impl Drop for RawBuf {
    fn drop(&mut self) {
        let slice = std::ptr::slice_from_raw_parts_mut(self.ptr.as_ptr(), self.cap);
        // SAFETY: `ptr`/`cap` came from `Box::into_raw` of a `Box<[u8]>` of exactly `cap` bytes
        // (or are dangling with cap 0, which `Box` also uses for empty slices); dropped once.
        drop(unsafe { Box::from_raw(slice) });
    }
}
