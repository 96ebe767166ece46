//! Software prefetch of packed weights a kernel will read next. Inside a network every weight
//! is read once per call, so a layer's weights arrive from L3 or memory: the first register
//! tile to touch each weight panel waits for it, while the tiles after it run from L2. A
//! kernel hands each tile a [`Prefetch`] share of the next panel's lines, spread over the
//! tile's K loop, so that fetch overlaps computation instead of stalling it.

/// `lines` consecutive 64-byte lines from `ptr` to pull into L2, one every `every` calls of
/// [`Prefetch::step`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct Prefetch {
    ptr: *const i8,
    lines: usize,
    every: usize,
    countdown: usize,
}

impl Prefetch {
    /// Prefetches nothing.
    pub(crate) const NONE: Prefetch = Prefetch {
        ptr: std::ptr::null(),
        lines: 0,
        every: usize::MAX,
        countdown: usize::MAX,
    };

    /// Share `part` of `parts` of the `bytes` bytes at `next`, spread over `steps` steps.
    pub(crate) fn share(next: *const i8, bytes: usize, part: usize, parts: usize, steps: usize) -> Prefetch {
        let total = bytes / 64;
        let (first, last) = (part * total / parts.max(1), (part + 1) * total / parts.max(1));
        let lines = last - first;
        if lines == 0 {
            return Prefetch::NONE;
        }
        let every = (steps / lines).max(1);
        Prefetch {
            ptr: next.wrapping_add(first * 64),
            lines,
            every,
            countdown: every,
        }
    }

    /// One step of the kernel's loop: every `every` steps, prefetch the next line.
    #[inline(always)]
    pub(crate) fn step(&mut self) {
        self.countdown -= 1;
        if self.countdown == 0 {
            self.countdown = self.every;
            if self.lines > 0 {
                // SAFETY: a prefetch is a hint: it never faults and reads nothing into the
                // program, whatever the address.
                unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T1 }>(self.ptr) };
                self.ptr = self.ptr.wrapping_add(64);
                self.lines -= 1;
            }
        }
    }
}
