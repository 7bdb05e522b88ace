//! Buffers for the bodies that cache misses build, used again once a body has been sent (and
//! dropped from the response cache).
//!
//! A 365-day body is about 330 KB. Built in a fresh allocation, glibc maps it (with the
//! deployment's `MALLOC_MMAP_THRESHOLD_`, or past its own adaptive threshold), every page of it is
//! faulted in and zeroed as the rows are copied in, and it is unmapped when the body is freed: on
//! a miss-heavy load (per-user reads) that was about a tenth of the machine's CPU time. The
//! buffers of sent bodies are kept instead, within bounds, so the next miss writes into pages
//! already mapped.
//!
//! A body leaves as [`Bytes`] whose owner gives its buffer back when the last clone (the
//! response's parts, the cache's entry) is dropped.

use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;

/// The smallest buffer kept: smaller ones come from malloc's arenas, whose pages stay mapped.
const SMALLEST_KEPT: usize = 64 * 1024;

/// Free buffers kept for the bodies of cache misses.
#[derive(Debug)]
pub struct BodyBuffers {
    /// Buffers given back, empty, ready for the next body.
    free: Mutex<Vec<Vec<u8>>>,
    /// Most buffers kept free.
    keep: usize,
    /// Largest buffer kept; a larger one is freed when given back.
    largest: usize,
}

impl BodyBuffers {
    /// At most `keep` free buffers of up to `largest` bytes each: the memory they hold while no
    /// read uses them stays under `keep * largest`.
    pub fn new(keep: usize, largest: usize) -> Arc<Self> {
        Arc::new(Self {
            free: Mutex::new(Vec::new()),
            keep,
            largest,
        })
    }

    /// An empty buffer with room for at least `capacity` bytes: the smallest kept one that has
    /// the room, else the largest kept one (grown), else a new one.
    pub fn take(&self, capacity: usize) -> Vec<u8> {
        let kept = {
            let mut free = self.free.lock().unwrap_or_else(PoisonError::into_inner);
            let fitting = free
                .iter()
                .enumerate()
                .filter(|(_, buffer)| buffer.capacity() >= capacity)
                .min_by_key(|(_, buffer)| buffer.capacity())
                .or_else(|| {
                    free.iter()
                        .enumerate()
                        .max_by_key(|(_, buffer)| buffer.capacity())
                })
                .map(|(index, _)| index);
            fitting.map(|index| free.swap_remove(index))
        };
        let mut buffer = kept.unwrap_or_default();
        buffer.reserve(capacity);
        buffer
    }

    /// `body` as [`Bytes`] (no copy) whose buffer comes back here when the last clone is
    /// dropped. A body using less than four fifths of its buffer is shrunk first: a cached body
    /// holds no more memory than a quarter over its size.
    pub fn freeze(self: &Arc<Self>, mut body: Vec<u8>) -> Bytes {
        if body.capacity() - body.len() > body.len() / 4 {
            body.shrink_to_fit();
        }
        Bytes::from_owner(Lent {
            body,
            home: Arc::clone(self),
        })
    }

    /// Keeps `buffer` (emptied) if there is room for it.
    fn give_back(&self, mut buffer: Vec<u8>) {
        if !(SMALLEST_KEPT..=self.largest).contains(&buffer.capacity()) {
            return;
        }
        buffer.clear();
        let mut free = self.free.lock().unwrap_or_else(PoisonError::into_inner);
        if free.len() < self.keep {
            free.push(buffer);
        }
    }

    /// How many buffers are kept free.
    pub fn kept(&self) -> usize {
        self.free
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// A body's buffer while [`Bytes`] refer to it.
struct Lent {
    body: Vec<u8>,
    home: Arc<BodyBuffers>,
}

impl AsRef<[u8]> for Lent {
    fn as_ref(&self) -> &[u8] {
        &self.body
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        self.home.give_back(std::mem::take(&mut self.body));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body of `size` bytes built in a buffer of `buffers`, as a read builds one.
    fn body(buffers: &Arc<BodyBuffers>, size: usize) -> Bytes {
        let mut body = buffers.take(size);
        body.resize(size, b'x');
        buffers.freeze(body)
    }

    #[test]
    fn a_sent_body_gives_its_buffer_to_the_next_read() {
        let buffers = BodyBuffers::new(2, 1 << 20);
        let mut body = buffers.take(300_000);
        body.extend_from_slice(b"{\"metrics\":[");
        body.resize(300_000, b' ');
        let address = body.as_ptr();
        let bytes = buffers.freeze(body);
        let part = bytes.slice(2..9);
        assert_eq!(bytes.len(), 300_000);
        drop(bytes);
        // A part still refers to the buffer: it is not free yet.
        assert_eq!(buffers.kept(), 0);
        assert_eq!(&part[..], b"metrics");
        drop(part);
        assert_eq!(buffers.kept(), 1);
        let next = buffers.take(1_000);
        assert!(next.is_empty());
        assert_eq!(next.as_ptr(), address);
        assert!(next.capacity() >= 300_000);
        assert_eq!(buffers.kept(), 0);
    }

    #[test]
    fn no_more_no_smaller_and_no_larger_buffers_are_kept_than_asked() {
        let buffers = BodyBuffers::new(2, 1 << 20);
        let bodies: Vec<Bytes> = (0..3).map(|_| body(&buffers, 100_000)).collect();
        drop(bodies);
        assert_eq!(buffers.kept(), 2);

        let buffers = BodyBuffers::new(2, 1 << 20);
        drop(body(&buffers, (1 << 20) + 1));
        drop(body(&buffers, 1_000));
        assert_eq!(buffers.kept(), 0);
    }

    #[test]
    fn a_read_takes_the_smallest_kept_buffer_with_room() {
        let buffers = BodyBuffers::new(3, 1 << 20);
        let bodies: Vec<Bytes> = [70_000, 400_000, 100_000]
            .into_iter()
            .map(|size| body(&buffers, size))
            .collect();
        drop(bodies);
        assert!((80_000..400_000).contains(&buffers.take(80_000).capacity()));
        assert!(buffers.take(30_000).capacity() < 100_000);
        // None has room: the largest left is grown.
        assert!(buffers.take(600_000).capacity() >= 600_000);
        assert_eq!(buffers.kept(), 0);
    }

    #[test]
    fn a_body_much_smaller_than_its_buffer_is_shrunk_before_it_is_cached() {
        let buffers = BodyBuffers::new(1, 1 << 20);
        let mut body = buffers.take(400_000);
        body.resize(100_000, b'x');
        let bytes = buffers.freeze(body);
        drop(bytes);
        assert!(buffers.take(0).capacity() < 400_000);
    }
}
