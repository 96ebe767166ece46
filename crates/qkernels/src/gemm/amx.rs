//! AMX-INT8 path: `tdpbusd` on tile registers, 16 rows x 32 columns per step (two 16 x 16 i32
//! C tiles, one A tile of 16 rows x 64 bytes, two B tiles of 16 K-groups x 16 columns, which
//! is exactly one 1 KiB stretch of a packed panel). The activation rows of a tile are copied
//! into a zero-padded 16 x 64k buffer so every A tile load is full; a K remainder of fewer than
//! 16 groups uses a second tile configuration slot with matching shapes. The epilogue is the
//! AVX-512 one (every AMX CPU has AVX-512).
//!
//! Selected only when CPUID reports AMX-TILE and AMX-INT8 (leaf 7, EDX bits 24 and 25) AND
//! Linux grants the tile data state (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`);
//! otherwise the path is unavailable and never chosen.

use super::avx512_vnni::finish_row_avx512;
use super::driver::BlockKernel;
use super::epilogue::EpiloguePlan;
use super::pack::{PackedWeights, K_GROUP, PANEL_COLS, PANEL_ROW_BYTES};
use std::arch::asm;
use std::ops::Range;
use std::sync::OnceLock;

const TILE_ROWS: usize = 16;
/// K groups (of 4 bytes) per full A / B tile.
const TILE_GROUPS: usize = 16;
const NR: usize = 2 * PANEL_COLS;

/// Whether the CPU has AMX-INT8 and the kernel lets this process use tile data.
pub(crate) fn is_usable() -> bool {
    static USABLE: OnceLock<bool> = OnceLock::new();
    *USABLE.get_or_init(|| cpu_has_amx_int8() && request_tile_permission() && has_avx512())
}

fn has_avx512() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("fma")
}

fn cpu_has_amx_int8() -> bool {
    // Leaf 7 is only meaningful when the highest basic leaf is at least 7.
    if std::arch::x86_64::__cpuid(0).eax < 7 {
        return false;
    }
    let edx = std::arch::x86_64::__cpuid_count(7, 0).edx;
    edx & (1 << 24) != 0 && edx & (1 << 25) != 0
}

#[cfg(target_os = "linux")]
fn request_tile_permission() -> bool {
    const SYS_ARCH_PRCTL: usize = 158;
    const ARCH_REQ_XCOMP_PERM: usize = 0x1023;
    const XFEATURE_XTILEDATA: usize = 18;
    let ret: isize;
    // SAFETY: arch_prctl(ARCH_REQ_XCOMP_PERM) only changes this process's permitted xsave
    // features; the syscall clobbers rcx and r11 and returns in rax.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") SYS_ARCH_PRCTL as isize => ret,
            in("rdi") ARCH_REQ_XCOMP_PERM,
            in("rsi") XFEATURE_XTILEDATA,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack)
        );
    }
    ret == 0
}

#[cfg(not(target_os = "linux"))]
fn request_tile_permission() -> bool {
    false
}

/// The 64-byte `ldtilecfg` operand (palette 1).
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

impl TileConfig {
    /// tmm0-1: C (16 x 64 B); tmm2: A; tmm3-4: B; tmm5: A tail; tmm6-7: B tail.
    fn new(tail_groups: usize) -> TileConfig {
        let mut c = TileConfig {
            palette: 1,
            start_row: 0,
            reserved: [0; 14],
            colsb: [0; 16],
            rows: [0; 16],
        };
        for t in 0..5 {
            c.colsb[t] = 64;
            c.rows[t] = 16;
        }
        if tail_groups > 0 {
            c.colsb[5] = (tail_groups * K_GROUP) as u16;
            c.rows[5] = 16;
            for t in 6..8 {
                c.colsb[t] = 64;
                c.rows[t] = tail_groups as u8;
            }
        }
        c
    }
}

pub(crate) struct Amx;

impl BlockKernel for Amx {
    const MR: usize = TILE_ROWS;
    const NR: usize = NR;

    unsafe fn block(plan: &EpiloguePlan, a: &[u8], w: &PackedWeights, rows: Range<usize>, cols: Range<usize>) {
        block_amx(plan, a, w, rows, cols)
    }
}

