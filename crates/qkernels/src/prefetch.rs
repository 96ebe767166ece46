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

/// Up to [`Regions::MAX`] byte ranges to pull into L2, the row's tiles split evenly among them.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Regions {
    ranges: [(*const i8, usize); Regions::MAX],
    count: usize,
}

impl Regions {
    pub(crate) const MAX: usize = 4;

    pub(crate) fn new() -> Regions {
        Regions {
            ranges: [(std::ptr::null(), 0); Regions::MAX],
            count: 0,
        }
    }

    /// Adds the `bytes` bytes at `ptr` (nothing when empty or when [`Regions::MAX`] are held).
    pub(crate) fn push(&mut self, ptr: *const i8, bytes: usize) {
        if bytes > 0 && self.count < Regions::MAX {
            self.ranges[self.count] = (ptr, bytes);
            self.count += 1;
        }
    }

    /// What tile `k` of `tiles` prefetches over its `steps` K steps: its share of the range
    /// whose tiles `k` is among (range `i` has tiles `ceil(i * tiles / n)..ceil((i + 1) * tiles / n)`).
    pub(crate) fn share(&self, k: usize, tiles: usize, steps: usize) -> Prefetch {
        let n = self.count;
        if n == 0 || tiles == 0 {
            return Prefetch::NONE;
        }
        let i = (k * n / tiles).min(n - 1);
        let (first, end) = ((i * tiles).div_ceil(n), ((i + 1) * tiles).div_ceil(n));
        let (ptr, bytes) = self.ranges[i];
        Prefetch::share(ptr, bytes, k - first, end - first, steps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_split_tiles_and_cover_every_line() {
        let base = [0i8; 64];
        for n in 1..=Regions::MAX {
            let mut regions = Regions::new();
            // Range `i` holds `64 * (10 + i)` bytes.
            for i in 0..n {
                regions.push(base.as_ptr().wrapping_add(i << 20), 64 * (10 + i));
            }
            regions.push(base.as_ptr(), 0);
            for tiles in n..40 {
                let mut lines = vec![0; n];
                for k in 0..tiles {
                    let p = regions.share(k, tiles, 1000);
                    if p.lines > 0 {
                        let i = (p.ptr as usize - base.as_ptr() as usize) >> 20;
                        lines[i] += p.lines;
                    }
                }
                let want: Vec<usize> = (0..n).map(|i| 10 + i).collect();
                assert_eq!(lines, want, "{n} ranges over {tiles} tiles");
            }
        }
        assert_eq!(Regions::new().share(0, 4, 10).lines, 0);
    }
}