pub(crate) fn gemm(plan: &EpiloguePlan, a: &[u8], m: usize, w: &PackedWeights, threads: Option<usize>) {
    super::driver::blocked::<Amx>(plan, a, m, w, threads)
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma")]
unsafe fn block_amx(plan: &EpiloguePlan, a: &[u8], w: &PackedWeights, rows: Range<usize>, cols: Range<usize>) {
    let k = w.k();
    let groups = k.div_ceil(K_GROUP);
    let (full_blocks, tail) = (groups / TILE_GROUPS, groups % TILE_GROUPS);
    let lda = groups.div_ceil(TILE_GROUPS) * TILE_GROUPS * K_GROUP;
    let config = TileConfig::new(tail);
    let mut a_pad = vec![0u8; TILE_ROWS * lda];
    let mut c_tile = [[0i32; NR]; TILE_ROWS];
    // SAFETY: the config is a valid palette-1 description (checked sizes <= 16 rows x 64 B).
    asm!("ldtilecfg [{}]", in(reg) &config as *const TileConfig, options(nostack));
    for i0 in rows.clone().step_by(TILE_ROWS) {
        let mr = TILE_ROWS.min(rows.end - i0);
        a_pad.fill(0);
        for r in 0..mr {
            a_pad[r * lda..r * lda + k].copy_from_slice(&a[(i0 + r) * k..(i0 + r + 1) * k]);
        }
        for j0 in cols.clone().step_by(NR) {
            let nc = NR.min(cols.end - j0);
            let p0 = j0 / PANEL_COLS;
            // A second panel past N (odd panel count) reuses the first; its columns are dropped.
            let p1 = if nc > PANEL_COLS { p0 + 1 } else { p0 };
            let (b0, b1) = (w.panel_ptr(p0), w.panel_ptr(p1));
            // SAFETY: every tile load stays inside `a_pad` (16 rows x lda bytes) or inside one
            // panel (`groups` rows of 64 B): full blocks cover whole groups, the tail exactly
            // `tail` groups; the store writes 16 rows x 64 B of `c_tile` rows.
            asm!("tilezero tmm0", "tilezero tmm1", options(nostack));
            for blk in 0..full_blocks {
                let ap = a_pad.as_ptr().add(blk * TILE_GROUPS * K_GROUP);
                let bo = blk * TILE_GROUPS * PANEL_ROW_BYTES;
                asm!(
                    "tileloadd tmm2, [{a} + {lda}*1]",
                    "tileloadd tmm3, [{b0} + {s}*1]",
                    "tileloadd tmm4, [{b1} + {s}*1]",
                    "tdpbusd tmm0, tmm2, tmm3",
                    "tdpbusd tmm1, tmm2, tmm4",
                    a = in(reg) ap,
                    lda = in(reg) lda,
                    b0 = in(reg) b0.add(bo),
                    b1 = in(reg) b1.add(bo),
                    s = in(reg) PANEL_ROW_BYTES,
                    options(nostack)
                );
            }
            if tail > 0 {
                let ap = a_pad.as_ptr().add(full_blocks * TILE_GROUPS * K_GROUP);
                let bo = full_blocks * TILE_GROUPS * PANEL_ROW_BYTES;
                asm!(
                    "tileloadd tmm5, [{a} + {lda}*1]",
                    "tileloadd tmm6, [{b0} + {s}*1]",
                    "tileloadd tmm7, [{b1} + {s}*1]",
                    "tdpbusd tmm0, tmm5, tmm6",
                    "tdpbusd tmm1, tmm5, tmm7",
                    a = in(reg) ap,
                    lda = in(reg) lda,
                    b0 = in(reg) b0.add(bo),
                    b1 = in(reg) b1.add(bo),
                    s = in(reg) PANEL_ROW_BYTES,
                    options(nostack)
                );
            }
            let cp = c_tile.as_mut_ptr() as *mut i32;
            asm!(
                "tilestored [{c0} + {s}*1], tmm0",
                "tilestored [{c1} + {s}*1], tmm1",
                c0 = in(reg) cp,
                c1 = in(reg) cp.add(PANEL_COLS),
                s = in(reg) NR * 4,
                options(nostack)
            );
            for (r, sums) in c_tile.iter().enumerate().take(mr) {
                finish_row_avx512(plan, i0 + r, j0, &sums[..nc]);
            }
        }
    }
    asm!("tilerelease", options(nostack));
}
